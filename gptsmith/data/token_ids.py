"""Token ids as the library takes them: any container of integers, checked once.

``token_id_list`` is the one check behind ``generate``'s prompts, ``decode``, sliding windows and
stop sequences: lists, numpy arrays and tensors of integers (numpy and 0-d tensor scalars too)
pass; floats, bools, text and None are refused rather than cut to other ids. ``token_id_array``
is the same rule for a whole corpus, as a numpy array.
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
    ints = [int(v) for v in values]
    if ints and not -(2**63) <= min(ints) <= max(ints) < 2**63:  # a tensor could not even hold it
        bad = next(v for v in ints if not -(2**63) <= v < 2**63)
        raise DataError(f"{what}: {bad} is outside any vocabulary (not a 64-bit integer)")
    return ints


def token_id_array(ids: object, what: str = "token ids") -> np.ndarray:
    """``ids`` as a numpy array of integers, by ``token_id_list``'s rules (an array stays itself: a
    memmap is not copied; a tensor becomes its numpy view; a list of plain ints is one C pass)."""
    if hasattr(ids, "detach"):  # a tensor
        ids = ids.detach().cpu().numpy()
    if not isinstance(ids, np.ndarray):
        if isinstance(ids, str | bytes) or ids is None or not hasattr(ids, "__len__"):
            raise DataError(f"{what} must be a sequence of integer token ids, got {ids!r:.60}")
        array = np.asarray(ids)
        # numpy reads True in [1, True] (or np.True_) as 1: anything but plain integers takes the
        # element-by-element check, which refuses bools.
        plain_ints = array.dtype.kind in ("i", "u") and all(
            kind is int or issubclass(kind, np.integer) for kind in set(map(type, ids)))
        ids = array if plain_ints else np.asarray(token_id_list(ids, what), dtype=np.int64)
    if not _integer_dtype(ids.dtype):  # floats would be cut to other ids without a word
        raise DataError(f"{what} must be integer token ids, got an array of {ids.dtype}")
    return ids


def _integer_dtype(dtype: object) -> bool:
    """Whether a numpy or torch dtype holds integers (not bool, float or complex)."""
    if dtype is None:
        return False
    kind = getattr(dtype, "kind", None)  # numpy
    if kind is not None:
        return kind in ("i", "u")
    name = str(dtype)  # torch: torch.int64, torch.uint8, ...
    return "int" in name and "bool" not in name
