"""``fixed_point``: the driver that validates inputs, runs a solver loop and attaches an adjoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ._errors import DeqConfigError, DeqInputError, DeqSolveError
from ._loop import LoopControl
from ._solution import Result, Solution, SolveStats
from ._solver import AbstractFixedPointSolver
from ._state import State, StateLayout, flat_map

if TYPE_CHECKING:
    from ._adjoint import AbstractAdjoint

__all__ = ["fixed_point", "resolve_solver", "check_tolerances", "solve_flat"]

DEFAULT_SOLVER = "fixed-point"


def fixed_point(
    f: Callable[[State], State],
    z0: State,
    *,
    solver: AbstractFixedPointSolver | str = DEFAULT_SOLVER,
    adjoint: AbstractAdjoint | str | None = "implicit",
    atol: float = 1e-6,
    rtol: float = 1e-4,
    max_steps: int = 50,
    throw: bool = True,
    check_every: int = 1,
    divergence: float = 1e6,
    record_trace: bool = True,
    adjoint_init: State | None = None,
) -> Solution:
    """Find ``z* = f(z*)`` per sample, and make ``z*`` differentiable through ``adjoint``.

    Arguments:
        f: map from a state to a state of the same structure; every tensor has the batch first,
            ``(B, ...)``. Whatever ``f`` closes over (parameters, inputs ``x``) gets gradients.
        z0: initial state, a tensor ``(B, ...)`` or a tuple of such tensors (one dtype and device).
        solver: a solver object or a registered name (``deq plugins`` lists them).
        adjoint: how gradients flow back: an adjoint object, ``"implicit"`` (default, the backward linear
            fixed point solved with the forward solver), ``"neumann"``, ``"phantom"``, ``"unrolled"``, or
            ``None`` for a detached result.
        atol, rtol: sample ``i`` has converged when ``||f(z_i) - z_i|| <= atol + rtol * ||f(z_i)||``.
        max_steps: solver steps at most (each step evaluates ``f`` about once); 0 only measures ``z0``.
        throw: raise :class:`DeqSolveError` unless every sample converged.
        check_every: look for "all converged" on the host every this many steps (fewer syncs on GPU).
        divergence: a residual this many times its initial value is divergence.
        record_trace: keep the per-step relative residual trace in ``stats.trace``.
        adjoint_init: warm start for the backward solve of ``ImplicitAdjoint`` (same structure as z0).

    Returns:
        :class:`Solution` with ``value`` (structure of ``z0``; the returned iterate, with gradients
        attached by the adjoint), ``result`` (:class:`Result`) and ``stats`` (:class:`SolveStats`).

    Raises:
        DeqInputError: ``z0`` or ``f(z0)`` has the wrong structure, shape, dtype, or non-finite values.
        DeqConfigError: a tolerance or budget is out of range.
        UnknownNameError: an unknown solver or adjoint name.
        DeqSolveError: the solve failed and ``throw=True`` (the message names the worst samples).

    Example:
        >>> import torch
        >>> from deq_core import fixed_point
        >>> W = 0.5 * torch.eye(3, dtype=torch.float64)
        >>> x = torch.ones(4, 3, dtype=torch.float64, requires_grad=True)
        >>> sol = fixed_point(lambda z: z @ W + x, torch.zeros(4, 3, dtype=torch.float64), rtol=1e-10)
        >>> bool(torch.allclose(sol.value, 2 * x))
        True
        >>> sol.value.sum().backward()
        >>> bool(torch.allclose(x.grad, torch.full_like(x, 2.0)))
        True
    """
    from ._adjoint import resolve_adjoint

    solver_obj = resolve_solver(solver)
    adjoint_obj = resolve_adjoint(adjoint)
    control = _control(atol, rtol, max_steps, check_every, divergence, record_trace)
    layout = StateLayout.of(z0, "z0")
    z = layout.pack(z0)
    _check_finite(z, "z0", layout)
    g = flat_map(f, layout)
    needs_graph = adjoint_obj is not None and adjoint_obj.needs_forward_graph and torch.is_grad_enabled()
    with torch.set_grad_enabled(needs_graph):
        z = z if needs_graph else z.detach()
        fz = g(z)
        _check_finite(fz, "f(z0)", layout)
        outcome = solver_obj.solve(g, z, fz, control)
    stats = SolveStats(
        steps=outcome.steps,
        residual=outcome.residual,
        rel_residual=outcome.residual / outcome.fnorm.clamp_min(torch.finfo(outcome.fnorm.dtype).tiny),
        converged=outcome.converged,
        trace=outcome.trace,
        nfev=outcome.nfev + 1,
        solver={"name": solver_obj.name, **outcome.solver_stats},
    )
    value = outcome.z
    if throw and outcome.result is not Result.CONVERGED:
        raise DeqSolveError(failure_message(outcome.result, stats),
                            Solution(layout.unpack(value), outcome.result, stats))
    if adjoint_obj is not None and torch.is_grad_enabled():
        init = None if adjoint_init is None else layout.pack(adjoint_init).detach()
        value = adjoint_obj.attach(g, value, solver=solver_obj, control=control, init=init, forward=outcome)
    elif not needs_graph:
        value = value.detach()
    return Solution(layout.unpack(value), outcome.result, stats)


def solve_flat(f: Callable[[Tensor], Tensor], z: Tensor, solver: AbstractFixedPointSolver, control: LoopControl):
    """Run ``solver`` on a flat ``(B, N)`` problem (no packing, no adjoint); returns a ``LoopOutcome``."""
    return solver.solve(f, z, f(z), control)


def failure_message(result: Result, stats: SolveStats, worst: int = 3) -> str:
    """One paragraph: what went wrong, which samples, their residuals."""
    rel = stats.rel_residual.detach().float().cpu()
    bad = (~stats.converged.cpu()).nonzero().flatten()
    order = bad[rel[bad].nan_to_num(float("inf")).argsort(descending=True)][:worst]
    worst_txt = ", ".join(f"sample {int(i)}: relative residual {float(rel[i]):.3g}" for i in order)
    return (
        f"fixed-point solve {result.message}. {len(bad)} of {rel.numel()} samples failed after "
        f"{int(stats.steps.max())} steps ({worst_txt}). Pass throw=False to get the best iterate anyway, "
        f"or raise max_steps / loosen atol, rtol."
    )


def resolve_solver(solver: AbstractFixedPointSolver | str) -> AbstractFixedPointSolver:
    """A solver object as is, or a registered name resolved through :mod:`deq_core.registry`."""
    if isinstance(solver, AbstractFixedPointSolver):
        return solver
    if isinstance(solver, str):
        from . import registry

        return registry.get_solver(solver)
    raise DeqConfigError(
        f"solver must be an AbstractFixedPointSolver or a registered name, got {type(solver).__name__}")


def check_tolerances(atol: float, rtol: float, max_steps: int) -> None:
    """Raise :class:`DeqConfigError` for negative tolerances, both zero, or a budget < 1."""
    for name, v in (("atol", atol), ("rtol", rtol)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise DeqConfigError(f"{name} must be a number >= 0, got {v!r}")
    if atol <= 0 and rtol <= 0:
        raise DeqConfigError(f"at least one of atol, rtol must be > 0, got atol={atol!r}, rtol={rtol!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        raise DeqConfigError(f"max_steps must be an int >= 0, got {max_steps!r}")


def _control(atol, rtol, max_steps, check_every, divergence, record_trace) -> LoopControl:
    check_tolerances(atol, rtol, max_steps)
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise DeqConfigError(f"check_every must be an int >= 1, got {check_every!r}")
    if not divergence > 1:
        raise DeqConfigError(f"divergence must be > 1, got {divergence!r}")
    return LoopControl(float(atol), float(rtol), max_steps, check_every, float(divergence), record_trace)


def _check_finite(flat: Tensor, what: str, layout: StateLayout) -> None:
    # a row sum is non-finite whenever an entry is (or, rarely, when finite entries overflow): one cheap
    # reduction first, the exact per-entry test (slow on CPU: ~50 us for 64 x 256) only when it flags
    if bool(torch.isfinite(flat.detach().sum(dim=1)).all()):
        return
    finite = torch.isfinite(flat).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise DeqInputError(
            f"{what} contains non-finite values (nan or inf) in samples {bad[:5]}{'...' if len(bad) > 5 else ''}; "
            f"expected finite {layout.dtype} values"
        )
