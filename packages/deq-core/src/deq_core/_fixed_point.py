"""``fixed_point``: the public entry point: resolve names, validate options, solve, attach an adjoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._driver import make_control, solve
from ._resolve import resolve_adjoint, resolve_solver
from ._solution import Solution
from ._state import State
from ._validate import check_bool

__all__ = ["DEFAULT_SOLVER", "fixed_point"]

DEFAULT_SOLVER = "fixed-point"


def fixed_point(
    f: Callable[[State], State],
    z0: State,
    *,
    solver: Any = DEFAULT_SOLVER,
    adjoint: Any = "implicit",
    atol: float = 1e-6,
    rtol: float = 1e-4,
    max_steps: int = 50,
    throw: bool = True,
    check_every: int = 1,
    divergence: float = 1e6,
    record_trace: bool = True,
    adjoint_init: State | None = None,
    sync_ranks: bool = False,
    group: Any = None,
) -> Solution:
    """Find ``z* = f(z*)`` per sample, and make ``z*`` differentiable through ``adjoint``.

    Arguments:
        f: map from a state to a state of the same structure; every tensor has the batch first,
            ``(B, ...)``. Whatever ``f`` closes over (parameters, inputs ``x``) gets gradients.
        z0: initial state, a tensor ``(B, ...)`` or a tuple of such tensors (one dtype and device);
            ``B = 0`` gives an empty, converged solution without calling ``f``.
        solver: a solver object or a registered name (``deq plugins`` lists them).
        adjoint: how gradients flow back: an adjoint object, ``"implicit"`` (default, the backward linear
            fixed point solved with the forward solver), ``"neumann"``, ``"phantom"``, ``"unrolled"``, or
            ``None`` for a detached result.
        atol, rtol: sample ``i`` has converged when ``||f(z_i) - z_i|| <= atol + rtol * ||f(z_i)||``.
        max_steps: solver steps at most (each step evaluates ``f`` about once); 0 only measures ``z0``.
            The one budget: no solver has a budget of its own.
        throw: raise :class:`DeqSolveError` unless every sample converged. With ``throw=False`` a sample
            that turns non-finite or diverges (``f(z0)`` included) is frozen at its best finite iterate and
            flagged in ``stats.status``, and every other sample is solved to its own tolerance.
        check_every: look at the per-sample flags on the host every this many steps (no host sync in
            between, for accelerators).
        divergence: a residual this many times its initial value, or ``||f(z)||`` this many times
            ``||f(z0)|| + ||f(z0) - z0||``, is divergence.
        record_trace: keep the per-step relative residual trace in ``stats.trace``.
        adjoint_init: warm start for the backward solve of ``ImplicitAdjoint`` (same structure as z0).
        sync_ranks: under ``torch.distributed``, every rank takes the same number of steps (forward and the
            implicit backward): one all-reduce of the "all settled" flag every ``check_every`` steps. Needed
            when ``f`` runs collectives (FSDP); ``group`` picks the process group.

    Returns:
        :class:`Solution` with ``value`` (structure of ``z0``; the returned iterate, with gradients
        attached by the adjoint), ``result`` (:class:`Result`, the worst sample's) and ``stats``
        (:class:`SolveStats`, with per-sample ``status``).

    Raises:
        DeqInputError: ``z0`` or (with ``throw=True``) ``f(z0)`` has the wrong structure, shape, dtype, or
            non-finite values.
        DeqConfigError: a tolerance or budget is out of range.
        UnknownNameError: an unknown solver or adjoint name.
        DeqSolveError: the solve failed and ``throw=True``; the message names exactly the failed samples,
            the non-finite ones first.

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
    solver_obj = resolve_solver(solver)
    adjoint_obj = resolve_adjoint(adjoint)
    check_bool("fixed_point", "throw", throw)
    control = make_control(atol, rtol, max_steps, check_every, divergence, record_trace, sync_ranks=sync_ranks,
                           group=group)
    return solve(f, z0, solver_obj, adjoint_obj, control, throw=throw, adjoint_init=adjoint_init)
