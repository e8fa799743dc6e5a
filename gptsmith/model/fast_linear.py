"""``FastLinear``: the model's linear layers, an ``nn.Linear`` that runs inference faster on the CPU.

Training, autocast, GPUs and anything with autograd on take ``nn.Linear``'s own path, unchanged.
Without autograd on the CPU (``generate``, ``stream_text``, beam search, chat, evaluation with
``torch.no_grad``) two shapes get their own kernels:

- **one row** (a decode step: one vector times every weight matrix, bound by how fast the
  weights stream from memory): fp32 keeps PyTorch's own product (MKL) on Intel CPUs, where it
  already streams from every core; elsewhere (measured on an AMD EPYC, where it ran on one thread)
  it cuts the output features into one part per thread and computes them as one ``baddbmm`` over
  strided *views* of the weight (no copy) — see ``split_one_row``; bf16 runs
  oneDNN's linear on a weight packed once into its blocked layout (``torch.ops.mkldnn``), which
  streams bf16 weights far faster than PyTorch's plain bf16 matrix-vector product (where the CPU
  can: ``mkldnn_bf16_linear_works``; elsewhere ``F.linear``).
- **many rows through the output head** (prefill, scoring): the vocabulary is padded to a
  multiple of 64 (GPT-2: 50,257 -> 50,304) in a copy of the head's weight, which lets the GEMM
  run on aligned blocks; the padded columns are cut off the result (a view).

Copies (the packed bf16 weights, the padded head) are made once and cached on the module, keyed
by the weight's identity, dtype and version counter and by a count of optimizer steps taken in
this process (fused AdamW updates weights without bumping their version counters; a global
``torch.optim`` step hook counts every step), so an optimizer step, ``load_state_dict``,
``model.to(...)`` or any in-place change makes the next call rebuild them (a change made through
``weight.data`` bypasses the version counter: call ``clear_fast_caches(model)`` after one). The
parameters and the state dict are ``nn.Linear``'s; the caches are neither.
Memory cost: fp32 nothing for decoding, plus one padded copy of the output head for a multi-row
forward (gpt2-small: 155 MB); bf16 one packed copy of every weight matrix (gpt2-small: 248 MB).
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

VOCAB_MULTIPLE = 64  # the output head's rows are padded to a multiple of this for multi-row forwards
_optimizer_steps = 0  # every optimizer.step() in this process (the hook below); part of each cache key


def _count_optimizer_step(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)


class FastLinear(nn.Linear):
    """``nn.Linear`` with faster CPU inference kernels (see the module docstring); same parameters."""

    pad_outputs: bool = False  # pad out_features to VOCAB_MULTIPLE for multi-row inference (the head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)) \
                or x.device.type != "cpu" or weight.device.type != "cpu" \
                or torch.is_autocast_enabled("cpu") or x.dtype != weight.dtype:
            return F.linear(x, weight, self.bias)
        if x.numel() == self.in_features:  # one row: a decode step
            if weight.dtype == torch.bfloat16 and mkldnn_bf16_linear_works():
                packed = self._cached("mkldnn", _pack_mkldnn)
                out = torch.ops.mkldnn._linear_pointwise(x.reshape(1, -1), packed, self.bias, "none", [], "")
                return out.reshape(*x.shape[:-1], self.out_features)
            if weight.dtype == torch.float32 and split_one_row():
                return _one_row_on_all_threads(x, weight, self.bias)
        elif self.pad_outputs and self.out_features % VOCAB_MULTIPLE:
            padded = self._cached("padded", _pad_rows)
            bias = None if self.bias is None else F.pad(self.bias, (0, padded.shape[0] - self.out_features))
            return F.linear(x, padded, bias)[..., : self.out_features]  # (..., out_features), a view
        return F.linear(x, weight, self.bias)

    def _cached(self, kind: str, build: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``build(weight)``, rebuilt whenever the weight is another tensor or was changed in place."""
        weight = self.weight
        key = (kind, weight.data_ptr(), weight._version, _optimizer_steps, weight.dtype, tuple(weight.shape),
               weight.stride())
        caches = self.__dict__.setdefault("_fast_caches", _Caches())
        hit = caches.get(kind)
        if hit is None or hit[0] != key:
            caches.pop(kind, None)  # free the stale copy before building the new one
            with torch.no_grad():
                caches[kind] = (key, build(weight.detach()))
        return caches[kind][1]


