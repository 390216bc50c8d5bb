"""The numerical driver behind :func:`deq_core.fixed_point`: pack the state, run the one loop, report,
attach an adjoint. It takes objects only; names are resolved at the edge (:mod:`deq_core._resolve`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._control import LoopControl, LoopOutcome
from ._errors import DeqInputError, DeqSolveError
from ._loop import run_loop
from ._solution import Result, Solution, SolveStats
from ._state import State, StateLayout, flat_map
from ._validate import check_bool, check_int, check_positive, check_tolerances

__all__ = ["failure_message", "make_control", "solve", "stats_of"]


def make_control(atol: float, rtol: float, max_steps: int, check_every: int = 1, divergence: float = 1e6,
                 record_trace: bool = True, owner: object = "fixed_point", sync_ranks: bool = False,
                 group: Any = None) -> LoopControl:
    """A validated :class:`LoopControl` (raises :class:`DeqConfigError` naming the bad option)."""
    check_tolerances(atol, rtol, max_steps, owner)
    check_int(owner, "check_every", check_every, 1)
    check_positive(owner, "divergence", divergence)
    if not divergence > 1:
        from ._errors import DeqConfigError

        raise DeqConfigError(f"{owner}: divergence must be > 1, got {divergence!r}")
    check_bool(owner, "sync_ranks", sync_ranks)
    check_bool(owner, "record_trace", record_trace)
    return LoopControl(float(atol), float(rtol), max_steps, check_every, float(divergence), record_trace,
                       sync_ranks, group)


def solve(f: Callable[[State], State], z0: State, solver: Any, adjoint: Any, control: LoopControl, *,
          throw: bool = True, adjoint_init: State | None = None, input_errors: bool | None = None,
          adjoint_options: dict[str, Any] | None = None) -> Solution:
    """Solve ``z* = f(z*)`` with solver and adjoint *objects* (see :func:`deq_core.fixed_point`).

    ``input_errors`` (default: ``throw``): a non-finite ``f(z0)`` row raises :class:`DeqInputError`;
    otherwise that sample fails at step 0 with status ``NONFINITE`` and the others are solved.
    ``adjoint_options``: extra keywords for ``adjoint.attach`` (e.g. ``ImplicitAdjoint``'s ``warm_rows``).
    """
    layout = StateLayout.of(z0, "z0")
    z = layout.pack(z0)
    _check_finite(z, "z0", layout)
    if adjoint_init is not None:
        layout.check(adjoint_init, "adjoint_init")   # a warm start of another shape would be silently reshaped
    if layout.batch == 0:
        return _empty_solution(z0, z, solver)
    g = flat_map(f, layout)
    needs_graph = adjoint is not None and adjoint.needs_forward_graph and torch.is_grad_enabled()
    with torch.set_grad_enabled(needs_graph):
        z = z if needs_graph else z.detach()
        fz = g(z)
        if throw if input_errors is None else input_errors:
            _check_finite(fz, "f(z0)", layout)
        outcome = run_loop(solver, g, z, fz, control)
    stats = stats_of(outcome, solver, nfev_extra=1)
    value = outcome.z
    if throw and outcome.result is not Result.CONVERGED:
        raise DeqSolveError(failure_message(outcome.result, stats),
                            Solution(layout.unpack(value.detach()), outcome.result, stats))
    if adjoint is not None and torch.is_grad_enabled():
        init = None if adjoint_init is None else layout.pack(adjoint_init).detach()
        value = adjoint.attach(g, value, solver=solver, control=control, init=init, forward=outcome,
                               **(adjoint_options or {}))
    elif not needs_graph:
        value = value.detach()
    return Solution(layout.unpack(value), outcome.result, stats)


def stats_of(outcome: LoopOutcome, solver: Any, nfev_extra: int = 0) -> SolveStats:
    """:class:`SolveStats` of a loop outcome."""
    tiny = torch.finfo(outcome.fnorm.dtype).tiny
    return SolveStats(
        steps=outcome.steps, residual=outcome.residual,
        rel_residual=outcome.residual / outcome.fnorm.clamp_min(tiny), converged=outcome.converged,
        trace=outcome.trace, nfev=outcome.nfev + nfev_extra,
        solver={"name": solver.name, **outcome.solver_stats}, status=outcome.status,
    )


def failure_message(result: Result, stats: SolveStats, listed: int = 10) -> str:
    """One paragraph: what went wrong and exactly which samples (non-finite first, then diverged, then the
    unconverged ones with the worst residuals)."""
    status = stats.status.cpu()
    rel = stats.rel_residual.detach().float().cpu()
    B = status.numel()

    def ids(mask: Tensor) -> list[int]:
        return mask.nonzero().flatten().tolist()

    def show(items: list[int]) -> str:
        return ", ".join(map(str, items[:listed])) + (f", ... ({len(items)} in all)" if len(items) > listed else "")

    parts = []
    nonfinite, diverged = ids(status == Result.NONFINITE.code), ids(status == Result.DIVERGED.code)
    unconverged = (status == Result.MAX_STEPS.code).nonzero().flatten()
    if nonfinite:
        parts.append(f"samples [{show(nonfinite)}] turned non-finite (nan or inf)")
    if diverged:
        parts.append(f"samples [{show(diverged)}] diverged (residual or ||f(z)|| ran away)")
    if unconverged.numel():
        order = unconverged[rel[unconverged].nan_to_num(float("inf")).argsort(descending=True)][:3]
        worst = ", ".join(f"sample {int(i)}: relative residual {float(rel[i]):.3g}" for i in order)
        parts.append(f"{unconverged.numel()} did not converge within the budget ({worst})")
    failed = len(nonfinite) + len(diverged) + unconverged.numel()
    steps = int(stats.steps.max()) if B else 0
    hint = ("Failed samples are frozen at their best finite iterate; pass throw=False to get every sample anyway"
            if nonfinite or diverged else "Pass throw=False to get the best iterate anyway, or raise max_steps / "
            "loosen atol, rtol")
    return (f"fixed-point solve {result.message}. {failed} of {B} samples failed after {steps} steps: "
            + "; ".join(parts)
            + f". {hint}.")


def _empty_solution(z0: State, z: Tensor, solver: Any) -> Solution:
    """``B = 0``: nothing to solve; a converged, empty solution (``f`` is not called)."""
    empty = z.new_zeros(0)
    stats = SolveStats(steps=torch.zeros(0, dtype=torch.long, device=z.device), residual=empty,
                       rel_residual=empty, converged=torch.zeros(0, dtype=torch.bool, device=z.device),
                       trace=z.new_zeros(1, 0), nfev=0, solver={"name": solver.name})
    return Solution(z0, Result.CONVERGED, stats)


def _check_finite(flat: Tensor, what: str, layout: StateLayout) -> None:
    # a row sum is non-finite whenever an entry is (or, rarely, when finite entries overflow): one cheap
    # reduction first, the exact per-entry test (slow on CPU: ~50 us for 64 x 256) only when it flags
    if bool(torch.isfinite(flat.detach().sum(dim=1)).all()):
        return
    finite = torch.isfinite(flat).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise DeqInputError(
            f"{what} contains non-finite values (nan or inf) in samples {bad[:10]}{'...' if len(bad) > 10 else ''}; "
            f"expected finite {layout.dtype} values"
        )
