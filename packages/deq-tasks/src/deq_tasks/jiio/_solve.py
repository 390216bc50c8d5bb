"""JIIO's schedule as a solver on deq-core's one loop, and :func:`jiio_solve`.

:class:`JIIOSchedule` wraps the solver of the stacked state (Anderson, the plain iteration, any registered one).
Its state carries the iteration counter ``k``; at each step it sets the augmented map's phase (the step size
``alpha_at(k)``: e.g. 1.0 -> 0.1 at step 25; the end of the ``z``-only warm-up, where the inner solver restarts on
the full map) and then takes one step of the inner solver. It records each iterate's relative residual and cost
in its :class:`JIIORecorder`, which applies the release's per-sample best-iterate rule. The loop itself is
:func:`deq_core.run_loop` with a tolerance no sample meets (a fixed budget: no early exit) and the config's divergence
test.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from deq_core import (
    AbstractFixedPointSolver,
    DeqConfigError,
    DeqInputError,
    DeqSolveError,
    LoopControl,
    State,
    StateLayout,
    run_loop,
)

from ._constraints import project_checked
from ._map import AugmentedMap
from ._problem import JIIOConfig, JIIOProblem, JIIOResult, check_x

__all__ = ["JIIORecorder", "JIIOSchedule", "jiio_solve"]


class JIIORecorder:
    """Per-sample bookkeeping of one JIIO solve: the best iterate by the release's rule, traces, last residuals.

    A new iterate replaces sample ``i``'s best if its relative residual ``||G(v) - v|| / ||G(v)||`` is the lowest
    so far, or it is within the first 10 iterations (after the warm-up), or its cost is lower and its residual
    below 1.3 x the best one (``best_iterate=False``: always the latest iterate).
    """

    def __init__(self, config: JIIOConfig) -> None:
        self.config = config
        self.t0 = time.perf_counter()
        self.best_v: Tensor | None = None
        self.best_rel = self.best_cost = self.best_k = self.last_res = self.res0 = None  # type: ignore[assignment]
        self.rel: list[Tensor] = []
        self.objective: list[Tensor] = []
        self.times: list[float] = []
        self.restarted_at: int | None = None

    def start(self, v: Tensor, gv: Tensor, cost: Tensor, sign: float) -> None:
        res = (gv - v).norm(dim=1)
        rel = res / gv.norm(dim=1).clamp_min(torch.finfo(v.dtype).tiny)
        self.best_v, self.best_rel, self.best_cost = v, rel, cost
        self.best_k = torch.zeros(v.shape[0], dtype=torch.long, device=v.device)
        self.last_res, self.res0 = res, res.clamp_min(1e-30)
        self.diverged = torch.zeros_like(rel, dtype=torch.bool)
        self.diverged_at = torch.zeros_like(self.best_k)
        self._log(rel, sign * cost)

    def restart(self, k: int, v: Tensor, gv: Tensor) -> None:
        """End of the warm-up at ``v`` (``gv`` = the full map there): the warm-up iterates (``x`` and ``mu`` not
        moved) are no longer candidates, and divergence is judged relative to the full map's residual at ``v``."""
        self.restarted_at = k
        self.best_rel = torch.full_like(self.best_rel, math.inf)
        self.res0 = (gv - v).norm(dim=1).clamp_min(1e-30)

    def record(self, k: int, v: Tensor, gv: Tensor, cost: Tensor, sign: float) -> None:
        res = (gv - v).norm(dim=1)
        rel = res / gv.norm(dim=1).clamp_min(torch.finfo(v.dtype).tiny)
        self.last_res = res
        bad = ~torch.isfinite(res) | ~torch.isfinite(cost) | (res > self.config.divergence * self.res0)
        self.diverged_at = torch.where(bad & ~self.diverged, torch.full_like(self.diverged_at, k), self.diverged_at)
        self.diverged = self.diverged | bad
        warm = self.config.warmup
        if self.config.best_iterate:
            take = (rel < self.best_rel) | (k - warm < 10) | ((cost < self.best_cost) & (rel < 1.3 * self.best_rel))
            take = take & ~self.diverged
        else:
            take = torch.ones_like(rel, dtype=torch.bool)
        self.best_v = torch.where(take[:, None], v, self.best_v)
        self.best_rel = torch.where(take, rel, self.best_rel)
        self.best_cost = torch.where(take, cost, self.best_cost)
        self.best_k = torch.where(take, torch.full_like(self.best_k, k), self.best_k)
        self._log(rel, sign * cost)

    def _log(self, rel: Tensor, objective: Tensor) -> None:
        if self.config.record_trace:
            self.rel.append(rel)
            self.objective.append(objective)
            self.times.append(time.perf_counter() - self.t0)


@dataclass
class _ScheduleState:
    k: int
    inner: Any


