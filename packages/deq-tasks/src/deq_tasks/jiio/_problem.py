"""What JIIO solves (:class:`JIIOProblem`), with which settings (:class:`JIIOConfig`), and what it returns
(:class:`JIIOResult`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from deq_core import AbstractFixedPointSolver, DeqConfigError, DeqInputError, State, StateLayout, resolve_solver

__all__ = ["JIIOConfig", "JIIOProblem", "JIIOResult"]

DEFAULT_ANDERSON_MEMORY = 20


@dataclass(frozen=True)
class JIIOProblem:
    """What to optimize.

    Attributes:
        f: the DEQ layer ``f(z, x) -> z`` (``z`` a tensor or tuple of tensors with the batch first, ``x`` a tensor
            ``(B, ...)``); whatever it closes over (parameters) is treated as constant by ``jiio_solve``.
        objective: the per-sample inner loss ``l(z, x) -> (B,)``, differentiable in ``z`` (and ``x``).
        project: projection onto the constraint set of ``x`` (``x -> x`` of the same shape), ``None`` = unconstrained.
        maximize: maximize ``objective`` instead (the engine descends ``-objective``).

    Example:
        >>> JIIOProblem(f=lambda z, x: z + x, objective=lambda z, x: (z ** 2).sum(1)).maximize
        False
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


