"""JIIO: joint inference and input optimization as one augmented equilibrium (Gurumurthy et al., NeurIPS 2021).

Problem: ``min_{x in C} l(z, x)`` subject to ``z = f(z, x)`` (a DEQ layer ``f``). With the Lagrangian
``L = l(z, x) + mu^T (f(z, x) - z)`` the KKT conditions are

* primal (equilibrium):  ``z = f(z, x)``
* adjoint:               ``mu = (df/dz)^T mu + grad_z l``
* input:                 ``d_x = (df/dx)^T mu + grad_x l = 0``   (projected-gradient fixed point when ``x in C``)

JIIO iterates all three at once on the stacked state ``v = (z, mu, x)`` (Jacobi order, every update reads the
same ``v``)::

    z+  = z  + beta_z  * (f(z, x) - z)
    mu+ = mu + beta_mu * ((df/dz)^T mu + grad_z l - mu)
    x+  = Proj(x - alpha * d_x)                     (or Proj(x - alpha * d_x / ||d_x||) per sample)

Both vector-Jacobian products come from ONE reverse pass of the pair ``(l, f)`` with cotangents ``(1, mu)``;
no Jacobian is ever formed. The stacked map is solved with any registered fixed-point solver (Anderson by
default) for a fixed budget ``T``, with a one-time step-size drop and the per-sample best-iterate rule of the
authors' release. Maximization (adversarial attacks) is the same engine with the sign of ``l`` flipped.

The inner objective is per sample, shape ``(B,)``; its reduction (sum of squared errors, ``10 * CE``, ...)
sets the scale that ``alpha`` must match (papers.md section 1.2).

Example:
    >>> import torch
    >>> from deq_tasks.jiio import JIIOConfig, JIIOProblem, jiio_solve
    >>> A = 0.5 * torch.eye(3, dtype=torch.float64)
    >>> y = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    >>> prob = JIIOProblem(f=lambda z, x: z @ A + x, objective=lambda z, x: ((z - y) ** 2).sum(1))
    >>> z0 = torch.zeros(1, 3, dtype=torch.float64)
    >>> res = jiio_solve(prob, z0, z0.clone(), JIIOConfig(budget=300, alpha=0.02, solver="fixed-point"))
    >>> bool(torch.allclose(res.x, y / 2, atol=1e-6))     # z* = 2x, so x* = y / 2
    True
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from deq_core import (
    AbstractFixedPointSolver,
    DeqConfigError,
    DeqInputError,
    DeqSolveError,
    ImplicitAdjoint,
    State,
    StateLayout,
    fixed_point,
    resolve_solver,
)

__all__ = [
    "AugmentedMap",
    "JIIOConfig",
    "JIIOProblem",
    "JIIOResult",
    "augmented_equilibrium",
    "augmented_map",
    "box",
    "equilibrium_with_grad",
    "jiio_solve",
    "l2_ball",
]

DEFAULT_SOLVER = "anderson"
DEFAULT_ANDERSON_MEMORY = 20


@dataclass(frozen=True)
class JIIOProblem:
    """What to optimize.

    Attributes:
        f: the DEQ layer ``f(z, x) -> z`` (``z`` a tensor or tuple of tensors with the batch first, ``x`` a tensor
            ``(B, ...)``); whatever it closes over (parameters) is treated as constant by :func:`jiio_solve`.
        objective: the per-sample inner loss ``l(z, x) -> (B,)``, differentiable in ``z`` (and ``x``).
        project: projection onto the constraint set of ``x`` (``x -> x`` of the same shape), ``None`` = unconstrained.
        maximize: maximize ``objective`` instead (the engine descends ``-objective``).
    """

    f: Callable[[State, Tensor], State]
    objective: Callable[[State, Tensor], Tensor]
    project: Callable[[Tensor], Tensor] | None = None
    maximize: bool = False

    def __post_init__(self) -> None:
        for name in ("f", "objective"):
            if not callable(getattr(self, name)):
                raise DeqConfigError(f"JIIOProblem.{name} must be callable, got {type(getattr(self, name)).__name__}")
        if self.project is not None and not callable(self.project):
            raise DeqConfigError(f"JIIOProblem.project must be callable or None, got {type(self.project).__name__}")


@dataclass(frozen=True)
class JIIOConfig:
    """Hyperparameters of the augmented solve (defaults: the authors' CelebA generative setting, papers.md 1.2).

    Attributes:
        budget: ``T``, augmented iterations (fixed budget, no early exit).
        alpha: step size ``alpha_0`` on ``x``.
        alpha_final: step size after ``switch_at`` (``None`` = no drop).
        switch_at: iteration of the one-time drop; ``None`` = ``max(50, floor(5 T / 8))``.
        beta_z, beta_mu: damping of the ``z`` and ``mu`` updates, in ``(0, 1]``.
        normalized_step: per-sample normalized step ``d_x / ||d_x||`` (adversarial setting).
        solver: solver object or registered name run on the stacked state.
        solver_options: options for a named solver (e.g. ``{"m": 40}``); ``None`` with ``"anderson"`` means the
            paper's memory ``{"m": 20}``.
        best_iterate: return each sample's best iterate by the release's rule (else the last iterate).
        divergence: a sample whose augmented residual exceeds this many times its initial one diverged.
        record_trace: keep per-iteration relative residuals, objectives and wall-clock times in ``stats``.
        x_scale: the stacked state holds ``x / x_scale`` (``"alpha"`` = ``alpha_0``, ``None`` = 1). The fixed point is
            the same; it weights ``x`` in the solver's metric: with ``x / alpha`` the ``x`` residual is ``d_x`` itself,
            comparable to the ``z`` / ``mu`` residuals, so Anderson's least squares weighs the ``x`` update (with raw
            ``x`` its residual ``alpha d_x`` is tiny). Default ``None``: the stacked state of the authors' code.
        max_step: trust region on the ``x`` update: the step ``alpha d_x`` is shortened per sample to at most this
            L2 length (``None`` = no limit). Early on the adjoint ``mu`` (started at 0) overshoots its fixed point
            by orders of magnitude when ``I - df/dz`` is ill-conditioned (a slowly contracting DEQ), so ``alpha d_x``
            throws ``x`` far away (onto the constraint's boundary) before ``mu`` is right; the cap bounds the
            damage while the step is still ``alpha d_x`` (not normalized) once ``mu`` has settled.
        warmup: the first ``warmup`` iterations move ``z`` only (``mu`` and ``x`` stay at their starts); the solver
            then restarts on the full augmented map. Far from the equilibrium ``df/dz`` need not be contractive (a
            DEQ whose contraction comes from saturating nonlinearities at ``z*``), and an adjoint iterated there
            grows geometrically (``||mu||`` hundreds of times its fixed point), which throws ``x`` away; started at a
            near-equilibrium ``z`` the adjoint converges at the DEQ's own rate. Counted in ``budget``.
    """

    budget: int = 100
    alpha: float = 0.01
    alpha_final: float | None = None
    switch_at: int | None = None
    beta_z: float = 0.8
    beta_mu: float = 0.6
    normalized_step: bool = False
    solver: str | AbstractFixedPointSolver = DEFAULT_SOLVER
    solver_options: Mapping[str, Any] | None = None
    best_iterate: bool = True
    divergence: float = 1e6
    record_trace: bool = True
    x_scale: float | str | None = None
    max_step: float | None = None
    warmup: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise DeqConfigError(f"JIIOConfig.budget must be an int >= 1, got {self.budget!r}")
        for name in ("alpha", "alpha_final"):
            v = getattr(self, name)
            if v is None and name == "alpha_final":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0) or not math.isfinite(v):
                raise DeqConfigError(f"JIIOConfig.{name} (step size) must be a finite number > 0, got {v!r}")
        if self.switch_at is not None and (isinstance(self.switch_at, bool) or not isinstance(self.switch_at, int)
                                           or self.switch_at < 0):
            raise DeqConfigError(f"JIIOConfig.switch_at must be None or an int >= 0, got {self.switch_at!r}")
        for name in ("beta_z", "beta_mu"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v <= 1):
                raise DeqConfigError(f"JIIOConfig.{name} (damping) must be in (0, 1], got {v!r}")
        if not isinstance(self.divergence, (int, float)) or not self.divergence > 1:
            raise DeqConfigError(f"JIIOConfig.divergence must be > 1, got {self.divergence!r}")
        if not isinstance(self.solver, (str, AbstractFixedPointSolver)):
            raise DeqConfigError(
                "JIIOConfig.solver must be a registered name or an AbstractFixedPointSolver, "
                f"got {type(self.solver).__name__}"
            )
        xs = self.x_scale
        if not (xs is None or xs == "alpha" or (isinstance(xs, (int, float)) and not isinstance(xs, bool) and xs > 0)):
            raise DeqConfigError(f"JIIOConfig.x_scale must be None, 'alpha' or a number > 0, got {xs!r}")
        ms = self.max_step
        if ms is not None and (isinstance(ms, bool) or not isinstance(ms, (int, float)) or not (ms > 0)
                               or not math.isfinite(ms)):
            raise DeqConfigError(f"JIIOConfig.max_step must be None or a finite number > 0, got {ms!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or not 0 <= self.warmup < self.budget:
            raise DeqConfigError(f"JIIOConfig.warmup must be an int in [0, budget), got {self.warmup!r}")
        if self.solver_options and not isinstance(self.solver, str):
            raise DeqConfigError("JIIOConfig.solver_options are only accepted with a solver name")

    @property
    def switch_iteration(self) -> int:
        """Iteration from which ``alpha_final`` applies."""
        return max(50, (5 * self.budget) // 8) if self.switch_at is None else self.switch_at

    def alpha_at(self, k: int) -> float:
        """Step size used when the augmented map is evaluated at iteration ``k`` (0 = the start point)."""
        if self.alpha_final is not None and k >= self.switch_iteration:
            return float(self.alpha_final)
        return float(self.alpha)

    def make_solver(self) -> AbstractFixedPointSolver:
        """The solver object (a name is resolved through the registry, with ``solver_options``)."""
        options = self.solver_options
        if options is None and self.solver == "anderson":
            options = {"m": DEFAULT_ANDERSON_MEMORY}
        if isinstance(self.solver, str) and options:
            from deq_core import registry

            return registry.get_solver(self.solver, **dict(options))
        return resolve_solver(self.solver)

    def replace(self, **changes: Any) -> JIIOConfig:
        return dataclasses.replace(self, **changes)


@dataclass
class JIIOResult:
    """Outcome of :func:`jiio_solve` (all tensors detached).

    Attributes:
        z, mu: the equilibrium and adjoint (structure of ``z0``); x: the optimized input.
        objective: ``(B,)`` the objective ``l(z, x)`` (as the user defined it, unsigned) at the returned iterate.
        kkt: ``(B,)`` residuals of the three KKT conditions at the returned iterate: ``"z"`` = ``||f(z, x) - z||``,
            ``"mu"`` = ``||(df/dz)^T mu + grad_z l - mu||``, ``"x"`` = ``||d_x||`` (unconstrained) or the projected
            gradient mapping ``||x - Proj(x - alpha d_x)|| / alpha`` (constrained).
        steps: augmented iterations run.
        stats: ``iteration`` (``(B,)`` index of each returned iterate), ``rel_residual`` (``(B,)``), ``nfev``,
            ``solver``, ``alpha`` (final step), and with ``record_trace``
            the ``(T + 1, B)`` ``trace`` (relative residual),
            ``objective_trace`` and ``(T + 1,)`` ``time_trace`` (seconds since the start).
    """

    z: State
    mu: State
    x: Tensor
    objective: Tensor
    kkt: dict[str, Tensor]
    steps: int
    stats: dict[str, Any] = field(default_factory=dict)


class AugmentedMap:
    """The augmented map ``G(v)`` on flat stacked states ``v = [z | mu | x]`` of shape ``(B, 2 N_z + N_x)``.

    ``alpha`` is an attribute (the solve loop sets it per iteration). With ``create_graph=True`` the map is
    itself differentiable (in ``v`` and in what ``f`` closes over), for the full augmented implicit gradient.
    """

    def __init__(self, problem: JIIOProblem, config: JIIOConfig, z_layout: StateLayout, x_shape: torch.Size, *,
                 create_graph: bool = False) -> None:
        self.problem, self.config = problem, config
        self.z_layout, self.x_shape = z_layout, torch.Size(x_shape)
        self.nz, self.nx = z_layout.numel, math.prod(self.x_shape[1:])
        self.alpha = config.alpha_at(0)
        xs = config.x_scale
        self.x_scale = 1.0 if xs is None else float(config.alpha) if xs == "alpha" else float(xs)
        self.create_graph = create_graph
        self.sign = -1.0 if problem.maximize else 1.0
        self.calls = 0
        self._checked = False
        self.last_input: Tensor | None = None
        self.last_cost: Tensor | None = None
        self.z_only = False   # warm-up phase: mu and x are held (set per iteration by the solve loop)

    # ----------------------------------------------------------------- layout
    def split(self, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, 2 N_z + N_x)`` -> flat ``z``, ``mu`` ``(B, N_z)`` and shaped ``x``."""
        zf, muf, xf = v.split([self.nz, self.nz, self.nx], dim=1)
        if self.x_scale != 1.0:
            xf = xf * self.x_scale
        return zf, muf, xf.reshape(self.x_shape)

    def stack(self, zf: Tensor, muf: Tensor, x: Tensor) -> Tensor:
        xf = x.reshape(x.shape[0], -1)
        return torch.cat([zf, muf, xf if self.x_scale == 1.0 else xf / self.x_scale], dim=1)

    # ----------------------------------------------------------------- pieces
    def pieces(self, v: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """At ``v = (z, mu, x)``: ``f(z, x)`` (flat), ``(df/dz)^T mu + grad_z l`` (flat), ``d_x`` (shaped) and the
        signed per-sample cost ``s * l(z, x)`` (``s = -1`` when maximizing), from one reverse pass."""
        zf, muf, x = self.split(v)
        if self.create_graph and v.requires_grad:
            z_in, x_in = zf, x
        else:
            z_in, x_in = zf.detach().requires_grad_(), x.detach().requires_grad_()
            muf = muf if self.create_graph else muf.detach()
        self.calls += 1
        with torch.enable_grad():
            z_struct = self.z_layout.unpack(z_in)
            fz = self.problem.f(z_struct, x_in)
            if not self._checked:
                self.z_layout.check(fz, "f(z, x)")
            fz_flat = self.z_layout.pack(fz)
            obj = self.problem.objective(z_struct, x_in)
            if not self._checked:
                _check_objective(obj, v.shape[0])
                self._checked = True
            cost = self.sign * obj
            outs, cots = [fz_flat], [muf]
            if cost.requires_grad:
                outs.append(cost)
                cots.append(torch.ones_like(cost))
            if not any(o.requires_grad for o in outs):
                raise DeqInputError("neither f(z, x) nor the objective depends on z or x; nothing to optimize")
            outs_g = [o for o in outs if o.requires_grad]
            cots_g = [c for o, c in zip(outs, cots) if o.requires_grad]
            gz, gx = torch.autograd.grad(outs_g, (z_in, x_in), cots_g, allow_unused=True,
                                         create_graph=self.create_graph)
        gz = torch.zeros_like(zf) if gz is None else gz
        gx = torch.zeros_like(x) if gx is None else gx
        if not self.create_graph:
            fz_flat, cost = fz_flat.detach(), cost.detach()
        return fz_flat, gz, gx, cost

    def __call__(self, v: Tensor) -> Tensor:
        cfg = self.config
        zf, muf, x = self.split(v)
        if self.z_only and self._checked and not self.create_graph:   # warm-up: f only, no reverse pass
            self.calls += 1
            z_struct = self.z_layout.unpack(zf)
            fz, cost = self.z_layout.pack(self.problem.f(z_struct, x)), self.sign * self.problem.objective(z_struct, x)
        else:
            fz, adj, dx, cost = self.pieces(v)
        z_next = zf + cfg.beta_z * (fz - zf)
        if self.z_only:
            self.last_input, self.last_cost = v, cost
            return self.stack(z_next, muf, x)
        mu_next = muf + cfg.beta_mu * (adj - muf)
        if cfg.normalized_step:
            norm = dx.reshape(dx.shape[0], -1).norm(dim=1).clamp_min(1e-12)
            dx = dx / norm.reshape(-1, *([1] * (dx.dim() - 1)))
        step = self.alpha * dx
        if cfg.max_step is not None:
            length = step.reshape(step.shape[0], -1).norm(dim=1).clamp_min(1e-30)
            step = step * torch.clamp(cfg.max_step / length, max=1.0).reshape(-1, *([1] * (step.dim() - 1)))
        x_next = x - step
        if self.problem.project is not None:
            x_next = _project(self.problem.project, x_next)
        self.last_input, self.last_cost = v, cost
        return self.stack(z_next, mu_next, x_next)

    def cost(self, v: Tensor) -> Tensor:
        """Signed cost at ``v`` (from the last evaluation when it was at ``v``)."""
        if self.last_input is v and self.last_cost is not None:
            return self.last_cost
        zf, _, x = self.split(v)
        with torch.no_grad():
            obj = self.problem.objective(self.z_layout.unpack(zf), x)
        return self.sign * obj

    def kkt(self, v: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Per-sample KKT residuals at ``v`` and the (unsigned) objective there."""
        zf, muf, x = self.split(v)
        fz, adj, dx, cost = self.pieces(v)
        r_x = dx
        if self.problem.project is not None:
            r_x = (x - _project(self.problem.project, x - self.alpha * dx)) / self.alpha
        out = {
            "z": (fz - zf).norm(dim=1),
            "mu": (adj - muf).norm(dim=1),
            "x": r_x.reshape(r_x.shape[0], -1).norm(dim=1),
        }
        return {k: t.detach() for k, t in out.items()}, (self.sign * cost).detach()


def augmented_map(problem: JIIOProblem, config: JIIOConfig, z_like: State, x_like: Tensor, *,
                  create_graph: bool = False) -> AugmentedMap:
    """Build the augmented map ``G`` for states shaped like ``z_like`` and inputs shaped like ``x_like``.

    Example:
        >>> import torch
        >>> prob = JIIOProblem(f=lambda z, x: 0.5 * z + x, objective=lambda z, x: (z ** 2).sum(1))
        >>> G = augmented_map(prob, JIIOConfig(alpha=0.1), torch.zeros(2, 3), torch.zeros(2, 3))
        >>> tuple(G(torch.zeros(2, 9)).shape)
        (2, 9)
    """
    layout = StateLayout.of(z_like, "z0")
    _check_x(x_like, layout)
    return AugmentedMap(problem, config, layout, x_like.shape, create_graph=create_graph)


def jiio_solve(problem: JIIOProblem, z0: State, x0: Tensor, config: JIIOConfig | None = None,
               mu0: State | None = None) -> JIIOResult:
    """Jointly solve the DEQ, its adjoint and the input optimization (module docstring for the maths).

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
    """
    config = JIIOConfig() if config is None else config
    if not isinstance(config, JIIOConfig):
        raise DeqConfigError(f"config must be a JIIOConfig, got {type(config).__name__}")
    if not isinstance(problem, JIIOProblem):
        raise DeqConfigError(f"problem must be a JIIOProblem, got {type(problem).__name__}")
    solver = config.make_solver()
    layout = StateLayout.of(z0, "z0")
    _check_x(x0, layout)
    if mu0 is None:
        mu_flat = torch.zeros(layout.batch, layout.numel, dtype=layout.dtype, device=layout.device)
    else:
        layout.check(mu0, "mu0")
        mu_flat = layout.pack(mu0)
    G = AugmentedMap(problem, config, layout, x0.shape)
    with torch.no_grad():
        x_start = x0.detach()
        if problem.project is not None:
            x_start = _project(problem.project, x_start)
        v = G.stack(layout.pack(z0).detach(), mu_flat.detach(), x_start)
        if not bool(torch.isfinite(v).all()):
            raise DeqInputError("z0, mu0 and x0 must be finite")
        return _run(G, solver, v, config)


def _run(G: AugmentedMap, solver: AbstractFixedPointSolver, v: Tensor, cfg: JIIOConfig) -> JIIOResult:
    t0 = time.perf_counter()
    B = v.shape[0]
    tiny = torch.finfo(v.dtype).tiny
    G.alpha = cfg.alpha_at(0)
    G.z_only = cfg.warmup > 0
    gv = G(v)
    cost = G.cost(v)
    res = (gv - v).norm(dim=1)
    rel = res / gv.norm(dim=1).clamp_min(tiny)
    res0 = res.clamp_min(1e-30)
    best_v, best_rel, best_cost = v, rel, cost
    best_k = torch.zeros(B, dtype=torch.long, device=v.device)
    traces: dict[str, list] = {"trace": [rel], "objective_trace": [G.sign * cost],
                               "time_trace": [time.perf_counter() - t0]}
    state = solver.init(G, v, gv)
    for k in range(1, cfg.budget + 1):
        G.alpha = cfg.alpha_at(k)
        if G.z_only and k > cfg.warmup:   # end of the warm-up: restart the solver on the full map
            G.z_only = False
            gv = G(v)
            state = solver.init(G, v, gv)
            best_rel = torch.full_like(best_rel, math.inf)   # warm-up iterates (x, mu not moved) are not candidates
            res0 = (gv - v).norm(dim=1).clamp_min(1e-30)
        v, gv, state = solver.step(G, v, gv, state)
        cost = G.cost(v)
        res = (gv - v).norm(dim=1)
        rel = res / gv.norm(dim=1).clamp_min(tiny)
        bad = ~torch.isfinite(res) | ~torch.isfinite(cost) | (res > cfg.divergence * res0)
        if bool(bad.any()):
            partial = _finish(G, best_v, best_k, best_rel, cfg, k, solver, state, traces)
            idx = bad.nonzero().flatten().tolist()
            growth = ", ".join(f"sample {i}: residual {float(res[i]):.3g} (start {float(res0[i]):.3g})"
                               for i in idx[:5])
            raise DeqSolveError(
                f"JIIO solve diverged at iteration {k}: {len(idx)} of {B} samples {idx[:20]}"
                f"{'...' if len(idx) > 20 else ''} have a non-finite or exploding augmented residual ({growth}). "
                f"Lower the step size alpha (now {G.alpha:g}) to match the objective's scale, add damping "
                f"(beta_z, beta_mu) or make f more contractive.",
                partial,
            )
        if cfg.best_iterate:
            take = (rel < best_rel) | (k - cfg.warmup < 10) | ((cost < best_cost) & (rel < 1.3 * best_rel))
        else:
            take = torch.ones_like(rel, dtype=torch.bool)
        best_v = torch.where(take[:, None], v, best_v)
        best_rel = torch.where(take, rel, best_rel)
        best_cost = torch.where(take, cost, best_cost)
        best_k = torch.where(take, torch.full_like(best_k, k), best_k)
        if cfg.record_trace:
            traces["trace"].append(rel)
            traces["objective_trace"].append(G.sign * cost)
            traces["time_trace"].append(time.perf_counter() - t0)
    return _finish(G, best_v, best_k, best_rel, cfg, cfg.budget, solver, state, traces)


def _finish(G: AugmentedMap, v: Tensor, best_k: Tensor, best_rel: Tensor, cfg: JIIOConfig, steps: int,
            solver: AbstractFixedPointSolver, state: Any, traces: dict[str, list]) -> JIIOResult:
    if G.problem.project is not None:
        # a solver's extrapolated iterate (Anderson) need not be feasible: return the projected input
        zf, muf, x = G.split(v)
        v = G.stack(zf, muf, _project(G.problem.project, x))
    kkt, obj = G.kkt(v)
    zf, muf, x = G.split(v)
    stats: dict[str, Any] = {
        "iteration": best_k, "rel_residual": best_rel, "nfev": G.calls, "alpha": G.alpha,
        "solver": {"name": solver.name, **solver.stats(state)},
    }
    if cfg.record_trace:
        stats["trace"] = torch.stack(traces["trace"])
        stats["objective_trace"] = torch.stack(traces["objective_trace"])
        stats["time_trace"] = torch.tensor(traces["time_trace"], dtype=torch.float64)
    return JIIOResult(G.z_layout.unpack(zf.clone()), G.z_layout.unpack(muf.clone()), x.clone(), obj, kkt, steps, stats)


# --------------------------------------------------------------------------------------------- training θ
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


# --------------------------------------------------------------------------------------------- constraints
def l2_ball(eps: float | Tensor, center: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """Projection onto ``{x : ||x - center||_2 <= eps}`` per sample (over the flattened sample).

    ``Pi(d) = d * min(1, eps / ||d||)`` with ``d = x - center``.

    Raises:
        DeqConfigError: ``eps <= 0`` (or not finite).

    Example:
        >>> import torch
        >>> proj = l2_ball(1.0)
        >>> float(proj(torch.tensor([[3.0, 4.0]])).norm())
        1.0
    """
    eps_t = torch.as_tensor(eps, dtype=torch.float64)
    if eps_t.numel() == 0 or not bool(torch.isfinite(eps_t).all()) or not bool((eps_t > 0).all()):
        raise DeqConfigError(f"l2_ball radius eps must be finite and > 0, got {eps!r}")
    if eps_t.dim() > 1:
        raise DeqConfigError(f"l2_ball eps must be a scalar or a (B,) tensor, got shape {tuple(eps_t.shape)}")

    def project(x: Tensor) -> Tensor:
        if center is not None and center.shape != x.shape:
            raise DeqInputError(
                f"l2_ball center has shape {tuple(center.shape)}, expected the shape of x {tuple(x.shape)}")
        if eps_t.dim() == 1 and eps_t.numel() != x.shape[0]:
            raise DeqInputError(f"l2_ball eps has {eps_t.numel()} radii, expected one per sample ({x.shape[0]})")
        d = x if center is None else x - center
        norm = d.reshape(d.shape[0], -1).norm(dim=1).clamp_min(1e-12)
        scale = torch.clamp(eps_t.to(d) / norm, max=1.0).reshape(-1, *([1] * (d.dim() - 1)))
        d = d * scale
        return d if center is None else center + d

    return project


def box(low: float | Tensor, high: float | Tensor) -> Callable[[Tensor], Tensor]:
    """Projection onto the box ``low <= x <= high`` (bounds broadcast to ``x``; e.g. valid pixel range).

    Raises:
        DeqConfigError: ``low > high`` somewhere.
    """
    lo, hi = torch.as_tensor(low, dtype=torch.float64), torch.as_tensor(high, dtype=torch.float64)
    if bool((lo > hi).any()):
        raise DeqConfigError(f"box needs low <= high, got low={low!r}, high={high!r}")

    def project(x: Tensor) -> Tensor:
        try:
            torch.broadcast_shapes(lo.shape, x.shape)
            torch.broadcast_shapes(hi.shape, x.shape)
        except RuntimeError:
            raise DeqInputError(
                f"box bounds of shapes {tuple(lo.shape)} / {tuple(hi.shape)} do not broadcast to x of shape "
                f"{tuple(x.shape)}"
            ) from None
        return torch.maximum(torch.minimum(x, hi.to(x)), lo.to(x))

    return project


# --------------------------------------------------------------------------------------------- checks
def _project(project: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    out = project(x)
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise DeqInputError(f"the constraint's projection must return x's shape {tuple(x.shape)}, got {got}")
    return out


def _check_objective(obj: Any, batch: int) -> None:
    if not isinstance(obj, Tensor) or obj.shape != (batch,):
        got = tuple(obj.shape) if isinstance(obj, Tensor) else type(obj).__name__
        raise DeqInputError(
            f"the objective must return one scalar per sample, a tensor of shape ({batch},), got {got}; "
            "reduce over everything but the batch (e.g. .flatten(1).sum(1))"
        )
    if not obj.is_floating_point():
        raise DeqInputError(f"the objective must return floating-point values, got {obj.dtype}")


def _check_x(x0: Any, layout: StateLayout) -> None:
    if not isinstance(x0, Tensor):
        raise DeqInputError(f"x0 must be a tensor (B, ...), got {type(x0).__name__}")
    if x0.dim() < 1 or x0.shape[0] != layout.batch:
        raise DeqInputError(f"x0 must have the batch size of z0 ({layout.batch}) first, got shape {tuple(x0.shape)}")
    if x0.dtype != layout.dtype or x0.device != layout.device:
        raise DeqInputError(
            f"x0 must have z0's dtype and device ({layout.dtype}, {layout.device}), got {x0.dtype}, {x0.device}")
