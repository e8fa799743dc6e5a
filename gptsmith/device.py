"""Where and in which precision things run: device and dtype names, device auto-selection, bf16
autocast, seeds.

The names (``parse_device``, ``parse_dtype``, ``check_seed`` and their argparse forms) need no
torch, and torch and numpy are imported inside the functions that use them, so every verb's
``--help`` and argument errors come back without the seconds that importing torch takes.
"""

from __future__ import annotations

import argparse
import contextlib
import numbers
import random
import re
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from gptsmith.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
DEVICE_HELP = "auto (default: CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps"
# Every spelling a --dtype accepts, by its one name (the one help shows): PyTorch's and the short one.
DTYPE_SPELLINGS = {"auto": "auto", "fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16",
                   "fp16": "fp16", "float16": "fp16", "half": "fp16", "int8": "int8"}
DTYPES = ("auto", "fp32", "bf16", "fp16")  # the names; "auto" means the verb's default
DECODE_DTYPES = (*DTYPES, "int8")  # generate, chat, ask: int8 = fp32 weights, int8 copies for decoding
TRAIN_DTYPES = ("auto", "bf16", "fp32")  # training: bf16 is autocast; fp16 would need a gradient scaler
MAX_SEED = 2**32 - 1  # numpy's limit: the narrowest of the generators a seed goes to


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` if it is a whole number every generator accepts (0..MAX_SEED), else the one
    ``ConfigError`` every verb and API gives (``name`` is the flag or keyword, e.g. ``--seed``)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{name} must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
    return int(seed)  # numpy's integers are whole numbers too


def parse_device(name: str) -> str:
    """Check the spelling of a device name (auto, cpu, cuda, cuda:N, mps) and return it normalised.

    Every verb's ``--device`` goes through this (as argparse ``type=device_arg``), and so does
    ``resolve_device``: a typo such as ``gpu`` is one clear error, not torch's list of twenty
    backends in a traceback. Whether the device is actually present is ``resolve_device``'s job.
    """
    normalised = str(name).strip().lower()
    if normalised in DEVICES or re.fullmatch(r"cuda:\d+", normalised):
        return normalised
    raise ConfigError(f"unknown device {name!r} (choose from auto, cpu, cuda, cuda:N, mps)")


def device_arg(value: str) -> str:
    """``parse_device`` as an argparse ``type=``: a bad value is a usage error naming the flag."""
    try:
        return parse_device(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_dtype(value: str, allowed: tuple[str, ...] = DTYPES) -> str:
    """The one name (``fp32``, ``bf16``, ``fp16``, ``auto``) of any spelling of a dtype that ``allowed``
    holds (``float32`` and ``fp32`` alike, any case); a ``ConfigError`` for anything else."""
    name = DTYPE_SPELLINGS.get(str(value).strip().lower())
    if name is None:
        long = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
        others = [long[a] for a in allowed if a in long]
        also = f"; {', '.join(others[:-1])} and {others[-1]} work too" if len(others) > 1 else ""
        raise ConfigError(f"unknown dtype {value!r} (choose from {', '.join(allowed)}{also})")
    if name not in allowed:
        if name == "int8":
            raise ConfigError("int8 is for decoding only: --dtype int8 in generate, chat and ask, or "
                              "use_int8_decoding(model) from Python")
        if name == "fp16":  # (only training leaves it out)
            raise ConfigError("fp16 is not supported for training (it needs a gradient scaler): "
                              "use bf16 or fp32")
        raise ConfigError(f"dtype {value!r} is not available here (choose from {', '.join(allowed)})")
    return name


def dtype_arg(allowed: tuple[str, ...] = DTYPES) -> Callable[[str], str]:
    """``parse_dtype`` as an argparse ``type=``: a bad value is a usage error naming the flag."""
    def parse(value: str) -> str:
        try:
            return parse_dtype(value, allowed)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def torch_dtype(name: str | None) -> torch.dtype | None:
    """The torch dtype of a ``--dtype`` name (any spelling); None for ``auto`` or no flag."""
    import torch

    name = parse_dtype(name) if name is not None else "auto"
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(name)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; an unavailable explicit choice is an error."""
    import torch

    name = parse_device(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} asked for, but PyTorch sees no CUDA GPU "
                              "(use --device cpu or auto)")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():  # else a late "invalid device ordinal" from CUDA
            raise ConfigError(f"--device {name} asked for, but PyTorch sees only {torch.cuda.device_count()} "
                              f"CUDA GPU(s): cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if name == "mps" and not _mps_available():
        raise ConfigError("--device mps asked for, but MPS is not available (use --device cpu or auto)")
    return torch.device(name)


def _mps_available() -> bool:
    import torch

    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmul instructions (AVX512-BF16 or AMX).

    Measured on a 2-core AMD EPYC (Zen 4, avx512_bf16, no AMX) with torch 2.13: a training step
    of the tiny preset runs ~1.4-2x faster under bf16 autocast than in fp32 (see BENCHMARKS.md).
    Without these instructions bf16 is emulated and slower than fp32.
    """
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def warn_if_cpu_lacks_bf16(dtype: torch.dtype | None, device: torch.device) -> None:
    """Warn when bf16 work is asked of a CPU that only emulates it.

    Without AVX512-BF16/AMX a bf16 matrix product is emulated: measured on an AVX2-only AMD EPYC,
    a 2048 x 2048 product ran at 0.7 GFLOP/s in bf16 against 64 in fp32 (so a prompt of 1,024
    tokens through gpt2-small would take minutes instead of seconds).
    """
    import torch

    if device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_fast_bf16():
        warnings.warn("this CPU has no native bf16 instructions, so bf16 runs far slower than fp32 here; "
                      "use --dtype fp32 (or auto)", stacklevel=3)


# Below this width a CPU step is dominated by per-operator overhead, which bf16 adds to (casts,
# oneDNN reorders): toy models (emb_dim 32-64) train faster in fp32, the presets faster in bf16.
CPU_BF16_MIN_EMB_DIM = 128


def resolve_autocast_dtype(name: str, device: torch.device, emb_dim: int | None = None) -> torch.dtype | None:
    """The autocast dtype for ``--dtype`` on ``device`` (None = plain fp32).

    ``auto``: bf16 on CUDA GPUs that support it; on CPUs with native bf16 instructions only for
    models at least ``CPU_BF16_MIN_EMB_DIM`` wide; fp32 everywhere else.
    """
    import torch

    if name == "fp32":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        supported = cpu_has_fast_bf16() and (emb_dim is None or emb_dim >= CPU_BF16_MIN_EMB_DIM)
    else:
        supported = False
    if name == "bf16":
        if device.type == "mps":
            raise ConfigError("--dtype bf16 autocast is not supported on mps here (use --dtype fp32)")
        warn_if_cpu_lacks_bf16(torch.bfloat16, device)
        return torch.bfloat16
    return torch.bfloat16 if supported else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for ``dtype``, or a no-op context for plain fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device.type, dtype=dtype)


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices), so a run is reproducible."""
    import numpy as np
    import torch

    check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


_ALLOCATOR_TUNED = False


def tune_cpu_allocator() -> bool:
    """Keep freed memory for reuse instead of returning it to the OS (Linux/glibc only).

    A training step allocates and frees the same large buffers every time (the logits alone are
    batch × context × vocab floats: 200 MB for the tiny preset). glibc serves blocks that large
    with a fresh ``mmap`` and unmaps them on free, so every step pays ~250k page faults, zeroing
    every page again — on a 2-core EPYC that made a tiny-preset step 3-4x slower (measured:
    ~0.55 s of system time per step before, 0.015 s after). Raising the mmap and trim thresholds
    makes glibc keep the memory in its heap and hand it back on the next step. The price: the
    process's resident memory does not shrink after a peak. Returns True when applied.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1 and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    _ALLOCATOR_TUNED = ok
    return ok
