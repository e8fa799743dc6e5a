"""Dropout with a faster mask on the CPU: the same operation as ``nn.Dropout``, drawn 16 bits at a time.

PyTorch's CPU dropout draws one Bernoulli sample per element from a serial random generator. In
a tiny-preset training step with dropout 0.2 that took 12% of the step (22 of 184 ms: 13 masks,
the attention's the largest). ``keep_mask`` draws 64 random bits per call instead and splits them
into four 16-bit lanes, each compared with a threshold: about 3x faster for the same kind of mask.
The rate is rounded to a multiple of 1/65,536 (0.2 -> 0.199997), and the kept values are scaled
by 1 / (1 - that rate), so the output's expectation is exactly the input, as with ``nn.Dropout``.
GPUs (whose dropout kernel is fast) and CPU inference take PyTorch's own path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_LANES = 65536  # values of one 16-bit lane


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, *,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """A bool tensor of ``shape``: each element False (dropped) with probability ~``p``.

    Uses the default random generator, so ``torch.manual_seed`` and a saved RNG state reproduce it.
    """
    n_elements = math.prod(shape)
    words = (n_elements + 3) // 4  # four 16-bit lanes per 64-bit draw
    bits = torch.randint(-(2**63), 2**63 - 1, (words,), dtype=torch.int64, device=device)
    lanes = bits.view(torch.int16)[:n_elements].view(shape)  # each uniform over [-32768, 32767]
    return lanes >= -32768 + _dropped_lanes(p)


def _dropped_lanes(p: float) -> int:
    """How many of the 65,536 lane values mean "drop" for rate ``p``."""
    return min(_LANES, max(0, round(p * _LANES)))


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``, with ``keep_mask`` for the mask when training on the CPU."""
    if not training or p == 0.0:
        return x
    # PyTorch's path off the CPU, for rates it refuses, and for p so close to 1 that every lane drops
    if (x.device.type != "cpu" or not 0.0 < p < 1.0 or x.numel() == 0
            or (dropped := _dropped_lanes(p)) == _LANES):
        return F.dropout(x, p, training)
    scale = _LANES / (_LANES - dropped)  # 1 / (1 - the rate actually used)
    return x.mul(keep_mask(x.shape, p, device=x.device)).mul_(scale)  # in place: no third buffer


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same settings, no parameters) that takes ``dropout`` above in training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)
