"""``DEQ``: an ``nn.Module`` whose output is the fixed point ``z* = f(z*, x)`` of a layer ``f``."""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._adjoint import AbstractAdjoint, ImplicitAdjoint
from ._cache import FixedPointCache
from ._control import LoopControl, meets_tolerance, residual_norms
from ._driver import failure_message, make_control, solve
from ._errors import DeqConfigError, DeqInputError, DeqSolveError, UnknownNameError
from ._jacobian import jacobian_frobenius
from ._loop import run_loop
from ._resolve import resolve_adjoint, resolve_solver
from ._solution import Result, Solution, SolveStats
from ._solver import AbstractFixedPointSolver
from ._state import State, StateLayout, flat_map
from ._validate import check_bool, check_int
from .nn._norm import frozen_weights

__all__ = ["CALL_OPTIONS", "DEQ", "DEQInfo"]

CALL_OPTIONS = ("atol", "rtol", "max_steps", "check_every", "divergence", "on_failure")
"""What ``DEQ.forward(x, options=...)`` may override for one call."""
_ON_FAILURE = ("raise", "mask")



class _dynamo_disabled:  # noqa: N801 - used as a decorator
    """``torch.compiler.disable`` applied to a method once ``torch._dynamo`` is loaded, not at import: importing
    dynamo (and sympy with it) costs more than importing torch, and only a program that compiles needs it, by
    which time dynamo is loaded. Until then the plain method is returned."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.disabled = fn, None
        functools.update_wrapper(self, fn)

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        fn = self.fn
        if "torch._dynamo" in sys.modules:
            if self.disabled is None:
                self.disabled = torch.compiler.disable(self.fn)
            fn = self.disabled
        return fn if obj is None else fn.__get__(obj, objtype)

@dataclass
class DEQInfo:
    """What a DEQ forward reports besides ``z*``.

    Attributes:
        result: :class:`Result` of the forward solve.
        stats: :class:`SolveStats` (per-sample steps, residuals, trace, f-evaluations).
        warm: the solve started from the ``reuse`` cache.
        jac_loss: Hutchinson estimate of ``||df/dz||_F^2 / N`` (only when ``jac_reg_probes > 0`` and training),
            add ``c * jac_loss`` to the training loss.
        trajectory: with ``DEQ(..., trajectory=k)``: ``k`` states along the forward solve, ``f`` applied to the
            detached iterates at steps ``round(j * s_i / k)``, ``j = 1..k`` (``s_i``: sample ``i``'s steps), each
            carrying the gradient of that one application (DEQ-Flow's fixed-point correction: put a loss on
            every one). ``None`` otherwise, and on amortized (``reuse_steps``) calls.
        spectral_radius: with ``DEQ(..., diagnostics=True)``: ``(B,)`` power-iteration estimates of the spectral
            radius of ``df/dz`` at ``z*`` (:func:`deq_core.spectral_radius`; ``< 1``: locally contractive).
        failed: ``(B,)`` bool, samples whose input or solve was non-finite or diverged; with
            ``on_failure="mask"`` their rows of ``z*`` are detached (their best finite iterate, no gradient):
            drop them from the loss, e.g. ``loss = per_sample_loss[~info.failed].mean()``.
    """

    result: Result
    stats: SolveStats
    warm: bool = False
    jac_loss: Tensor | None = None
    trajectory: list[State] | None = None
    spectral_radius: Tensor | None = None

    @property
    def failed(self) -> Tensor:
        return self.stats.failed


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
        check_every: look at the per-sample flags on the host every this many steps (see ``fixed_point``).
        on_failure: ``"raise"`` (default): a non-finite input (:class:`DeqInputError`) or a sample that turns
            non-finite or diverges (:class:`DeqSolveError`, naming exactly those samples) raises.
            ``"mask"``: such samples come back detached and flagged in ``info.failed`` (the other samples
            are solved to their own tolerance and carry gradients as usual), so a training loop can drop
            them from the loss and keep going. Needs ``x`` to be a tensor or a tuple of tensors with the
            batch first (the gradient path is rebuilt on the healthy rows only).
        sync_ranks: under ``torch.distributed``, every rank takes the same number of solver steps (forward and
            implicit backward; one all-reduce every ``check_every`` steps): the setting sharded training
            (FSDP, whose ``f`` runs collectives) needs so that ranks needing different step counts do not
            deadlock.
        trajectory: ``k > 0`` returns ``k`` states along the solve in ``info.trajectory``, each with the
            gradient of one application of ``f`` (trajectory supervision, DEQ-Flow's fixed-point correction).
        diagnostics: ``True`` (or a number of power iterations, default 30) puts a spectral-radius estimate of
            ``df/dz`` at ``z*`` into ``info.spectral_radius`` (costs that many VJPs per call; opt-in).
        compile_f: ``True`` (or a dict of ``torch.compile`` options) runs ``torch.compile(f)`` inside the solve
            loop and the adjoint. The loop itself stays eager (it is host-driven), and ``forward`` is excluded
            from an outer ``torch.compile``, so a compiled model containing a ``DEQ`` graph-breaks around it
            instead of re-tracing the loop for every batch; gradients are those of eager mode.
        cache: a :class:`deq_core.FixedPointCache` sized to the data set: ``deq(x, index=idx)`` warm-starts each
            sample (forward and implicit backward) from its own last solution, across epochs.

    Per-call overrides: ``deq(x, options=dict(rtol=1e-2, max_steps=10))`` (keys: ``CALL_OPTIONS``), never by
    mutating attributes.

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
                 check_every: int = 1, on_failure: str = "raise", sync_ranks: bool = False,
                 cache: FixedPointCache | None = None, trajectory: int = 0,
                 compile_f: bool | dict[str, Any] = False, diagnostics: bool | int = False) -> None:
        super().__init__()
        self.f = f
        self.solver = resolve_solver(solver)
        self.adjoint = resolve_adjoint(adjoint)
        make_control(atol, rtol, max_steps, check_every, owner="DEQ", sync_ranks=sync_ranks)
        for name, v in (("eval_max_steps", eval_max_steps), ("reuse_steps", reuse_steps)):
            if v is not None:
                check_int("DEQ", name, v, 0)
        check_int("DEQ", "jac_reg_probes", jac_reg_probes, 0)
        check_int("DEQ", "trajectory", trajectory, 0)
        self.trajectory = trajectory
        if not isinstance(compile_f, (bool, dict)):
            raise DeqConfigError(f"DEQ.compile_f must be a bool or a dict of torch.compile options, got {compile_f!r}")
        self.compile_f = compile_f
        if not isinstance(diagnostics, (bool, int)) or (not isinstance(diagnostics, bool) and diagnostics < 2):
            raise DeqConfigError(f"DEQ.diagnostics must be a bool or a number of power iterations >= 2, "
                                 f"got {diagnostics!r}")
        self.diagnostics = diagnostics
        self._f_compiled: Any = None
        _check_on_failure(on_failure)
        _check_adjoint_fits(self.adjoint, mask=on_failure == "mask", amortized=reuse and reuse_steps is not None)
        self.atol, self.rtol, self.max_steps = atol, rtol, max_steps
        self.eval_max_steps = max_steps if eval_max_steps is None else eval_max_steps
        check_bool("DEQ", "reuse", reuse)
        check_bool("DEQ", "strict", strict)
        self.reuse, self.reuse_steps, self.strict = reuse, reuse_steps, strict
        self.jac_reg_probes, self.check_every, self.on_failure = jac_reg_probes, check_every, on_failure
        self.sync_ranks = sync_ranks
        if cache is not None and not isinstance(cache, FixedPointCache):
            raise DeqConfigError(f"DEQ.cache must be a FixedPointCache or None, got {type(cache).__name__}")
        self.cache = cache
        self._cache: dict[Hashable, State] = {}

    def config(self) -> dict[str, Any]:
        """The hyperparameters as JSON-friendly values (stored in checkpoints)."""
        return {
            "solver": self.solver.name, "solver_options": {k: _plain(v) for k, v in self.solver.options().items()},
            "adjoint": None if self.adjoint is None else self.adjoint.name,
            "adjoint_options": {k: _plain(v) for k, v in (self.adjoint.options() if self.adjoint else {}).items()},
            "atol": self.atol, "rtol": self.rtol,
            "max_steps": self.max_steps, "eval_max_steps": self.eval_max_steps, "reuse": self.reuse,
            "reuse_steps": self.reuse_steps, "jac_reg_probes": self.jac_reg_probes, "on_failure": self.on_failure,
            "sync_ranks": self.sync_ranks,
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

    @_dynamo_disabled  # the solve loop is host-driven: dynamo would re-trace it for every batch
    def forward(self, x: Any, z0: State | None = None, *, cache_key: Hashable = None,
                options: dict[str, Any] | None = None, index: Tensor | None = None) -> tuple[State, DEQInfo]:
        """Solve ``z* = f(z*, x)``; returns ``(z*, DEQInfo)``.

        Arguments:
            x: the input ``f`` is applied with (any object; a tensor or tuple of tensors with the batch first
                for ``on_failure="mask"``).
            z0: initial state (default: the ``reuse`` cache, else ``f.init_state(x)``, else zeros like ``x``).
            cache_key: names the warm-start slot of ``reuse``.
            index: ``(B,)`` dataset indices of the batch, for the per-sample ``cache``: seen samples start at
                their own cached fixed point (and backward solution), and this call's results are cached.
            options: per-call overrides of ``atol``, ``rtol``, ``max_steps`` (the budget of this call, in
                either mode), ``check_every``, ``divergence``, ``on_failure``.
        """
        opts = self._call_options(options)
        warm = False
        if z0 is None and self.reuse and cache_key in self._cache:
            cached, z_init = self._cache[cache_key], self.initial_state(x)
            # a cached point of another batch size / shape (e.g. the last, smaller batch) is not reused
            if StateLayout.of(cached, "cache") == StateLayout.of(z_init, "z0"):
                z0, warm = cached, True
            else:
                z0 = z_init
        hits = None
        if index is not None and self.cache is None:
            raise DeqConfigError("DEQ.forward got index= but the DEQ has no cache; build it with "
                                 "DEQ(..., cache=FixedPointCache(len(dataset)))")
        if z0 is None:
            z0 = self.initial_state(x)
            if index is not None:
                z0, hits = self.cache.get(index, z0)
                warm = bool(hits.any())
        budget = opts.get("max_steps", self.max_steps if self.training else self.eval_max_steps)
        amortized = warm and self.reuse_steps is not None
        if amortized:
            budget = self.reuse_steps
        control = make_control(opts.get("atol", self.atol), opts.get("rtol", self.rtol), budget,
                               opts.get("check_every", self.check_every), opts.get("divergence", 1e6), owner="DEQ",
                               sync_ranks=self.sync_ranks)
        mask = opts.get("on_failure", self.on_failure) == "mask"
        if mask and self.on_failure != "mask":
            _check_adjoint_fits(self.adjoint, mask=True, amortized=False)
        throw_budget = self.strict and not amortized
        if amortized and not getattr(self.adjoint, "needs_forward_graph", False):
            with frozen_weights(self.f):
                value, result, stats = self._amortized(x, z0, control, mask)
                jac_loss = self._jac_loss(x, value, stats.failed if mask else None)
            self._cache[cache_key] = _detach(value)
            return value, DEQInfo(result, stats, True, jac_loss)
        with frozen_weights(self.f):
            adjoint = None if mask else self.adjoint
            extra = self._adjoint_cache(index, z0) if adjoint is not None else None
            recorder = _Recorder(self.solver) if self.trajectory else None
            if recorder is not None:
                recorder.layout = StateLayout.of(z0, "z0")
            layer = self._layer()
            sol = solve(lambda z: layer(z, x), z0, recorder or self.solver, adjoint, control, throw=False,
                        input_errors=not mask,
                        adjoint_init=None if extra is None else extra.pop("init"), adjoint_options=extra)
            failed = sol.stats.failed
            if not mask and (sol.result in (Result.DIVERGED, Result.NONFINITE)
                             or (throw_budget and sol.result is Result.MAX_STEPS)):
                raise DeqSolveError(failure_message(sol.result, sol.stats), sol)
            if mask and throw_budget and bool((sol.stats.status == Result.MAX_STEPS.code).any()):
                raise DeqSolveError(failure_message(Result.MAX_STEPS, sol.stats), sol)
            value = sol.value
            if mask:
                value = self._attach_healthy(x, sol.value, failed, control)
            jac_loss = self._jac_loss(x, value, failed if mask else None)
            traj = None if recorder is None else self._trajectory(x, recorder, sol.stats.steps,
                                                                  failed if mask else None)
        if self.reuse:
            self._cache[cache_key] = _detach(value)
        if index is not None:
            self.cache.put(index, _detach(value), rows=~failed)
        rho = self._spectral_radius(x, value) if self.diagnostics else None
        return value, DEQInfo(sol.result, sol.stats, warm, jac_loss, traj, rho)

    def _spectral_radius(self, x: Any, value: State) -> Tensor:
        from ._diagnostics import spectral_radius

        layout = StateLayout.of(value, "z")
        g = flat_map(lambda z: self.f(z, x), layout, check=False)
        iters = 30 if self.diagnostics is True else int(self.diagnostics)
        with torch.enable_grad():
            return spectral_radius(g, layout.pack(_detach(value)), iters=iters)

    def _trajectory(self, x: Any, recorder: _Recorder, steps: Tensor, failed: Tensor | None) -> list[State]:
        """``k`` states along the solve: ``f`` at the detached iterate of step ``round(j * s_i / k)`` per sample."""
        zs = torch.stack(recorder.stop())                             # (T + 1, B, N), detached iterates
        k, B = self.trajectory, zs.shape[1]
        j = torch.arange(1, k + 1, device=zs.device, dtype=torch.float64)[:, None]
        at = torch.round(j * steps.to(device=zs.device, dtype=torch.float64)[None, :] / k).long()
        picked = zs.gather(0, at.clamp_max(zs.shape[0] - 1)[:, :, None].expand(k, B, zs.shape[2]))
        layout = recorder.layout
        rows, xs = None, x
        if failed is not None and bool(failed.any()):
            rows = (~failed).nonzero().flatten()
            xs = _rows(x, rows, B)
        sub = layout if rows is None else layout.with_batch(rows.numel())
        return [self.f(sub.unpack((t if rows is None else t[rows]).detach()), xs) for t in picked]

    def _adjoint_cache(self, index: Tensor | None, like: State) -> dict[str, Any] | None:
        """``ImplicitAdjoint`` keywords that warm-start the backward solve per sample from the cache."""
        if index is None or not self.cache.adjoint or not isinstance(self.adjoint, ImplicitAdjoint):
            return None
        if not torch.is_grad_enabled():
            return None
        layout = StateLayout.of(like, "z0")
        u0, rows = self.cache.get(index, _detach(like), slot="adjoint")
        cache, idx = self.cache, index

        def keep(u: Tensor) -> None:
            cache.put(idx, layout.unpack(u.detach()), slot="adjoint")

        return {"init": u0 if bool(rows.any()) else None, "warm_rows": rows, "keep": keep}

    def _call_options(self, options: dict[str, Any] | None) -> dict[str, Any]:
        if options is None:
            return {}
        if not isinstance(options, dict):
            raise DeqConfigError(f"DEQ options must be a dict, got {type(options).__name__}")
        for key in options:
            if key not in CALL_OPTIONS:
                raise UnknownNameError("DEQ call option", key, CALL_OPTIONS)
        if "on_failure" in options:
            _check_on_failure(options["on_failure"])
        return options

    def _attach_healthy(self, x: Any, value: State, failed: Tensor, control: LoopControl) -> State:
        """``on_failure="mask"``: the adjoint's gradient path on the healthy rows only (failed rows detached;
        their ``f`` may be non-finite, and a VJP through it would poison every parameter gradient)."""
        if self.adjoint is None or not torch.is_grad_enabled():
            return value
        layout = StateLayout.of(value, "z")
        flat = layout.pack(value).detach()
        healthy = (~failed).nonzero().flatten()
        if healthy.numel() == layout.batch:
            g = flat_map(lambda z: self.f(z, x), layout, check=False)
            return layout.unpack(self.adjoint.attach(g, flat, solver=self.solver, control=control))
        if healthy.numel() == 0:
            return layout.unpack(flat)
        x_sub = _rows(x, healthy, layout.batch)
        g = flat_map(lambda z: self.f(z, x_sub), layout.with_batch(healthy.numel()), check=False)
        attached = self.adjoint.attach(g, flat[healthy], solver=self.solver, control=control)
        return layout.unpack(flat.index_put((healthy,), attached))

    def _jac_loss(self, x: Any, value: State, failed: Tensor | None = None) -> Tensor | None:
        if not (self.jac_reg_probes and self.training and torch.is_grad_enabled()):
            return None
        layout = StateLayout.of(value, "z")
        flat = layout.pack(value)
        if failed is not None and bool(failed.any()):
            healthy = (~failed).nonzero().flatten()
            if healthy.numel() == 0:
                return None
            x = _rows(x, healthy, layout.batch)
            layout = layout.with_batch(healthy.numel())
            flat = flat[healthy]
        g = flat_map(lambda z: self.f(z, x), layout, check=False)
        return jacobian_frobenius(g, flat, probes=self.jac_reg_probes)

    def _amortized(self, x: Any, z0: State, control: LoopControl, mask: bool) -> tuple[State, Result, SolveStats]:
        """Warm-started forward (``reuse_steps = k``): ``k - 1`` solver steps of the one loop without a graph,
        then one application of ``f`` whose output is returned and carries the adjoint's gradient (``k = 0``:
        the cached point itself, with gradients through one application of ``f``). With ``k = 1`` this is
        Implicit²'s amortized step, ``z_t = f(z_{t-1}; x)``: one ``f`` evaluation with graph plus the
        adjoint's VJPs. Statistics: residual ``||f(z) - z||`` at the point where ``f`` was applied."""
        layout = StateLayout.of(z0, "z0")
        layer = self._layer()
        g = flat_map(lambda z: layer(z, x), layout)
        z = layout.pack(z0).detach()
        k = self.reuse_steps
        inner = dataclasses.replace(control, max_steps=max(k - 1, 0), record_trace=False)
        nfev, steps, status = 0, torch.zeros(layout.batch, dtype=torch.long, device=z.device), None
        if k > 1:
            with torch.no_grad():
                out = run_loop(self.solver, g, z, g(z), inner)
            z, nfev, steps, status = out.z, out.nfev + 1, out.steps, out.status
        captured: list[Tensor] = []

        def g_capture(t: Tensor) -> Tensor:
            out = g(t)
            captured.append(out)
            return out

        if self.adjoint is not None and torch.is_grad_enabled():
            value = self.adjoint.attach(g_capture, z, solver=self.solver, control=inner)
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
        converged = meets_tolerance(res, fnorm, control.atol, control.rtol)
        finite = torch.isfinite(res) & torch.isfinite(fnorm)
        code = torch.where(converged, Result.CONVERGED.code, torch.where(finite, Result.MAX_STEPS.code,
                                                                         Result.NONFINITE.code)).to(torch.int8)
        if status is not None:
            code = torch.maximum(code, torch.where(status >= Result.DIVERGED.code, status, 0).to(torch.int8))
        result = Result.from_code(int(code.max()))
        stats = SolveStats(steps=steps, residual=res, rel_residual=res / fnorm.clamp_min(torch.finfo(fnorm.dtype).tiny),
                           converged=converged, trace=res.new_zeros(0, res.numel()), nfev=nfev,
                           solver={"name": self.solver.name, "amortized": True}, status=code)
        if result in (Result.NONFINITE, Result.DIVERGED):
            if not mask:
                raise DeqSolveError(failure_message(result, stats), Solution(layout.unpack(value), result, stats))
            # failed rows: their last point, detached; the adjoint attached again on the healthy rows alone (a VJP
            # through a failed row's non-finite f, even with a zero cotangent, would make every gradient nan)
            failed = stats.failed
            value = layout.pack(self._attach_healthy(x, layout.unpack(z), failed, inner))
            if k >= 1:
                value = torch.where(failed[:, None], value, value + (fz - value.detach()))
        return layout.unpack(value), result, stats

    def _layer(self) -> Any:
        """``f``, or its compiled version with ``compile_f``."""
        if not self.compile_f:
            return self.f
        if self._f_compiled is None:
            opts = self.compile_f if isinstance(self.compile_f, dict) else {}
            # in __dict__, not registered as a submodule: the state dict must not hold f's parameters twice
            self.__dict__["_f_compiled"] = torch.compile(self.f, **opts)
        return self._f_compiled

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = {}
        state["_f_compiled"] = None
        return state


