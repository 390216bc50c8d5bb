"""Small helpers shared by the solvers: dtype policy for histories and small linear systems, the options
Anderson-type solvers share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from deq_core import AbstractFixedPointSolver, DeqConfigError, check_int, check_positive, check_range

__all__ = ["LOW_PRECISION", "AndersonOptions", "check_int", "history_dtype", "resolve_dtype"]  # check_int: re-export

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


@dataclass(frozen=True)
class AndersonOptions(AbstractFixedPointSolver):
    """The hyperparameters Anderson-type solvers share (``m``, ``damping``, ``ridge``, ``max_alpha``,
    ``restart_growth``, ``history_dtype``, ``solve_dtype``; meanings in :class:`~deq_solvers.Anderson`),
    validated at construction: a bad one raises :class:`DeqConfigError`. Subclasses add their own fields and
    call ``super().__post_init__()``."""

    renamed: ClassVar[Mapping[str, str]] = {"beta": "damping"}

    m: int = 5
    damping: float = 1.0
    ridge: float = 1e-7
    max_alpha: float = 1e3
    restart_growth: float = 4.0
    history_dtype: str = "auto"
    solve_dtype: str = "float64"

    def __post_init__(self) -> None:
        check_int(self, "m", self.m, 1)
        check_range(self, "damping", self.damping, 0.0, 1.0)
        check_positive(self, "ridge", self.ridge, allow_zero=True)
        check_range(self, "max_alpha", self.max_alpha, 1.0, float("inf"))
        check_range(self, "restart_growth", self.restart_growth, 1.0, float("inf"))
        resolve_dtype(self, "history_dtype", self.history_dtype)
        resolve_dtype(self, "solve_dtype", self.solve_dtype)