class _Caches(dict):
    """The cached copies of one layer: never deep-copied or pickled (a copy rebuilds its own)."""

    def __deepcopy__(self, memo: dict) -> _Caches:
        return _Caches()

    def __reduce__(self) -> tuple:
        return (_Caches, ())


def _pack_mkldnn(weight: torch.Tensor) -> torch.Tensor:
    """The weight (out, in) in oneDNN's blocked layout for a batch of one row."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, 1)


@functools.cache
def mkldnn_bf16_linear_works() -> bool:
    """Whether oneDNN can pack and run a bf16 linear on this CPU.

    It needs AVX512-BW/VL/DQ or AVX-NE-CONVERT; on an AVX2-only CPU (e.g. an AMD EPYC of the Zen 1/2
    families) packing raises, and bf16 decode steps take ``F.linear``, which there streams bf16
    weights about as fast as fp32 ones (measured: 310 vs 300 us for a 2304 x 768 product).
    """
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        weight = torch.zeros(16, 16, dtype=torch.bfloat16)
        packed = _pack_mkldnn(weight)
        row = torch.zeros(1, 16, dtype=torch.bfloat16)
        torch.ops.mkldnn._linear_pointwise(row, packed, None, "none", [], "")
    except (RuntimeError, AttributeError):
        return False
    return True


def _pad_rows(weight: torch.Tensor) -> torch.Tensor:
    """A copy of the weight (out, in) with zero rows appended up to a multiple of VOCAB_MULTIPLE."""
    extra = -weight.shape[0] % VOCAB_MULTIPLE
    return F.pad(weight, (0, 0, 0, extra))  # (out + extra, in)


def split_one_row() -> bool:
    """Whether fp32 one-row products take ``_one_row_on_all_threads`` instead of ``F.linear``.

    Measured (BENCHMARKS.md, "Generation"): on an AMD EPYC (Zen 4) PyTorch's one-row product (MKL
    sgemv) ran on one thread and the split decoded gpt2-small 1.9x faster; on an Intel Xeon MKL's
    own product uses both cores and streams 4-8% faster than the split. So MKL's own on Intel CPUs
    with MKL, the split everywhere else. ``SPLIT_ONE_ROW`` (True/False) overrides the choice.
    """
    if SPLIT_ONE_ROW is not None:
        return SPLIT_ONE_ROW
    return not (torch.backends.mkl.is_available() and _cpu_vendor() == "GenuineIntel")


SPLIT_ONE_ROW: bool | None = None  # None: decide by the CPU (split_one_row)


@functools.cache
def _cpu_vendor() -> str:
    """The CPU's vendor id (``GenuineIntel``, ``AuthenticAMD``...), or "" where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "GenuineIntel" if "GenuineIntel" in platform.processor() else ""


def _one_row_on_all_threads(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` of one row, computed as one batched product spread over every CPU thread.

    PyTorch's CPU matrix-vector product can run on one thread, which cannot draw the machine's
    whole memory bandwidth. The output features are cut into ``torch.get_num_threads()`` equal
    parts, each an (in, part) strided view of the weight (nothing is copied); ``baddbmm`` computes
    them in parallel, and the < n_parts features left over go through ``F.linear``.
    """
    out_features, in_features = weight.shape
    n_parts = torch.get_num_threads()
    if n_parts < 2 or out_features < 2 * n_parts:
        return F.linear(x, weight, bias)
    part = out_features // n_parts
    split = n_parts * part
    row_stride, col_stride = weight.stride()
    parts = weight.as_strided((n_parts, in_features, part), (part * row_stride, col_stride, row_stride),
                              weight.storage_offset())  # parts[p] = W[p*part:(p+1)*part].T
    vector = x.reshape(1, 1, in_features).expand(n_parts, 1, in_features)
    if bias is None:
        out = torch.bmm(vector, parts)  # (n_parts, 1, part)
    else:
        out = torch.baddbmm(bias[:split].view(n_parts, 1, part), vector, parts)
    out = out.reshape(1, split)
    if split < out_features:
        rest = F.linear(x.reshape(1, in_features), weight[split:], None if bias is None else bias[split:])
        out = torch.cat([out, rest], dim=1)
    return out.reshape(*x.shape[:-1], out_features)


def clear_fast_caches(model: nn.Module) -> None:
    """Drop every cached copy (packed/padded weights) of ``model``'s ``FastLinear`` layers.

    Needed only after changing weights through ``.data`` (which the version counter does not
    see), or to free the memory until the next inference call rebuilds them.
    """
    for module in model.modules():
        if isinstance(module, FastLinear):
            module.__dict__.pop("_fast_caches", None)
