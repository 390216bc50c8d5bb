"""``neumann``: truncated Neumann series for linear fixed points ``u = A u + b`` (the implicit backward pass)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from deq_core import AbstractFixedPointSolver, FlatMap, LoopControl, LoopOutcome, check_positive, run_loop

from ._util import check_int

__all__ = ["Neumann"]


@dataclass(frozen=True)
class Neumann(AbstractFixedPointSolver):
    r"""Truncated Neumann series for an affine map ``f(u) = A u + b`` (e.g. the adjoint ``u = J^T u + v``).

    From ``u_0`` the iterate after ``k`` steps is

    .. math::
        u_k = u_0 + \sum_{t=0}^{k-1} A^t r_0,\qquad r_0 = f(u_0) - u_0,

    (with ``u_0 = b`` this is ``sum_{t=0..k} A^t b``): each step adds the next term ``A^t r_0 = f(u_k) - u_k``,
    one evaluation of ``f`` (one VJP in a backward pass) per term. The series stops after ``terms`` terms, or
    earlier when the last term is small: ``||term|| <= tol * ||u||`` per sample (``tol=None`` uses the
    driver's ``atol`` / ``rtol``). The series converges when the spectral radius of ``A`` is below 1.

    The truncated sum is what the solver returns; the driver still reports honestly whether it meets the
    requested tolerance (a truncated series usually does not: pass ``throw=False`` or use it inside
    :class:`deq_core.ImplicitAdjoint`, which does not throw by default).

    Arguments:
        terms: largest number of series terms after ``u_0`` (``>= 1``).
        tol: relative size of the last term at which the series stops early, or ``None``.

    Statistics: ``terms`` (the configured cap).

    Example:
        >>> import torch
        >>> from deq_core import fixed_point
        >>> from deq_solvers import Neumann
        >>> b = torch.ones(1, 2, dtype=torch.float64)
        >>> sol = fixed_point(lambda u: 0.5 * u + b, b.clone(), solver=Neumann(terms=60, tol=1e-12))
        >>> bool(torch.allclose(sol.value, 2 * b))
        True
    """

    name: ClassVar[str] = "neumann"
    terms: int = 20
    tol: float | None = None

    def __post_init__(self) -> None:
        check_int(self, "terms", self.terms, 1)
        if self.tol is not None:
            check_positive(self, "tol", self.tol)

    def init(self, f: FlatMap, z: Tensor, fz: Tensor) -> Any:
        return None

    def step(self, f: FlatMap, z: Tensor, fz: Tensor, state: Any) -> tuple[Tensor, Tensor, Any]:
        # u_{k+1} = u_k + (f(u_k) - u_k) = f(u_k): the next partial sum of the series
        return fz, f(fz), state

    def solve(self, f: FlatMap, z: Tensor, fz: Tensor, control: LoopControl) -> LoopOutcome:
        inner = dataclasses.replace(control, max_steps=min(self.terms, control.max_steps))
        if self.tol is not None:
            inner = dataclasses.replace(inner, atol=0.0, rtol=self.tol)
        out = run_loop(self, f, z, fz, inner)
        if inner is not control:
            # report convergence against the caller's tolerance, not the series' own stopping rule
            from deq_core import Result

            out.converged = out.residual <= control.atol + control.rtol * out.fnorm
            if out.result is Result.CONVERGED and not bool(out.converged.all()):
                out.result = Result.MAX_STEPS
            elif out.result is Result.MAX_STEPS and bool(out.converged.all()):
                out.result = Result.CONVERGED
        return out

    def stats(self, state: Any) -> dict[str, Any]:
        return {"terms": self.terms}
