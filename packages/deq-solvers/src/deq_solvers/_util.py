"""Small helpers shared by the solvers: dtype policy for histories and small linear systems."""

from __future__ import annotations

import torch

from deq_core import DeqConfigError, check_positive, check_range

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


def check_anderson_options(owner: object) -> None:
    """Validate the hyperparameters Anderson-type solvers share (``m``, ``beta``, ``ridge``, ``max_alpha``,
    ``restart_growth``, ``history_dtype``, ``solve_dtype``); raise :class:`DeqConfigError` on a bad one."""
    check_int(owner, "m", owner.m, 1)
    check_range(owner, "beta", owner.beta, 0.0, 1.0)
    check_positive(owner, "ridge", owner.ridge, allow_zero=True)
    check_range(owner, "max_alpha", owner.max_alpha, 1.0, float("inf"))
    check_range(owner, "restart_growth", owner.restart_growth, 1.0, float("inf"))
    resolve_dtype(owner, "history_dtype", owner.history_dtype)
    resolve_dtype(owner, "solve_dtype", owner.solve_dtype)
