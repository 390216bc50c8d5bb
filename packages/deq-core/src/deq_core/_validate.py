"""Validators for hyperparameters, shared by deq's solvers, adjoints and modules and by plugin authors.

Each raises :class:`deq_core.DeqConfigError` naming the owner, the option, what was expected and what came
(wrong types included), so a bad value fails at construction.

Example:
    >>> from deq_core import check_int
    >>> class Mine: pass
    >>> check_int(Mine(), "m", 0, 1)
    Traceback (most recent call last):
    ...
    deq_core._errors.DeqConfigError: Mine.m must be an int >= 1, got 0
"""

from __future__ import annotations

import math

from ._errors import DeqConfigError

__all__ = ["check_bool", "check_int", "check_positive", "check_range", "check_tolerances"]


def _owner(owner: object) -> str:
    if isinstance(owner, str):
        return owner
    return owner.__name__ if isinstance(owner, type) else type(owner).__name__


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def check_int(owner: object, name: str, value: object, low: int) -> None:
    """Raise :class:`DeqConfigError` unless ``value`` is an ``int >= low`` (``bool`` is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise DeqConfigError(f"{_owner(owner)}.{name} must be an int >= {low}, got {value!r}")


def check_bool(owner: object, name: str, value: object) -> None:
    """Raise :class:`DeqConfigError` unless ``value`` is a ``bool``."""
    if not isinstance(value, bool):
        raise DeqConfigError(f"{_owner(owner)}.{name} must be a bool, got {value!r}")


def check_positive(owner: object, name: str, value: object, *, allow_zero: bool = False) -> None:
    """Raise :class:`DeqConfigError` unless ``value`` is a number ``> 0`` (``>= 0`` with ``allow_zero``)."""
    ok = _is_number(value) and not math.isnan(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        want = ">= 0" if allow_zero else "> 0"
        raise DeqConfigError(f"{_owner(owner)}.{name} must be a number {want}, got {value!r}")


def check_range(owner: object, name: str, value: object, low: float, high: float) -> None:
    """Raise :class:`DeqConfigError` unless ``value`` is a number with ``low < value <= high``."""
    if not _is_number(value) or not (low < value <= high):
        raise DeqConfigError(f"{_owner(owner)}.{name} must be in ({low}, {high}], got {value!r}")


def check_tolerances(atol: object, rtol: object, max_steps: object, owner: object = "fixed_point") -> None:
    """Raise :class:`DeqConfigError` for negative tolerances, both zero, or a budget that is not an int >= 0."""
    for name, v in (("atol", atol), ("rtol", rtol)):
        check_positive(owner, name, v, allow_zero=True)
        if math.isinf(v):
            raise DeqConfigError(f"{_owner(owner)}.{name} must be finite, got {v!r}")
    if atol <= 0 and rtol <= 0:
        raise DeqConfigError(
            f"{_owner(owner)}: at least one of atol, rtol must be > 0, got atol={atol!r}, rtol={rtol!r}")
    check_int(owner, "max_steps", max_steps, 0)