@dataclass(frozen=True)
class JIIOSchedule(AbstractFixedPointSolver):
    """JIIO's schedule on the augmented map: one ``inner`` solver step per iteration, the map's phase set first.

    Attributes:
        inner: the solver of the stacked state (resolved object).
        config: the :class:`~deq_tasks.jiio.JIIOConfig` (step sizes, switch iteration, warm-up).
        map: the :class:`~deq_tasks.jiio.AugmentedMap` whose phase the schedule sets (the ``f`` the loop passes in
            evaluates it).
        recorder: the solve's :class:`JIIORecorder` (best iterates and traces; read after the loop).

    The state is ``(k, inner state)``. Driven by :func:`deq_core.run_loop` (``jiio_solve`` does this).

    Example:
        >>> import torch
        >>> from deq_core import FixedPointIteration, LoopControl, StateLayout, run_loop
        >>> from deq_tasks.jiio import AugmentedMap, JIIOConfig, JIIOProblem
        >>> prob = JIIOProblem(f=lambda z, x: 0.5 * z + x, objective=lambda z, x: ((z - 1) ** 2).sum(1))
        >>> cfg = JIIOConfig(budget=30, alpha=0.5, alpha_final=0.1, switch_at=20)
        >>> G = AugmentedMap(prob, cfg, StateLayout.of(torch.zeros(1, 2)), torch.Size([1, 2]))
        >>> sched = JIIOSchedule(FixedPointIteration(), cfg, G, JIIORecorder(cfg))
        >>> v = torch.zeros(1, 6)
        >>> out = run_loop(sched, G, v, G(v), LoopControl(atol=0.0, rtol=0.0, max_steps=30))
        >>> G.alpha                       # the schedule dropped the step at iteration 20
        0.1
    """

    name: ClassVar[str] = "jiio-schedule"
    inner: AbstractFixedPointSolver
    config: JIIOConfig
    map: AugmentedMap = field(compare=False, repr=False)
    recorder: JIIORecorder = field(compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.inner, AbstractFixedPointSolver):
            raise DeqConfigError(f"JIIOSchedule.inner must be a solver object, got {type(self.inner).__name__}")
        if not isinstance(self.map, AugmentedMap):
            raise DeqConfigError(f"JIIOSchedule.map must be an AugmentedMap, got {type(self.map).__name__}")

    def init(self, f: Any, z: Tensor, fz: Tensor) -> _ScheduleState:
        self.recorder.start(z, fz, self.map.cost(z), self.map.sign)
        return _ScheduleState(0, self.inner.init(f, z, fz))

    def step(self, f: Any, z: Tensor, fz: Tensor, state: _ScheduleState) -> tuple[Tensor, Tensor, _ScheduleState]:
        k = state.k + 1
        G, cfg = self.map, self.config
        G.alpha = cfg.alpha_at(k)
        inner = state.inner
        if G.z_only and k > cfg.warmup:   # end of the warm-up: restart the inner solver on the full map
            G.z_only = False
            fz = f(z)
            inner = self.inner.init(f, z, fz)
            self.recorder.restart(k, z, fz)
        z_next, fz_next, inner = self.inner.step(f, z, fz, inner)
        rec = self.recorder
        rec.record(k, z_next, fz_next, G.cost(z_next), G.sign)
        if bool(rec.diverged.any()):   # report diverged samples to the loop as non-finite: it stops (or freezes them)
            rows = rec.diverged[:, None]
            z_next, fz_next = z_next.masked_fill(rows, math.nan), fz_next.masked_fill(rows, math.nan)
        return z_next, fz_next, _ScheduleState(k, inner)

    def terminate(self, z: Tensor, fz: Tensor, res: Tensor, fnorm: Tensor, state: _ScheduleState,
                  control: LoopControl) -> Tensor:
        """Never early: JIIO runs its fixed budget (per-sample best iterates are chosen by the recorder)."""
        return torch.zeros_like(res, dtype=torch.bool)

    def stats(self, state: _ScheduleState) -> dict[str, Any]:
        return {"name": self.inner.name, "iterations": state.k, "alpha": self.map.alpha,
                **self.inner.stats(state.inner)}


