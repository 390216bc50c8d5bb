"""Training ``theta`` after a JIIO solve (papers.md 1.4): ``x*`` held constant and the DEQ backward warm-started
from ``mu*`` (:func:`equilibrium_with_grad`, the release's scheme), or the full implicit gradient of the augmented
fixed point (:func:`augmented_equilibrium`, an option)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from deq_core import AbstractFixedPointSolver, ImplicitAdjoint, State, StateLayout, fixed_point

from ._map import AugmentedMap
from ._problem import JIIOConfig, JIIOProblem, JIIOResult

__all__ = ["augmented_equilibrium", "equilibrium_with_grad"]


def equilibrium_with_grad(f: Callable[[State, Tensor], State], z_star: State, x_star: Tensor, *,
                          adjoint_init: State | None = None, solver: AbstractFixedPointSolver | str = "fixed-point",
                          backward_steps: int = 20, atol: float = 1e-6, rtol: float = 1e-4,
                          refine_steps: int = 0) -> State:
    """``z*`` with the DEQ's implicit gradient attached, for training ``theta`` after a JIIO solve.

    ``x*`` is a constant (no gradient through ``argmin_x``; exact at the optimum for objectives whose outer loss
    is the inner one, by the envelope theorem; a first-order approximation otherwise). The forward value is
    ``z*`` itself (after ``refine_steps`` extra solver steps on ``z = f(z, x*)``); the backward solves
    ``g = (df/dz)^T g + dL/dz`` with ``solver`` for at most ``backward_steps`` steps, warm-started from
    ``adjoint_init`` (the JIIO adjoint ``mu*`` rescaled by the outer/inner loss ratio).

    Example:
        >>> import torch
        >>> w = torch.tensor(0.5, requires_grad=True)
        >>> z = equilibrium_with_grad(lambda z, x: w * z + x, torch.full((1, 1), 2.0), torch.ones(1, 1), rtol=1e-8,
        ...                           backward_steps=200)
        >>> z.sum().backward(); round(float(w.grad), 3)   # z* = x / (1 - w): dz/dw = x / (1 - w)^2 = 4
        4.0
    """
    x_const = x_star.detach()
    z_start = tuple(t.detach() for t in z_star) if isinstance(z_star, tuple) else z_star.detach()
    sol = fixed_point(lambda z: f(z, x_const), z_start, solver=solver,
                      adjoint=ImplicitAdjoint(max_steps=backward_steps, atol=atol, rtol=rtol),
                      atol=atol, rtol=rtol, max_steps=refine_steps, throw=False, record_trace=False,
                      adjoint_init=adjoint_init)
    return sol.value


def augmented_equilibrium(problem: JIIOProblem, config: JIIOConfig, result: JIIOResult, *,
                          backward_steps: int = 50, atol: float = 1e-6, rtol: float = 1e-4,
                          solver: AbstractFixedPointSolver | str = "fixed-point") -> tuple[State, State, Tensor]:
    """``(z*, mu*, x*)`` with the FULL implicit gradient of the augmented fixed point ``v* = G(v*; theta)``.

    Unlike :func:`equilibrium_with_grad`, ``x*`` here depends on ``theta`` (the option the release does not use):
    the backward solves ``u = (dG/dv)^T u + dL/dv`` with ``G`` differentiable (second-order products of ``f``).
    The step size is the final one of ``config``.
    """
    layout = StateLayout.of(result.z, "z")
    G = AugmentedMap(problem, config, layout, result.x.shape, create_graph=True)
    G.alpha = config.alpha_at(config.budget)
    v = G.stack(layout.pack(result.z), layout.pack(result.mu), result.x).detach()
    sol = fixed_point(G, v, solver=solver, adjoint=ImplicitAdjoint(max_steps=backward_steps, atol=atol, rtol=rtol),
                      atol=atol, rtol=rtol, max_steps=0, throw=False, record_trace=False)
    zf, muf, x = G.split(sol.value)
    return layout.unpack(zf), layout.unpack(muf), x
