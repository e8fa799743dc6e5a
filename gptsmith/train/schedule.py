"""Learning-rate schedule and optimizer construction for pretraining.

- ``lr_at_step``: linear warm-up from 0 to the peak, then a half cosine down to a floor. Warm-up
  keeps the first updates small while Adam's moment estimates are still noise; the cosine tail
  lets the model settle into a minimum instead of bouncing around it at full step size.
- ``param_groups``: weight decay only on the 2-D weight matrices of the linear layers.
- ``build_optimizer``: AdamW with the fastest implementation the device offers, or ``MuonAdamW``
  (``optimizer="muon"``): Muon for the transformer's weight matrices, AdamW for the rest.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from gptsmith.device import cpu_has_fast_bf16
from gptsmith.errors import CheckpointError, ConfigError
from gptsmith.train.config import MUON_NS_STEPS, OPTIMIZERS


def lr_at_step(step: int, *, peak_lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Steps ``0 .. warmup_steps-1`` ramp linearly to ``peak_lr`` (step 0 already gets
    ``peak_lr / warmup_steps``, so no step is wasted at lr 0); steps ``warmup_steps ..
    max_steps-1`` follow a half cosine from just below ``peak_lr`` down to ``min_lr``, which the
    last step (``max_steps - 1``) takes: the decay is complete within the run.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps + 1) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return min_lr + (peak_lr - min_lr) * cosine


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters into a decayed group (matrices of linear layers) and a non-decayed one.

    Weight decay pulls weights towards 0. That is a useful prior for the matrices that mix
    features, but not for biases and LayerNorm scale/shift (decaying a norm's scale towards 0
    only fights the normalisation). Embeddings are not decayed either: each row is a lookup
    table entry that receives gradient only when its token occurs, so decay would steadily
    shrink the vectors of rare tokens between their occurrences — a bias against rare tokens
    rather than a regulariser (minGPT and nanoGPT's first versions make the same choice). With
    tied weights the output head *is* the token embedding, so it follows the embedding.
    """
    embedding_params = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            embedding_params.add(id(module.weight))
    decay, no_decay = [], []
    for param in model.parameters():  # a tied tensor is yielded once
        if not param.requires_grad:
            continue
        if param.dim() >= 2 and id(param) not in embedding_params:
            decay.append(param)
        else:
            no_decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95),
    optimizer: str = "adamw", muon_ns_steps: int = MUON_NS_STEPS,
) -> torch.optim.AdamW | MuonAdamW:
    """The optimizer called ``optimizer`` (``OPTIMIZERS``) over ``model``'s parameters.

    ``"adamw"``: AdamW over ``param_groups``, fused into one kernel where the device supports it
    (a whole tiny-preset training step on a 2-core EPYC CPU, torch 2.13, was 1.6x faster with it
    than with ``foreach`` in fp32, 1.1x under bf16 autocast; it exists for CPU, CUDA and MPS,
    elsewhere ``foreach`` is the fast path). ``"muon"``: ``MuonAdamW`` (``muon_ns_steps``: its
    Newton-Schulz iterations).
    """
    if optimizer == "muon":
        return MuonAdamW(model, lr=lr, weight_decay=weight_decay, betas=betas, ns_steps=muon_ns_steps)
    if optimizer != "adamw":
        raise ConfigError(f"unknown optimizer {optimizer!r} (known: {', '.join(OPTIMIZERS)})")
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, **_adamw_kernel(model))


def load_optimizer_state(optimizer: torch.optim.Optimizer | MuonAdamW, state: dict, *, name: str,
                         source: object) -> None:
    """Load a checkpoint's optimizer ``state`` into ``optimizer`` (built as ``name``), refusing, in
    one line that names the flag to resume with, a state another optimizer wrote (``source``: where
    the state came from, for the message)."""
    saved = "muon" if set(state) == {"muon", "adamw"} else "adamw"
    if saved != name:
        raise CheckpointError(f"{source} was trained with optimizer={saved!r}, this run has {name!r} "
                              f"(resume with --optimizer {saved})")
    optimizer.load_state_dict(state)


def _adamw_kernel(model: nn.Module) -> dict[str, bool]:
    device_type = next(model.parameters()).device.type
    return {"fused": True} if device_type in ("cpu", "cuda", "mps") else {"foreach": True}


def muon_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The weights Muon updates: every trainable 2-D matrix but the embeddings and the output head.

    Muon orthogonalises each update, which suits matrices that map one hidden space to another.
    An embedding (and the head, its tied twin or an untied one) is a table of rows, each seen only
    with its own token: those stay with AdamW, as in Muon's own recipe."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = getattr(model, "out_head", None)
    if head is not None:
        tables.add(id(head.weight))
    return [p for p in model.parameters() if p.requires_grad and p.dim() == 2 and id(p) not in tables]