class _Recorder:
    """Drives ``inner`` unchanged and keeps every iterate (detached) for ``DEQ(trajectory=k)``."""

    def __init__(self, inner: AbstractFixedPointSolver) -> None:
        self.inner, self.name, self.zs, self.on, self.layout = inner, inner.name, [], True, None

    def init(self, f, z, fz):
        if self.on:
            self.zs = [z.detach()]
        return self.inner.init(f, z, fz)

    def step(self, f, z, fz, state):
        z, fz, state = self.inner.step(f, z, fz, state)
        if self.on:
            self.zs.append(z.detach())
        return z, fz, state

    def terminate(self, z, fz, res, fnorm, state, control):
        return self.inner.terminate(z, fz, res, fnorm, state, control)

    def postprocess(self, outcome, state):
        return self.inner.postprocess(outcome, state)

    def stats(self, state):
        return self.inner.stats(state)

    def stop(self) -> list[Tensor]:
        """The recorded iterates; recording stops (a later backward solve through this object keeps none)."""
        self.on = False
        zs, self.zs = self.zs, []
        return zs


def _check_on_failure(value: object) -> None:
    if value not in _ON_FAILURE:
        raise DeqConfigError(f"DEQ.on_failure must be one of {', '.join(map(repr, _ON_FAILURE))}, got {value!r}")