def _help(text: str, default: Any = dataclasses.MISSING) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class JIIOConfig:
    """Hyperparameters of the augmented solve (defaults: the authors' CelebA generative setting, papers.md 1.2).

    ``alpha`` is used from iteration 0, ``alpha_final`` from ``switch_at`` on (the one-time drop of the release;
    :meth:`alpha_at`). The schedule runs as a solver on deq-core's loop
    (:class:`~deq_tasks.jiio.JIIOSchedule`, whose state carries the iteration counter).

    Attributes:
        budget: ``T``, augmented iterations (fixed budget, no early exit).
        alpha: step size ``alpha_0`` on ``x``; alpha_final: after ``switch_at`` (``None`` = no drop).
        switch_at: iteration of the drop; ``None`` = ``max(50, floor(5 T / 8))``.
        beta_z, beta_mu: damping of the ``z`` and ``mu`` updates, in ``(0, 1]``.
        normalized_step: per-sample normalized step ``d_x / ||d_x||`` (adversarial setting).
        solver: solver object or registered name run on the stacked state; solver_options: its options (a name
            only; ``None`` with ``"anderson"`` = the paper's memory ``{"m": 20}``).
        best_iterate: return each sample's best iterate by the release's rule (else the last iterate).
        divergence: a sample whose augmented residual exceeds this many times its initial one diverged.
        record_trace: keep per-iteration relative residuals, objectives and wall-clock times in ``stats``.
        x_scale: the stacked state holds ``x / x_scale`` (``"alpha"`` = ``alpha_0``, ``None`` = 1): the same fixed
            point, but with ``x / alpha`` the ``x`` residual Anderson sees is ``d_x`` itself, on the scale of the
            ``z`` / ``mu`` residuals (with raw ``x`` its residual ``alpha d_x`` is tiny and ignored).
        max_step: trust region: the step ``alpha d_x`` is shortened per sample to at most this L2 length.
        warmup: the first ``warmup`` iterations move ``z`` only (``mu`` and ``x`` held), then the solver restarts
            on the full map: far from the equilibrium an adjoint iterated from 0 overshoots its fixed point and
            throws ``x`` away. Counted in ``budget``.
        tangent_step: for samples on the boundary of an L2-ball constraint (:func:`~deq_tasks.jiio.l2_ball`) whose
            step points outward, drop the step's outward radial part (a step along the sphere; same fixed points).
            The plain projected step moves such a latent along the boundary by only ``r / (r + alpha |d_n|)`` of its
            tangential step, which stalls JIIO when the objective pushes many latents outward.

    Example:
        >>> cfg = JIIOConfig(budget=40, alpha=1.0, alpha_final=0.1, switch_at=25)
        >>> cfg.alpha_at(24), cfg.alpha_at(25)
        (1.0, 0.1)
    """

    budget: int = _help("JIIO iterations T (fixed budget, no early exit)", 100)
    alpha: float = _help("step size on the optimized input x (matched to the inner loss's scale)", 0.01)
    alpha_final: float | None = _help("step size from switch_at on (none = no drop)", None)
    switch_at: int | None = _help("iteration of the step-size drop (none = max(50, 5T/8))", None)
    beta_z: float = _help("damping of the z update, in (0, 1]", 0.8)
    beta_mu: float = _help("damping of the adjoint (mu) update, in (0, 1]", 0.6)
    normalized_step: bool = _help("per-sample normalized step d_x / ||d_x|| (adversarial attacks)", False)
    solver: str | AbstractFixedPointSolver = _help("solver of the stacked state, a registered name", "anderson")
    solver_options: Mapping[str, Any] | None = _help("options of the named solver, e.g. m=30", None)
    best_iterate: bool = _help("return each sample's best iterate (the release's rule), else the last", True)
    divergence: float = _help("a sample diverged when its residual grew this many times", 1e6)
    record_trace: bool = _help("record per-iteration residuals, objectives and times", True)
    x_scale: float | str | None = _help("the stacked state holds x / x_scale ('alpha' = alpha; none = 1)", None)
    max_step: float | None = _help("cap on the L2 length of each x step (none = no cap)", None)
    warmup: int = _help("first iterations that move z only (counted in budget; a new budget alone caps it at "
                        "budget // 4)", 0)
    tangent_step: bool = _help("on an L2-ball boundary, step along the sphere (drop the outward radial part)", False)

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
        if isinstance(self.divergence, bool) or not isinstance(self.divergence, (int, float)) \
                or not self.divergence > 1:
            raise DeqConfigError(f"JIIOConfig.divergence must be > 1, got {self.divergence!r}")
        if not isinstance(self.solver, (str, AbstractFixedPointSolver)):
            raise DeqConfigError(
                "JIIOConfig.solver must be a registered name or an AbstractFixedPointSolver, "
                f"got {type(self.solver).__name__}"
            )
        if self.solver_options is not None and not isinstance(self.solver_options, Mapping):
            raise DeqConfigError(f"JIIOConfig.solver_options must be a mapping or None, got {self.solver_options!r}")
        xs = self.x_scale
        if not (xs is None or xs == "alpha" or (isinstance(xs, (int, float)) and not isinstance(xs, bool) and xs > 0
                                                and math.isfinite(xs))):
            raise DeqConfigError(f"JIIOConfig.x_scale must be None, 'alpha' or a finite number > 0, got {xs!r}")
        ms = self.max_step
        if ms is not None and (isinstance(ms, bool) or not isinstance(ms, (int, float)) or not (ms > 0)
                               or not math.isfinite(ms)):
            raise DeqConfigError(f"JIIOConfig.max_step must be None or a finite number > 0, got {ms!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or not 0 <= self.warmup < self.budget:
            raise DeqConfigError(f"JIIOConfig.warmup (iterations that move z only) must be an int in [0, budget), got "
                                 f"warmup {self.warmup!r} with budget {self.budget}: lower warmup or raise budget")
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

    def with_budget(self, budget: int) -> JIIOConfig:
        """The same settings at another budget (``warmup`` capped at ``budget // 4``)."""
        return self.replace(budget=budget)

    def replace(self, **changes: Any) -> JIIOConfig:
        """These settings with ``changes``; a new ``budget`` without a ``warmup`` caps the warm-up at
        ``budget // 4``, as :meth:`with_budget` does."""
        if "budget" in changes and "warmup" not in changes and isinstance(changes["budget"], int):
            changes["warmup"] = min(self.warmup, max(changes["budget"], 0) // 4)
        return dataclasses.replace(self, **changes)


@dataclass
class JIIOResult:
    """Outcome of ``jiio_solve`` (all tensors detached).

    Attributes:
        z, mu: the equilibrium and adjoint (structure of ``z0``); x: the optimized input.
        objective: ``(B,)`` the objective ``l(z, x)`` (as the user defined it, unsigned) at the returned iterate.
            JIIO's ``z`` need not satisfy ``z = f(z, x)``: score ``x`` on a re-solved equilibrium (the tasks do).
        kkt: ``(B,)`` residuals of the three KKT conditions at the returned iterate: ``"z"`` = ``||f(z, x) - z||``,
            ``"mu"`` = ``||(df/dz)^T mu + grad_z l - mu||``, ``"x"`` = ``||d_x||`` (unconstrained) or the projected
            gradient mapping ``||x - Proj(x - alpha d_x)|| / alpha`` (constrained).
        steps: augmented iterations run.
        stats: ``iteration`` (``(B,)`` index of each returned iterate), ``rel_residual`` (``(B,)``), ``nfev``,
            ``solver``, ``alpha`` (final step), ``boundary`` (fraction of samples whose ``x`` lies on the boundary of
            an L2-ball constraint, when the projection carries a ``radius``), and with ``record_trace`` the
            ``(T + 1, B)`` ``trace`` (relative residual), ``objective_trace`` and ``(T + 1,)`` ``time_trace``.
    """

    z: State
    mu: State
    x: Tensor
    objective: Tensor
    kkt: dict[str, Tensor]
    steps: int
    stats: dict[str, Any] = field(default_factory=dict)


def check_objective(obj: Any, batch: int) -> None:
    if not isinstance(obj, Tensor) or obj.shape != (batch,):
        got = tuple(obj.shape) if isinstance(obj, Tensor) else type(obj).__name__
        raise DeqInputError(
            f"the objective must return one scalar per sample, a tensor of shape ({batch},), got {got}; "
            "reduce over everything but the batch (e.g. .flatten(1).sum(1))"
        )
    if not obj.is_floating_point():
        raise DeqInputError(f"the objective must return floating-point values, got {obj.dtype}")


def check_x(x0: Any, layout: StateLayout) -> None:
    if not isinstance(x0, Tensor):
        raise DeqInputError(f"x0 must be a tensor (B, ...), got {type(x0).__name__}")
    if x0.dim() < 1 or x0.shape[0] != layout.batch:
        raise DeqInputError(f"x0 must have the batch size of z0 ({layout.batch}) first, got shape {tuple(x0.shape)}")
    if x0.dtype != layout.dtype or x0.device != layout.device:
        raise DeqInputError(
            f"x0 must have z0's dtype and device ({layout.dtype}, {layout.device}), got {x0.dtype}, {x0.device}")
