"""How much memory a training step or a generation needs, and how much the machine has.

``train_step_memory`` estimates the peak of one training step from the sizes alone (nothing is
allocated), so a run that cannot fit is refused in a second with one line instead of being
killed by the kernel minutes later; ``gptsmith info`` prints the same numbers. The estimate is
deliberately on the high side. Its terms, calibrated against the peak RSS of fp32 CPU training
steps (tests/model/test_memory.py holds the measured cases):

- weights, gradients and AdamW's two moments: 4 fp32 values per parameter (bf16 autocast keeps
  them in fp32 too);
- activations kept for the backward pass: ``ACTIVATION_VALUES`` values per token per layer per
  embedding dimension (Korthikanti et al. 2022 count 34 bytes at 16 bits, i.e. 17 values; we
  measured 20-27 in fp32);
- attention probabilities, only when attention dropout forces the unfused path
  (``drop_rate > 0``; on the CPU the written-out attention with ``model/dropout.py``'s mask):
  ``ATTENTION_VALUES`` values per (head, query, key) per layer;
- the logits (batch, tokens, vocab): the output, its float copy, log-softmax and their gradients,
  ``LOGIT_COPIES`` fp32 copies with ``F.cross_entropy`` (GPUs) and ``CPU_LOGIT_COPIES`` on the
  CPU, whose chunked loss (``train/losses.py``) keeps only the output and its gradient whole —
  for a long context with GPT-2's 50,257 ids, the largest term.

``generation_memory`` does the same for decoding (weights plus a KV cache per sequence, the
candidates of beam search), and ``available_memory`` reads what the device can still give.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gptsmith.errors import ConfigError

ACTIVATION_VALUES = 34  # per token, per layer, per embedding dimension (measured 20-27 in fp32)
ATTENTION_VALUES = 7  # per head x query x key, per layer, with attention dropout (measured ~6.5)
LOGIT_COPIES = 5  # fp32 copies of the logits alive at the peak with F.cross_entropy (measured ~4.9)
CPU_LOGIT_COPIES = 3  # the same with the CPU's chunked loss (measured ~2.6)
FP32 = 4


def parameter_count(cfg: Any) -> int:
    """Parameters of a ``GPTConfig``, by arithmetic (exact; any size, nothing built)."""
    e, v, t, layers = cfg.emb_dim, cfg.vocab_size, cfg.context_length, cfg.n_layers
    bias = 3 * e if cfg.qkv_bias else 0
    block = (3 * e * e + bias) + (e * e + e) + (4 * e * e + 4 * e) + (4 * e * e + e) + 4 * e  # att, ff, norms
    head = 0 if cfg.tie_weights else v * e
    return v * e + t * e + layers * block + 2 * e + head


def train_step_memory(cfg: Any, batch_size: int, context_length: int, device: Any = "cpu") -> dict[str, int]:
    """Estimated peak bytes of one training step of ``cfg`` on (batch_size, context_length) ids
    on ``device`` (the CPU's loss keeps fewer copies of the logits than a GPU's).

    Returns ``weights_and_optimizer``, ``activations``, ``logits`` and their ``total``. Pure
    arithmetic on Python ints: exact for any size, even absurd ones.
    """
    tokens = batch_size * context_length
    static = 4 * FP32 * parameter_count(cfg)  # weights, gradients, AdamW's two moments
    activations = ACTIVATION_VALUES * FP32 * tokens * cfg.emb_dim * cfg.n_layers
    if cfg.drop_rate > 0:  # the unfused attention keeps its (batch, heads, n, n) probabilities
        activations += ATTENTION_VALUES * FP32 * batch_size * cfg.n_heads * context_length**2 * cfg.n_layers
    copies = CPU_LOGIT_COPIES if _device_kind(device) == "cpu" else LOGIT_COPIES
    logits = copies * FP32 * tokens * cfg.vocab_size
    return {"weights_and_optimizer": static, "activations": activations, "logits": logits,
            "total": static + activations + logits}


def eval_memory(cfg: Any, batch_size: int, context_length: int) -> int:
    """Estimated peak bytes of scoring one (batch_size, context_length) batch without gradients:
    the fp32 weights, one layer's activations at a time, and the logits with their float copy and
    log-softmax (``gptsmith eval``)."""
    tokens = batch_size * context_length
    activations = ACTIVATION_VALUES * FP32 * tokens * cfg.emb_dim
    return FP32 * parameter_count(cfg) + activations + 3 * FP32 * tokens * cfg.vocab_size


def generation_memory(cfg: Any, rows: int, length: int, *, bytes_per_value: int = FP32) -> int:
    """Estimated bytes to decode ``rows`` sequences (samples, or beams) of up to ``length`` tokens:
    the weights, a KV cache per row (at most the context), and a few (rows, vocab) score tables."""
    cached = min(length, cfg.context_length)
    cache = 2 * cfg.n_layers * rows * cached * cfg.emb_dim * bytes_per_value
    scores = 4 * FP32 * rows * cfg.vocab_size  # logits, log-probabilities, candidates, seen tokens
    return parameter_count(cfg) * bytes_per_value + cache + scores


def _device_kind(device: Any) -> str:
    """The kind of ``device`` ("cpu", "cuda", "mps"...), from a torch.device or a string ("cuda:1")."""
    return getattr(device, "type", str(device).partition(":")[0])


def available_memory(device: Any = "cpu") -> int | None:
    """Bytes the device can still give: free GPU memory on CUDA; on the CPU the kernel's
    MemAvailable (or sysconf's free pages), capped by a cgroup memory limit. None if unknown."""
    kind = _device_kind(device)
    if kind == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    if kind != "cpu":
        return None  # MPS shares the system's memory in ways we cannot read: no check
    available = _meminfo_available()
    limit = _cgroup_room()
    if limit is not None:
        available = limit if available is None else min(available, limit)
    return available


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    """What a cgroup v2 memory limit still allows this process tree (None: no limit)."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((root / "memory.current").read_text()))
    except (OSError, ValueError):
        return None


def gib(n_bytes: int) -> str:
    """A size in words for the one-line messages: ``1.5 GiB``, ``300.0 MiB``, ``2.0 TiB``."""
    if n_bytes >= 2**40:
        return f"{n_bytes / 2**40:,.1f} TiB"
    return f"{n_bytes / 2**30:,.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:,.1f} MiB"


def check_model_fits(cfg: Any, bytes_per_value: int = FP32) -> None:
    """Raise ``ConfigError`` when building ``cfg``'s weights in the CPU's memory cannot fit (nothing
    when the memory is unknown): a size typo is one line, not an allocator error."""
    need, available = parameter_count(cfg) * bytes_per_value, available_memory("cpu")
    if available is not None and need > available:
        raise ConfigError(f"a model of {parameter_count(cfg):,} parameters needs {gib(need)} for its weights "
                          f"but only {gib(available)} of memory is available: use smaller sizes or a preset")


def check_train_memory(cfg: Any, batch_size: int, context_length: int, device: Any) -> None:
    """Raise ``ConfigError`` when one training step cannot fit in the device's memory: one line
    with the estimate, what is available and the flag to lower (nothing when the memory is unknown)."""
    problem = train_memory_problem(cfg, batch_size, context_length, device)
    if problem:
        raise ConfigError(problem)


def train_memory_problem(cfg: Any, batch_size: int, context_length: int, device: Any) -> str | None:
    """Why one training step cannot fit in the device's memory, or None when it fits or the memory
    is unknown."""
    need = train_step_memory(cfg, batch_size, context_length, device)
    available = available_memory(device)
    if available is None or need["total"] <= available:
        return None
    per_sequence = need["activations"] + need["logits"]
    if need["weights_and_optimizer"] > available or per_sequence == 0:
        fix = "use a smaller --preset (fewer layers or a smaller emb_dim)"
    elif batch_size > 1:
        fix = "lower --batch-size (and use --target-batch-tokens to keep the tokens per step)"
    else:
        fix = "lower --context-length"
    return (f"a training step needs about {gib(need['total'])} (weights and AdamW "
            f"{gib(need['weights_and_optimizer'])}, activations {gib(need['activations'])}, logits "
            f"{gib(need['logits'])} at batch {batch_size:,} x context {context_length:,}) but only "
            f"{gib(available)} of memory is available on {device}: {fix}")


def check_eval_memory(cfg: Any, batch_size: int, context_length: int, device: Any) -> None:
    """Raise ``ConfigError`` when scoring one batch cannot fit in the device's memory."""
    need, available = eval_memory(cfg, batch_size, context_length), available_memory(device)
    if available is not None and need > available:
        fix = "lower --batch-size" if batch_size > 1 else "lower --context-length"
        raise ConfigError(f"scoring a batch of {batch_size:,} x {context_length:,} tokens needs about "
                          f"{gib(need)} but only {gib(available)} of memory is available on {device}: {fix}")