def jiio_solve(problem: JIIOProblem, z0: State, x0: Tensor, config: JIIOConfig | None = None,
               mu0: State | None = None) -> JIIOResult:
    """Jointly solve the DEQ, its adjoint and the input optimization (package docstring for the maths).

    Arguments:
        problem: :class:`JIIOProblem` (layer, per-sample objective, projection, direction).
        z0: initial equilibrium guess (tensor or tuple, batch first); usually zeros.
        x0: initial input ``(B, ...)`` (projected onto the constraint set first); usually zeros.
        config: :class:`JIIOConfig`.
        mu0: initial adjoint (structure of ``z0``), default zeros.

    Returns:
        :class:`JIIOResult` with ``z``, ``mu``, ``x``, the per-sample ``objective`` and ``kkt`` residuals.

    Raises:
        DeqInputError: wrong shapes/dtypes, non-finite starts, an objective that does not return ``(B,)``, a
            projection that changes the shape of ``x``.
        DeqConfigError: invalid config (e.g. a step size <= 0) or an unknown solver option.
        DeqSolveError: some samples diverged (residual grew ``config.divergence`` times, or nan/inf); the message
            lists them and ``err.solution`` holds the partial :class:`JIIOResult` (best iterates so far).

    Example:
        >>> import torch
        >>> A = 0.5 * torch.eye(3, dtype=torch.float64)
        >>> y = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
        >>> prob = JIIOProblem(f=lambda z, x: z @ A + x, objective=lambda z, x: ((z - y) ** 2).sum(1))
        >>> z0 = torch.zeros(1, 3, dtype=torch.float64)
        >>> res = jiio_solve(prob, z0, z0.clone(), JIIOConfig(budget=300, alpha=0.02, solver="fixed-point"))
        >>> bool(torch.allclose(res.x, y / 2, atol=1e-6))     # z* = 2x, so x* = y / 2
        True
    """
    config = JIIOConfig() if config is None else config
    if not isinstance(config, JIIOConfig):
        raise DeqConfigError(f"config must be a JIIOConfig, got {type(config).__name__}")
    if not isinstance(problem, JIIOProblem):
        raise DeqConfigError(f"problem must be a JIIOProblem, got {type(problem).__name__}")
    inner = config.make_solver()
    layout = StateLayout.of(z0, "z0")
    check_x(x0, layout)
    if mu0 is None:
        mu_flat = torch.zeros(layout.batch, layout.numel, dtype=layout.dtype, device=layout.device)
    else:
        layout.check(mu0, "mu0")
        mu_flat = layout.pack(mu0)
    G = AugmentedMap(problem, config, layout, x0.shape)
    with torch.no_grad():
        x_start = x0.detach()
        if problem.project is not None:
            x_start = project_checked(problem.project, x_start)
        v = G.stack(layout.pack(z0).detach(), mu_flat.detach(), x_start)
        if not bool(torch.isfinite(v).all()):
            raise DeqInputError("z0, mu0 and x0 must be finite")
        recorder = JIIORecorder(config)
        schedule = JIIOSchedule(inner, config, G, recorder)
        G.alpha = config.alpha_at(0)
        G.z_only = config.warmup > 0
        gv = G(v)
        if G.z_only and not bool((gv != v).any()):   # z0 already is the equilibrium at x0: no warm-up needed
            G.z_only = False
            gv = G(v)
        # a fixed budget: no sample ever meets the tolerance (an exact zero residual of the z-only warm-up map is
        # not the end of the solve; JIIOSchedule.terminate says so to loops that ask the solver). The recorder
        # judges divergence (relative to the full map's first residual, after the warm-up); the loop stops on
        # non-finite values.
        control = LoopControl(atol=-1.0, rtol=0.0, max_steps=config.budget, divergence=math.inf,
                              record_trace=False)
        outcome = run_loop(schedule, G, v, gv, control)
        steps = int(outcome.steps.max()) if outcome.steps.numel() else 0
        result = _finish(G, recorder, steps, outcome.solver_stats)
        result.stats["loop_result"] = outcome.result.name
        if bool(recorder.diverged.any()):
            res = recorder.last_res
            bad = recorder.diverged.nonzero().flatten().tolist()
            at = int(recorder.diverged_at[bad].min()) if bad else steps
            growth = ", ".join(f"sample {i}: residual {float(res[i]):.3g} (start {float(recorder.res0[i]):.3g})"
                               for i in bad[:5])
            raise DeqSolveError(
                f"JIIO solve diverged at iteration {at}: {len(bad)} of {layout.batch} samples {bad[:20]}"
                f"{'...' if len(bad) > 20 else ''} have a non-finite or exploding augmented residual ({growth}). "
                f"Lower the step size alpha (now {G.alpha:g}) to match the objective's scale, add damping "
                f"(beta_z, beta_mu) or make f more contractive.",
                result,
            )
        return result


def _finish(G: AugmentedMap, rec: JIIORecorder, steps: int, solver_stats: dict[str, Any]) -> JIIOResult:
    v = rec.best_v
    assert v is not None
    zf, muf, x = G.split(v)
    if G.problem.project is not None:
        # a solver's extrapolated iterate (Anderson) need not be feasible: return the projected input
        x = project_checked(G.problem.project, x)
        v = G.stack(zf, muf, x)
    G.z_only = False
    kkt, obj = G.kkt(v)
    zf, muf, x = G.split(v)
    stats: dict[str, Any] = {"iteration": rec.best_k, "rel_residual": rec.best_rel, "nfev": G.calls,
                             "alpha": G.alpha, "solver": dict(solver_stats)}
    radius = getattr(G.problem.project, "radius", None)
    if isinstance(radius, (int, float)):
        norms = x.reshape(x.shape[0], -1).norm(dim=1)
        stats["boundary"] = float((norms >= radius * (1 - 1e-4)).float().mean())
    if rec.config.record_trace:
        stats["trace"] = torch.stack(rec.rel)
        stats["objective_trace"] = torch.stack(rec.objective)
        stats["time_trace"] = torch.tensor(rec.times, dtype=torch.float64)
    return JIIOResult(G.z_layout.unpack(zf.clone()), G.z_layout.unpack(muf.clone()), x.clone(), obj, kkt, steps,
                      stats)


