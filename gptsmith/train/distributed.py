"""Data-parallel training with PyTorch's own ``torchrun`` + DistributedDataParallel.

``torchrun`` starts one process per device and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR
and MASTER_PORT; ``init_distributed`` reads them. Without them (a plain ``gptsmith train``) it
returns a single-process context and nothing else changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# How long after a Ctrl-C the same Ctrl-C may come again, forwarded by torchrun's agent (it does so
# within milliseconds; a second Ctrl-C meant to abort comes later, and the agent kills its processes
# anyway once its --shutdown-timeout, 30 s by default, has passed).
SIGNAL_ECHO_S = 1.0


def signal_echo_s() -> float:
    """``SIGNAL_ECHO_S`` when torchrun's agent started this process, else 0: the agent forwards every
    signal it gets, so a Ctrl-C in the terminal reaches the process twice (``stop_signals`` takes
    the two for one). With one process too, where WORLD_SIZE is 1 and nothing is distributed."""
    return SIGNAL_ECHO_S if "TORCHELASTIC_RUN_ID" in os.environ else 0.0


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files and reports progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA); no-op when alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)


def all_reduce_mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The mean of ``value`` over all processes (identity when alone)."""
    if not ctx.enabled:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / ctx.world_size


def all_reduce_min(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The smallest ``value`` over all processes (identity when alone)."""
    if not ctx.enabled:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return value


def any_rank(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """True if ``flag`` is true on any process (so every rank stops at the same step)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
