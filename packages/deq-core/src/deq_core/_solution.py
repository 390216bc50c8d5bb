"""Results of a fixed-point solve: :class:`Result`, :class:`SolveStats`, :class:`Solution`."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ._state import State

__all__ = ["Result", "SolveStats", "Solution"]


class Result(enum.Enum):
    """Outcome of a solve; ``result.message`` is a sentence for humans."""

    CONVERGED = "converged"
    MAX_STEPS = "max_steps"
    DIVERGED = "diverged"
    NONFINITE = "nonfinite"

    @property
    def message(self) -> str:
        return _MESSAGES[self]

    @property
    def ok(self) -> bool:
        return self is Result.CONVERGED

    @property
    def code(self) -> int:
        """Per-sample status code (``SolveStats.status``): 0 converged, 1 max steps, 2 diverged, 3 non-finite;
        a larger code is a worse outcome."""
        return _CODES[self]

    @staticmethod
    def from_code(code: int) -> Result:
        """The member with this :attr:`code`."""
        return _BY_CODE[int(code)]


_MESSAGES = {
    Result.CONVERGED: "converged: every sample's residual ||f(z) - z|| is within atol + rtol * ||f(z)||",
    Result.MAX_STEPS: "did not converge: the maximum number of steps was reached before every sample met the tolerance",
    Result.DIVERGED: "diverged: the residual grew far beyond its initial value (is f a contraction? try damping)",
    Result.NONFINITE: "non-finite values (nan or inf) appeared in f(z) during the solve",
}


_CODES = {Result.CONVERGED: 0, Result.MAX_STEPS: 1, Result.DIVERGED: 2, Result.NONFINITE: 3}
_BY_CODE = {v: k for k, v in _CODES.items()}


@dataclass
class SolveStats:
    """Per-sample statistics of a solve (``B`` = batch size, ``T`` = recorded steps).

    Attributes:
        steps: ``(B,)`` int, solver steps each sample took until it converged (or the budget).
        residual: ``(B,)`` ``||f(z) - z||`` measured on the returned iterate.
        rel_residual: ``(B,)`` ``residual / ||f(z)||`` on the returned iterate.
        converged: ``(B,)`` bool.
        trace: ``(T + 1, B)`` relative residual of each sample at every checked step (step 0 = z0).
        nfev: evaluations of ``f`` (solver-internal ones, e.g. line searches, included).
        solver: solver-specific statistics (restarts, history bytes, ...).
        status: ``(B,)`` int8 per-sample :attr:`Result.code` (``None`` when the producer did not record it:
            then it is derived from ``converged``).
    """

    steps: Tensor
    residual: Tensor
    rel_residual: Tensor
    converged: Tensor
    trace: Tensor
    nfev: int
    solver: dict[str, Any] = field(default_factory=dict)
    status: Tensor | None = None

    def __post_init__(self) -> None:
        if self.status is None:
            self.status = (~self.converged).to(torch.int8)

    @property
    def failed(self) -> Tensor:
        """``(B,)`` bool: samples that went non-finite or diverged (frozen at their best finite iterate)."""
        return self.status >= Result.DIVERGED.code

    def sample_results(self) -> list[Result]:
        """The :class:`Result` of each sample."""
        return [Result.from_code(c) for c in self.status.tolist()]

    def summary(self) -> dict[str, Any]:
        """JSON-friendly scalars: max/mean steps and residuals, nfev."""
        empty = self.steps.numel() == 0
        return {
            "steps_max": 0 if empty else int(self.steps.max()),
            "steps_mean": 0.0 if empty else float(self.steps.float().mean()),
            "rel_residual_max": 0.0 if empty else float(self.rel_residual.max()),
            "residual_max": 0.0 if empty else float(self.residual.max()),
            "converged": int(self.converged.sum()),
            "failed": int(self.failed.sum()),
            "batch": int(self.converged.numel()),
            "nfev": self.nfev,
            **{k: v for k, v in self.solver.items() if isinstance(v, (int, float, str, bool))},
        }


@dataclass
class Solution:
    """``value`` (same structure as ``z0``), ``result`` (:class:`Result`) and ``stats`` (:class:`SolveStats`)."""

    value: State
    result: Result
    stats: SolveStats
