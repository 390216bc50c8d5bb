"""Small helpers shared by the solvers: dtype policy for histories and small linear systems."""

from __future__ import annotations

import torch

from deq_core import DeqConfigError

__all__ = ["LOW_PRECISION", "check_int", "history_dtype", "resolve_dtype"]

LOW_PRECISION = (torch.float16, torch.bfloat16)

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "auto": None}


def resolve_dtype(owner: object, name: str, value: str) -> None:
    """Validate a dtype option given as a string (``"auto"``, ``"float32"`` or ``"float64"``)."""
    if value not in _DTYPES:
        raise DeqConfigError(
            f"{type(owner).__name__}.{name} must be one of {sorted(_DTYPES)}, got {value!r}"
        )


def history_dtype(option: str, state_dtype: torch.dtype) -> torch.dtype:
    """dtype of a solver history: ``"auto"`` keeps the state dtype but lifts float16 / bfloat16 to float32."""
    if option != "auto":
        return _DTYPES[option]
    return torch.float32 if state_dtype in LOW_PRECISION else state_dtype


def check_int(owner: object, name: str, value: object, low: int) -> None:
    """Raise :class:`DeqConfigError` unless ``value`` is an int ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise DeqConfigError(f"{type(owner).__name__}.{name} must be an int >= {low}, got {value!r}")