class MuonAdamW:
    """``torch.optim.Muon`` for the transformer's matrices (``muon_matrices``), fused AdamW for the
    embeddings, head, biases and norms, stepped as one optimizer.

    Muon (momentum, then Newton-Schulz orthogonalisation of the update) trains the tinyshakespeare
    recipe's model to a lower loss in the same steps (BENCHMARKS.md, "Budget"). Its step size
    follows the ``"match_rms_adamw"`` rule (lr x 0.2 x sqrt(larger side)), so one learning rate and
    one schedule drive both halves. Needs ``torch.optim.Muon`` (PyTorch 2.9 or later).

    ``param_groups`` lists the Muon groups first, then AdamW's: a schedule that sets each group's
    ``"lr"`` drives both. ``state_dict`` holds both optimizers' states, for an exact resume.

    ``torch.optim.Muon`` orthogonalises in bf16, which a CPU without native bf16 instructions
    emulates: on an AVX2-only AMD EPYC that took 700 ms of a 1.6 s tiny-preset step, against 44 ms
    in fp32. There (``newton_schulz_in_fp32``) the same iteration runs in fp32.

    ``ns_steps``: Newton-Schulz iterations per update (torch's default 5). They are most of Muon's
    cost: on the tinyshakespeare recipe's 64 small matrices, 32 of a 36 ms step on a 2-core Zen 5
    CPU, near its bf16 peak. Three leave the update less exactly orthogonal (its small singular
    values below 1) and cost 24 ms, but trained worse per step by about what they save
    (docs/train.md), so the recipes keep 5.
    """

    def __init__(self, model: nn.Module, *, lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.95), ns_steps: int = MUON_NS_STEPS) -> None:
        muon_class = getattr(torch.optim, "Muon", None)
        if muon_class is None:
            raise ConfigError(f"--optimizer muon needs PyTorch 2.9 or later (torch.optim.Muon); this is "
                              f"torch {torch.__version__} (upgrade torch, or use --optimizer adamw)")
        matrices = muon_matrices(model)
        if not matrices:
            raise ConfigError("--optimizer muon found no weight matrices to update outside the "
                              "embeddings and head (use --optimizer adamw)")
        in_muon = {id(p) for p in matrices}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in in_muon]
        self.muon = muon_class(matrices, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw",
                               ns_steps=ns_steps)
        self.fp32_newton_schulz = newton_schulz_in_fp32(matrices[0].device)
        # Embeddings, head, biases and norms: never decayed (``param_groups`` says why).
        self.adamw = torch.optim.AdamW([{"params": rest, "weight_decay": 0.0}], lr=lr, betas=betas,
                                       **_adamw_kernel(model))

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    @property
    def state(self) -> dict:
        return {**self.muon.state, **self.adamw.state}

    def step(self) -> None:
        with _fp32_newton_schulz() if self.fp32_newton_schulz else contextlib.nullcontext():
            self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"muon", "adamw"}:
            raise ValueError("not a Muon + AdamW optimizer state (was it saved by --optimizer adamw?)")
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def newton_schulz_in_fp32(device: torch.device) -> bool:
    """Whether Muon's orthogonalisation runs in fp32 here: on CPUs without native bf16 instructions."""
    return device.type == "cpu" and not cpu_has_fast_bf16()


def newton_schulz_fp32(update: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int,
                       eps: float) -> torch.Tensor:
    """Muon's quintic Newton-Schulz orthogonalisation of a 2-D update, as ``torch.optim.Muon`` does
    it but in fp32 (it casts to bf16): X <- aX + (bA + cA^2)X with A = XX^T, on the wide side."""
    a, b, c = ns_coefficients
    tall = update.size(0) > update.size(1)
    ortho = update.float()
    ortho = ortho.T if tall else ortho  # (short side, long side): the Gram matrix is the small one
    ortho = ortho / ortho.norm().clamp(min=eps)  # spectral norm <= 1
    for _ in range(ns_steps):
        gram = ortho @ ortho.T
        ortho = torch.addmm(ortho, torch.addmm(gram, gram, gram, beta=b, alpha=c), ortho, beta=a)
    return ortho.T if tall else ortho


@contextlib.contextmanager
def _fp32_newton_schulz() -> Iterator[None]:
    """Within it ``torch.optim.Muon`` orthogonalises with ``newton_schulz_fp32``. Its step looks the
    function up in ``torch.optim._muon`` on every call; where a torch release moves it, nothing is
    swapped and Muon keeps its own (slower on such CPUs, same update up to bf16 rounding)."""
    import torch.optim._muon as muon_module

    original = getattr(muon_module, "_zeropower_via_newtonschulz", None)
    if original is None:
        yield
        return
    muon_module._zeropower_via_newtonschulz = newton_schulz_fp32
    try:
        yield
    finally:
        muon_module._zeropower_via_newtonschulz = original
