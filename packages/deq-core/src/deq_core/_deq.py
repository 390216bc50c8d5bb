"""``DEQ``: an ``nn.Module`` whose output is the fixed point ``z* = f(z*, x)`` of a layer ``f``."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._adjoint import AbstractAdjoint
from ._driver import check_tolerances, failure_message, fixed_point, solve_flat
from ._errors import DeqConfigError, DeqInputError, DeqSolveError
from ._jacobian import jacobian_frobenius
from ._loop import LoopControl, residual_norms
from ._resolve import resolve_adjoint, resolve_solver
from ._solution import Result, Solution, SolveStats
from ._solver import AbstractFixedPointSolver
from ._state import State, StateLayout, flat_map
from .nn._norm import frozen_weights

__all__ = ["DEQ", "DEQInfo"]


@dataclass
class DEQInfo:
    """What a DEQ forward reports besides ``z*``.

    Attributes:
        result: :class:`Result` of the forward solve.
        stats: :class:`SolveStats` (per-sample steps, residuals, trace, f-evaluations).
        warm: the solve started from the ``reuse`` cache.
        jac_loss: Hutchinson estimate of ``||df/dz||_F^2 / N`` (only when ``jac_reg_probes > 0`` and training),
            add ``c * jac_loss`` to the training loss.
    """

    result: Result
    stats: SolveStats
    warm: bool = False
    jac_loss: Tensor | None = None


class DEQ(nn.Module):
    """Deep equilibrium layer: ``forward(x) = z*`` with ``z* = f(z*, x)``, differentiated implicitly.

    Arguments:
        f: an ``nn.Module`` (or callable) ``f(z, x) -> z`` where ``z`` is a tensor or a tuple of tensors with
            the batch first. If ``f`` has a method ``init_state(x)`` it gives the default ``z0``; otherwise
            ``z0 = zeros_like(x)``.
        solver: solver object or registered name (resolved now, so a typo fails at construction).
        adjoint: adjoint object or name (``implicit``, ``neumann``, ``phantom``, ``unrolled``), ``None`` = detached.
        atol, rtol, max_steps: forward tolerances and budget (see :func:`deq_core.fixed_point`).
        eval_max_steps: budget in eval mode (default ``max_steps``).
        reuse: warm-start from the previous fixed point for the same ``cache_key`` (amortization across
            training steps, as Implicit² uses); the cache is per module instance and per process, and a
            cached point is used only when its shapes match ``f.init_state(x)`` (else a cold start).
        reuse_steps: solver steps when warm-started (``0`` = reuse the cached point as is, with gradients
            through one application of ``f``); ``None`` = solve to tolerance. ``k >= 1`` runs ``k - 1``
            solver steps without a graph and then one application of ``f`` that carries the adjoint's
            gradient, so ``k = 1`` costs one ``f`` evaluation plus the adjoint's VJPs (Implicit²'s
            amortized step); the cache then holds that output.
        strict: raise :class:`DeqSolveError` when the budget ends before convergence; divergence and
            non-finite values always raise.
        jac_reg_probes: Hutchinson probes for ``info.jac_loss`` in training mode (0 = off).

    Example:
        >>> import torch
        >>> from deq_core import DEQ
        >>> class Layer(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__(); self.lin = torch.nn.Linear(4, 4)
        ...         with torch.no_grad(): self.lin.weight.mul_(0.3)
        ...     def forward(self, z, x): return torch.tanh(self.lin(z) + x)
        >>> deq = DEQ(Layer(), solver="fixed-point", rtol=1e-6)
        >>> z, info = deq(torch.randn(2, 4))
        >>> info.result.name, tuple(z.shape)
        ('CONVERGED', (2, 4))
    """

    def __init__(self, f: nn.Module, *, solver: AbstractFixedPointSolver | str = "fixed-point",
                 adjoint: AbstractAdjoint | str | None = "implicit", atol: float = 1e-6, rtol: float = 1e-4,
                 max_steps: int = 50, eval_max_steps: int | None = None, reuse: bool = False,
                 reuse_steps: int | None = None, strict: bool = False, jac_reg_probes: int = 0,
                 check_every: int = 1) -> None:
        super().__init__()
        self.f = f
        self.solver = resolve_solver(solver)
        self.adjoint = resolve_adjoint(adjoint)
        check_tolerances(atol, rtol, max_steps)
        for name, v in (("eval_max_steps", eval_max_steps), ("reuse_steps", reuse_steps)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise DeqConfigError(f"DEQ.{name} must be None or an int >= 0, got {v!r}")
        if isinstance(jac_reg_probes, bool) or not isinstance(jac_reg_probes, int) or jac_reg_probes < 0:
            raise DeqConfigError(f"DEQ.jac_reg_probes must be an int >= 0, got {jac_reg_probes!r}")
        self.atol, self.rtol, self.max_steps = atol, rtol, max_steps
        self.eval_max_steps = max_steps if eval_max_steps is None else eval_max_steps
        self.reuse, self.reuse_steps, self.strict = reuse, reuse_steps, strict
        self.jac_reg_probes, self.check_every = jac_reg_probes, check_every
        self._cache: dict[Hashable, State] = {}

    def config(self) -> dict[str, Any]:
        """The hyperparameters as JSON-friendly values (stored in checkpoints)."""
        return {
            "solver": self.solver.name, "solver_options": {k: _plain(v) for k, v in self.solver.options().items()},
            "adjoint": None if self.adjoint is None else self.adjoint.name, "atol": self.atol, "rtol": self.rtol,
            "max_steps": self.max_steps, "eval_max_steps": self.eval_max_steps, "reuse": self.reuse,
            "reuse_steps": self.reuse_steps, "jac_reg_probes": self.jac_reg_probes,
        }

    def clear_cache(self) -> None:
        """Forget every warm-start point."""
        self._cache.clear()

    def initial_state(self, x: Any) -> State:
        init = getattr(self.f, "init_state", None)
        if callable(init):
            return init(x)
        if isinstance(x, Tensor):
            return torch.zeros_like(x)
        raise DeqInputError("DEQ needs z0: pass z0=..., or give f an init_state(x) method, or pass a tensor x")

    def forward(self, x: Any, z0: State | None = None, *, cache_key: Hashable = None) -> tuple[State, DEQInfo]:
        """Solve ``z* = f(z*, x)``; returns ``(z*, DEQInfo)``. ``cache_key`` names the warm-start slot."""
        warm = False
        if z0 is None and self.reuse and cache_key in self._cache:
            cached, z_init = self._cache[cache_key], self.initial_state(x)
            # a cached point of another batch size / shape (e.g. the last, smaller batch) is not reused
            if StateLayout.of(cached, "cache") == StateLayout.of(z_init, "z0"):
                z0, warm = cached, True
            else:
                z0 = z_init
        if z0 is None:
            z0 = self.initial_state(x)
        budget = self.max_steps if self.training else self.eval_max_steps
        if warm and self.reuse_steps is not None:
            budget = self.reuse_steps
        throw_budget = self.strict and not (warm and self.reuse_steps is not None)
        if warm and self.reuse_steps is not None and not getattr(self.adjoint, "needs_forward_graph", False):
            with frozen_weights(self.f):
                value, result, stats = self._amortized(x, z0)
                jac_loss = self._jac_loss(x, value)
            self._cache[cache_key] = _detach(value)
            return value, DEQInfo(result, stats, True, jac_loss)
        with frozen_weights(self.f):
            sol = fixed_point(lambda z: self.f(z, x), z0, solver=self.solver, adjoint=self.adjoint,
                              atol=self.atol, rtol=self.rtol, max_steps=budget, throw=False,
                              check_every=self.check_every)
            if sol.result in (Result.DIVERGED, Result.NONFINITE) or (throw_budget and sol.result is Result.MAX_STEPS):
                raise DeqSolveError(failure_message(sol.result, sol.stats), sol)
            jac_loss = self._jac_loss(x, sol.value)
        if self.reuse:
            self._cache[cache_key] = _detach(sol.value)
        return sol.value, DEQInfo(sol.result, sol.stats, warm, jac_loss)

    def _jac_loss(self, x: Any, value: State) -> Tensor | None:
        if not (self.jac_reg_probes and self.training and torch.is_grad_enabled()):
            return None
        layout = StateLayout.of(value, "z")
        flat = flat_map(lambda z: self.f(z, x), layout, check=False)
        return jacobian_frobenius(flat, layout.pack(value), probes=self.jac_reg_probes)

    def _amortized(self, x: Any, z0: State) -> tuple[State, Result, SolveStats]:
        """Warm-started forward (``reuse_steps = k``): ``k - 1`` solver steps without a graph, then one
        application of ``f`` whose output is returned and carries the adjoint's gradient (``k = 0``: the
        cached point itself, with gradients through one application of ``f``). With ``k = 1`` this is
        Implicit²'s amortized step, ``z_t = f(z_{t-1}; x)``: one ``f`` evaluation with graph plus the
        adjoint's VJPs. Statistics: residual ``||f(z) - z||`` at the point where ``f`` was applied."""
        layout = StateLayout.of(z0, "z0")
        g = flat_map(lambda z: self.f(z, x), layout)
        z = layout.pack(z0).detach()
        k = self.reuse_steps
        control = LoopControl(float(self.atol), float(self.rtol), max(k - 1, 0), self.check_every, 1e6, False)
        nfev, steps = 0, torch.zeros(layout.batch, dtype=torch.long, device=z.device)
        if k > 1:
            with torch.no_grad():
                out = solve_flat(g, z, self.solver, control)
            z, nfev, steps = out.z, out.nfev + 1, out.steps
        captured: list[Tensor] = []

        def g_capture(t: Tensor) -> Tensor:
            out = g(t)
            captured.append(out)
            return out

        if self.adjoint is not None and torch.is_grad_enabled():
            value = self.adjoint.attach(g_capture, z, solver=self.solver, control=control)
        else:
            value = z
        if not captured:
            with torch.no_grad():
                captured.append(g(z))
        fz = captured[-1].detach()
        nfev += len(captured)
        if k >= 1:
            value = value + (fz - value.detach())   # numerically f(z), gradient path unchanged
            steps = steps + 1
        res, fnorm = residual_norms(z, fz)
        converged = res <= self.atol + self.rtol * fnorm
        finite = torch.isfinite(res)
        result = Result.CONVERGED if bool(converged.all()) else Result.MAX_STEPS
        if not bool(finite.all()):
            result = Result.NONFINITE
        stats = SolveStats(steps=steps, residual=res, rel_residual=res / fnorm.clamp_min(torch.finfo(fnorm.dtype).tiny),
                           converged=converged, trace=res.new_zeros(0, res.numel()), nfev=nfev,
                           solver={"name": self.solver.name, "amortized": True})
        if result is Result.NONFINITE:
            raise DeqSolveError(failure_message(result, stats), Solution(layout.unpack(value), result, stats))
        return layout.unpack(value), result, stats

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state


def _detach(state: State) -> State:
    return tuple(t.detach() for t in state) if isinstance(state, tuple) else state.detach()


def _plain(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)