def _check_adjoint_fits(adjoint: AbstractAdjoint | None, *, mask: bool, amortized: bool) -> None:
    """Refuse adjoints that cannot work in a mode: under ``on_failure="mask"`` the adjoint is attached after the
    solve on the healthy rows only, so it can neither backpropagate through the forward iterations nor reuse the
    solver's state; an amortized call (``reuse_steps``) has no forward solve state either."""
    if adjoint is None:
        return
    name = type(adjoint).__name__
    if mask and adjoint.needs_forward_graph:
        raise DeqConfigError(f"DEQ(on_failure='mask') cannot train through {name}, which backpropagates through the "
                             "forward iterations (a failed sample's nan would reach every gradient); use "
                             "on_failure='raise' or an adjoint that attaches after the solve (implicit, neumann, "
                             "phantom)")
    if adjoint.needs_forward_state and (mask or amortized):
        mode = "on_failure='mask'" if mask else "reuse_steps (the amortized forward runs no full solve)"
        raise DeqConfigError(f"{name} needs the forward solver's final state, which {mode} does not keep; use "
                             "an adjoint that needs only z* (implicit, neumann, phantom)")


def _rows(x: Any, index: Tensor, batch: int) -> Any:
    """The rows ``index`` of an input: a tensor with the batch first, or a tuple / list of such (other
    leaves are passed through unchanged)."""
    if isinstance(x, Tensor):
        if x.dim() == 0 or x.shape[0] != batch:
            raise DeqInputError(
                f"on_failure='mask' needs x with the batch ({batch}) first, got a tensor of shape {tuple(x.shape)}")
        return x[index]
    if isinstance(x, (tuple, list)):
        return type(x)(_rows(t, index, batch) if isinstance(t, Tensor) else t for t in x)
    raise DeqInputError(f"on_failure='mask' needs x to be a tensor or a tuple of tensors, got {type(x).__name__}")


def _detach(state: State) -> State:
    return tuple(t.detach() for t in state) if isinstance(state, tuple) else state.detach()


def _plain(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)
