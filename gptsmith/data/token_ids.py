"""Token ids as the library takes them: any container of integers, checked once.

``token_id_list`` is the one check behind ``generate``'s prompts, ``decode``, sliding windows and
stop sequences: lists, numpy arrays and tensors of integers (numpy and 0-d tensor scalars too)
pass; floats, bools, text and None are refused rather than cut to other ids.
"""

from __future__ import annotations

import numpy as np

from gptsmith.errors import DataError


def token_id_list(ids: object, what: str = "token ids") -> list[int]:
    """``ids`` (a sequence, numpy array or tensor of integers) as a list of Python ints.

    Floats, bools, text and None are refused with a ``DataError`` naming ``what``, rather than
    cut down to integers (``int(1.9)`` is 1: a silently different id).
    """
    if isinstance(ids, str | bytes) or ids is None or not hasattr(ids, "__len__"):
        raise DataError(f"{what} must be a sequence of integer token ids, got {ids!r:.60}")
    dtype = getattr(ids, "dtype", None)
    if dtype is not None:  # numpy arrays and tensors: one check of the element type
        if not _integer_dtype(dtype):
            raise DataError(f"{what} must be integer token ids, got an array of {dtype}")
        if getattr(ids, "ndim", 1) != 1:
            raise DataError(f"{what} must be one sequence of ids, got shape {tuple(ids.shape)}")
        return [int(i) for i in ids.tolist()]
    values = list(ids)
    for value in values:
        scalar = getattr(value, "ndim", None) == 0 and _integer_dtype(getattr(value, "dtype", None))
        if isinstance(value, bool) or not (isinstance(value, int | np.integer) or scalar):
            raise DataError(f"{what} must be integer token ids, got {value!r:.40} ({type(value).__name__})")
    return [int(v) for v in values]


def _integer_dtype(dtype: object) -> bool:
    """Whether a numpy or torch dtype holds integers (not bool, float or complex)."""
    if dtype is None:
        return False
    kind = getattr(dtype, "kind", None)  # numpy
    if kind is not None:
        return kind in ("i", "u")
    name = str(dtype)  # torch: torch.int64, torch.uint8, ...
    return "int" in name and "bool" not in name
