"""``neumann``: truncated Neumann series for linear fixed points ``u = A u + b`` (the implicit backward pass)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from deq_core import AbstractFixedPointSolver, FlatMap

__all__ = ["Neumann"]


@dataclass(frozen=True)
class Neumann(AbstractFixedPointSolver):
    r"""Truncated Neumann series for an affine map ``f(u) = A u + b`` (e.g. the adjoint ``u = J^T u + v``).

    From ``u_0`` the iterate after ``k`` steps is

    .. math::
        u_k = u_0 + \sum_{t=0}^{k-1} A^t r_0,\qquad r_0 = f(u_0) - u_0,

    (with ``u_0 = b`` this is ``sum_{t=0..k} A^t b``): each step adds the next term ``A^t r_0 = f(u_k) - u_k``,
    one evaluation of ``f`` (one VJP in a backward pass) per term. The series runs on the shared loop: it
    stops when the last term meets the caller's ``atol + rtol * ||f(u)||`` or after the caller's
    ``max_steps`` terms (the one budget: ``neumann`` has none of its own; the old ``terms`` / ``tol``
    options raise an error naming these). It converges when the spectral radius of ``A`` is below 1.

    Example:
        >>> import torch
        >>> from deq_core import fixed_point
        >>> from deq_solvers import Neumann
        >>> b = torch.ones(1, 2, dtype=torch.float64)
        >>> sol = fixed_point(lambda u: 0.5 * u + b, b.clone(), solver=Neumann(), rtol=1e-12, max_steps=60)
        >>> bool(torch.allclose(sol.value, 2 * b))
        True
    """

    name: ClassVar[str] = "neumann"
    renamed: ClassVar[Mapping[str, str]] = {
        "terms": "max_steps= of the solve (fixed_point(..., max_steps=k), ImplicitAdjoint(max_steps=k))",
        "tol": "atol= / rtol= of the solve",
    }

    def init(self, f: FlatMap, z: Tensor, fz: Tensor) -> Any:
        return None

    def step(self, f: FlatMap, z: Tensor, fz: Tensor, state: Any) -> tuple[Tensor, Tensor, Any]:
        # u_{k+1} = u_k + (f(u_k) - u_k) = f(u_k): the next partial sum of the series
        return fz, f(fz), state
