"""PyTorch's fbgemm kernels for ``FastLinear``: bf16 weights through an fp16 pack, int8 weights.

fbgemm ships in PyTorch's x86 builds and needs only AVX2, so these run where oneDNN's bf16 kernels
cannot (an AVX2-only CPU): ``quantized::linear_dynamic_fp16`` multiplies in fp32 by a weight packed
in fp16, ``quantized::linear_dynamic`` by int8 weights with one scale per output feature. They are
the kernels behind PyTorch's own ``quantize_dynamic``; torch 2.13 marks its quantized tensors
deprecated (torchao is the successor), so each is probed once (``*_works``) and ``FastLinear``
falls back to the plain path where one is gone.
"""

from __future__ import annotations

import functools
import warnings

import torch


@functools.cache
def fbgemm_fp16_linear_works() -> bool:
    """Whether PyTorch's fbgemm fp16-weight linear (``quantized::linear_dynamic_fp16``) runs here.

    fbgemm ships in PyTorch's x86 builds and needs only AVX2 + F16C: it keeps the weight packed in
    fp16 (half of fp32's bytes, like bf16) and converts it to fp32 block by block inside the
    GEMM, so the arithmetic is fp32's.
    """
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    try:
        packed = torch.ops.quantized.linear_prepack_fp16(torch.zeros(16, 16), None)
        torch.ops.quantized.linear_dynamic_fp16(torch.zeros(1, 16), packed)
    except (RuntimeError, AttributeError):
        return False
    return True


FP16_MAX = 65504.0  # the largest finite fp16; bf16 weights beyond it would not survive the copy


def pack_fbgemm_fp16(weight: torch.Tensor) -> object | None:
    """A bf16 weight (out, in) packed for fbgemm's fp16 linear; None where a value exceeds fp16.

    bf16's 8-bit significand fits in fp16's 11 bits, so every bf16 weight in fp16's range (all of a
    trained model's) is copied exactly, except those under ~1e-5, which fp16 stores with fewer bits.
    """
    weight = weight.float()
    if not torch.isfinite(weight).all() or weight.abs().max() > FP16_MAX:
        return None
    return torch.ops.quantized.linear_prepack_fp16(weight, None)


def fbgemm_fp16_linear(x: torch.Tensor, packed: object, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` of a bf16 input through the fp16-packed weight: fp32 arithmetic, bf16 result."""
    out = torch.ops.quantized.linear_dynamic_fp16(x.reshape(-1, x.shape[-1]).float(), packed)
    if bias is not None:
        out += bias.float()  # the bias stays out of the pack, so a changed bias needs no rebuild
    return out.to(torch.bfloat16).reshape(*x.shape[:-1], out.shape[-1])


@functools.cache
def fbgemm_int8_linear_works() -> bool:
    """Whether PyTorch's fbgemm int8 linear (``quantized::linear_dynamic``) runs here (x86 CPUs)."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    try:
        torch.ops.quantized.linear_dynamic(torch.ones(1, 16), pack_int8(torch.ones(16, 16)), True)
    except (RuntimeError, AttributeError):
        return False
    return True


def pack_int8(weight: torch.Tensor, bias: torch.Tensor | None = None) -> object:
    """The weight (out, in) rounded to int8 with one scale per output feature, packed for fbgemm.

    Per-feature scales keep each row's own range (one scale for the whole matrix would flatten the
    small rows to a few levels); the input row is quantized on each call, with one scale of its own.
    """
    weight = weight.float()
    scales = (weight.abs().amax(dim=1) / 127).clamp_min(1e-12).double()  # (out,)
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # torch 2.13 marks quantized tensors deprecated; the probe
        warnings.simplefilter("ignore")  # (fbgemm_int8_linear_works) notices if they are removed
        quantized = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
    return torch.ops.quantized.linear_prepack(quantized, None if bias is None else bias.float())
