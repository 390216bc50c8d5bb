"""``check_solver``: the conformance test every fixed-point solver (ours and third-party) runs."""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, given, settings
from torch import Tensor

from .._adjoint import ImplicitAdjoint
from .._errors import DeqInputError, DeqSolveError
from .._fixed_point import fixed_point
from .._resolve import resolve_solver
from .._solution import Result, Solution
from .._solver import AbstractFixedPointSolver
from .._state import State
from ._profiles import example_budget
from ._strategies import Contraction, _parts, contractions, make_contraction, no_fixed_point_maps

__all__ = ["DEFAULT_TOLERANCES", "check_solver"]

DEFAULT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-6, 1e-4),
    torch.float64: (1e-10, 1e-8),
}
"""``{dtype: (atol, rtol)}`` that :func:`check_solver` asks for unless told otherwise."""


def check_solver(solver: AbstractFixedPointSolver | str, *,
                 dtype: torch.dtype | Sequence[torch.dtype] = (torch.float32, torch.float64),
                 max_examples: int = 20, max_steps: int = 500, atol: float | None = None, rtol: float | None = None,
                 rho: tuple[float, float] = (0.05, 0.9), device: torch.device | str = "cpu",
                 gradients: bool = True) -> None:
    """Assert that ``solver`` behaves as :func:`deq_core.fixed_point` promises; raise ``AssertionError`` if not.

    Checks, for each dtype in ``dtype`` (float32 and/or float64):

    1. **Accuracy** (Hypothesis, ``max_examples`` drawn problems): on affine and tanh ``rho``-contractions
       (``rho`` drawn from ``rho``) with states ``(B, N)``, ``(B, C, H, W)`` and tuples of both, the solve
       through ``fixed_point`` converges within ``max_steps``; the returned value has ``z0``'s structure,
       shapes, dtype and device; its residual ``||f(z) - z||``, recomputed here, is within
       ``atol + rtol * ||f(z)||``; its distance to the float64 reference fixed point is within
       ``residual / (1 - rho)`` (plus rounding); ``stats`` has per-sample ``steps`` in ``[0, max_steps]``,
       ``residual`` matching the recomputed one, ``converged``, a ``(T, B)`` trace and
       ``nfev >= max(steps) + 1``.
    2. **No in-place writes**: ``z0``, and every tensor handed to or returned by ``f``, keep their values
       and version counters.
    3. **Per-sample convergence**: a sample that starts at its fixed point takes 0 steps and is returned
       unchanged; a sample that converges early is returned as it was at its convergence step (it is
       not iterated further), samples take different step counts.
    4. **Budget**: a too-small ``max_steps`` gives ``Result.MAX_STEPS`` (``DeqSolveError`` with ``throw=True``).
    5. **Non-finite values**: nan / inf in ``f`` during the solve gives ``Result.NONFINITE``
       (``DeqSolveError`` with ``throw=True``); nan in ``z0`` or ``f(z0)`` gives ``DeqInputError``.
    6. **Gradients** (``gradients=True``, float64): ``ImplicitAdjoint(solver)`` (the backward linear fixed
       point solved by this solver) matches the dense ``(I - A)^{-T}`` gradient to ``1e-6``.
    7. The solver object is a dataclass that survives ``copy.deepcopy`` and ``pickle`` unchanged.

    Arguments:
        solver: the solver object (or a registered name) to check, with the hyperparameters to test.
        dtype: a float dtype or a sequence of them.
        max_examples: Hypothesis examples per dtype for check 1, times ``EXPLORE_FACTOR`` under the
            ``explore`` profile (the active profile supplies the rest: derandomization, database).
        max_steps: solver budget; the default suits damped Picard up to ``rho = 0.9``.
        atol, rtol: tolerances to ask for (default: :data:`DEFAULT_TOLERANCES` per dtype).
        rho: range of contraction factors drawn.
        device: where problems live (``"cuda"`` for GPU solvers).
        gradients: also run check 6.

    Raises:
        AssertionError: with the failed property, the problem (kind, shapes, rho, dtype, seed) and stats.

    Example:
        >>> import torch
        >>> from deq_core import FixedPointIteration
        >>> from deq_core.testing import check_solver
        >>> check_solver(FixedPointIteration(damping=0.8), dtype=torch.float64, max_examples=5)

        A third-party plugin's test module needs only::

            def test_conformance():
                check_solver(MySolver(m=5))
    """
    solver = resolve_solver(solver)
    dtypes = [dtype] if isinstance(dtype, torch.dtype) else list(dtype)
    for dt in dtypes:
        if dt not in DEFAULT_TOLERANCES:
            raise ValueError(f"check_solver supports dtypes {list(DEFAULT_TOLERANCES)}, got {dt}")
    if not isinstance(max_examples, int) or max_examples < 1:
        raise ValueError(f"max_examples must be an int >= 1, got {max_examples!r}")
    _check_object(solver)
    for dt in dtypes:
        a, r = DEFAULT_TOLERANCES[dt]
        opts = _Options(solver, dt, a if atol is None else atol, r if rtol is None else rtol, max_steps, device)
        _check_accuracy(opts, rho, max_examples)
        _check_per_sample(opts)
        _check_budget(opts)
        _check_nonfinite(opts)
        _check_no_fixed_point(opts)
        if gradients and dt == torch.float64:
            _check_gradients(opts)


@dataclasses.dataclass(frozen=True)
class _Options:
    solver: AbstractFixedPointSolver
    dtype: torch.dtype
    atol: float
    rtol: float
    max_steps: int
    device: torch.device | str

    def solve(self, f: Callable[[State], State], z0: State, **kw: Any) -> Solution:
        kw = {"atol": self.atol, "rtol": self.rtol, "max_steps": self.max_steps, "throw": False,
              "adjoint": None, **kw}
        return fixed_point(f, z0, solver=self.solver, **kw)

    @property
    def eps(self) -> float:
        return torch.finfo(self.dtype).eps


def _fail(what: str, problem: object, sol: Solution | None = None, detail: str = "") -> AssertionError:
    msg = f"check_solver: {what}\n  problem: {problem!r}"
    if sol is not None:
        msg += f"\n  result: {sol.result.name} ({sol.result.message})\n  stats: {sol.stats.summary()}"
    if detail:
        msg += f"\n  {detail}"
    return AssertionError(msg)


def _check_object(solver: AbstractFixedPointSolver) -> None:
    params = vars(type(solver)).get("__dataclass_params__")  # set by @dataclass on the class itself
    if params is None or not params.frozen:
        raise _fail("the solver class must be decorated with @dataclasses.dataclass(frozen=True)", solver)
    for name, clone in (("copy.deepcopy", copy.deepcopy(solver)), ("pickle", pickle.loads(pickle.dumps(solver)))):
        if clone != solver or type(clone) is not type(solver):
            raise _fail(f"the solver changed in a {name} round trip", solver, detail=f"got {clone!r}")
    if not isinstance(solver.options(), dict):
        raise _fail("solver.options() must return a dict", solver)


class _Watch:
    """Wraps ``f``: remembers every tensor handed to / returned by it with its version counter."""

    def __init__(self, f: Callable[[State], State]) -> None:
        self.f, self.seen = f, []

    def __call__(self, z: State) -> State:
        out = self.f(z)
        for kind, state in (("input", z), ("output", out)):
            for t in _parts(state):
                self.seen.append((kind, t, t._version, t.detach().clone()))
        return out

    def check(self, problem: object) -> None:
        for kind, t, version, value in self.seen:
            if t._version != version or not torch.equal(t.detach(), value):
                raise _fail(f"a tensor the solver {'passed to' if kind == 'input' else 'got from'} f was modified "
                            "in place afterwards (steps must not write into z or f(z))", problem)


def _clone(z: State) -> State:
    return tuple(t.clone() for t in z) if isinstance(z, tuple) else z.clone()


def _same_structure(a: State, b: State) -> bool:
    if isinstance(a, tuple) != isinstance(b, tuple):
        return False
    pa, pb = _parts(a), _parts(b)
    return len(pa) == len(pb) and all(
        x.shape == y.shape and x.dtype == y.dtype and x.device == y.device for x, y in zip(pa, pb))


def _check_accuracy(opts: _Options, rho: tuple[float, float], max_examples: int) -> None:
    # no shrinking: a failing solver would be re-run on hundreds of problems; the message names the seed
    @settings(settings(), max_examples=example_budget(max_examples), deadline=None,
              suppress_health_check=list(HealthCheck), phases=(Phase.explicit, Phase.reuse, Phase.generate),
              report_multiple_bugs=False)
    @given(contractions(opts.dtype, rho=rho, device=opts.device))
    def accuracy(c: Contraction) -> None:
        _check_problem(opts, c)

    accuracy()


def _check_problem(opts: _Options, c: Contraction) -> None:
    z0_copy, z0_versions = _clone(c.z0), [t._version for t in _parts(c.z0)]
    watch = _Watch(c.f)
    sol = opts.solve(watch, c.z0)
    # inputs untouched
    if [t._version for t in _parts(c.z0)] != z0_versions or not all(
            torch.equal(a, b) for a, b in zip(_parts(c.z0), _parts(z0_copy))):
        raise _fail("z0 was modified in place", c, sol)
    watch.check(c)
    if sol.result is not Result.CONVERGED:
        raise _fail(f"did not converge within max_steps={opts.max_steps}", c, sol)
    if not _same_structure(sol.value, c.z0):
        raise _fail("the solution does not have z0's structure, shapes, dtype and device", c, sol)
    _check_stats(opts, c, sol)
    # residual measured here, on the returned value
    value = sol.value
    res, fn, zn = c.residual(value), c.fnorm(value), torch.linalg.vector_norm(c.flat(value), dim=1)
    rounding = 4 * opts.eps * (fn + zn)
    tol = opts.atol + opts.rtol * fn
    if not bool((res <= tol * (1 + 1e-3) + rounding).all()):
        raise _fail("the returned value does not meet atol + rtol * ||f(z)|| (recomputed residual)", c, sol,
                    f"residual {res.tolist()} vs tolerance {tol.tolist()}")
    reported = sol.stats.residual.to(torch.float64).cpu()
    if not bool(((reported - res.cpu()).abs() <= 1e-3 * res.cpu() + 2 * rounding.cpu()).all()):
        raise _fail("stats.residual is not ||f(z) - z|| of the returned value", c, sol,
                    f"reported {reported.tolist()} vs recomputed {res.tolist()}")
    # distance to the reference fixed point
    n = c.flat(value).shape[1]
    eval_err = 8 * opts.eps * n * (1 + zn + fn)  # rounding of f itself in dtype
    err, bound = c.error(value), c.error_bound(res + eval_err) * (1 + 1e-6)
    if not bool((err <= bound).all()):
        raise _fail("the returned value is farther from the reference fixed point than residual / (1 - rho)", c,
                    sol, f"error {err.tolist()} vs bound {bound.tolist()}")


def _check_stats(opts: _Options, c: Contraction, sol: Solution) -> None:
    s, b = sol.stats, c.batch
    for name in ("steps", "residual", "rel_residual", "converged"):
        t = getattr(s, name)
        if not isinstance(t, Tensor) or tuple(t.shape) != (b,):
            raise _fail(f"stats.{name} must be a ({b},) tensor", c, sol, f"got {t!r}")
    if s.steps.dtype not in (torch.int32, torch.int64) or s.converged.dtype != torch.bool:
        raise _fail("stats.steps must be an int tensor and stats.converged a bool tensor", c, sol)
    if int(s.steps.min()) < 0 or int(s.steps.max()) > opts.max_steps:
        raise _fail(f"stats.steps must lie in [0, max_steps={opts.max_steps}]", c, sol, f"got {s.steps.tolist()}")
    if not bool(s.converged.all()):
        raise _fail("result is CONVERGED but stats.converged is not all True", c, sol)
    if not isinstance(s.nfev, int) or s.nfev < int(s.steps.max()) + 1:
        raise _fail("stats.nfev must count f(z0) and at least one evaluation per step", c, sol)
    if s.trace.dim() != 2 or s.trace.shape[1] != b:
        raise _fail(f"stats.trace must be (T, {b})", c, sol, f"got shape {tuple(s.trace.shape)}")


def _flat_problem(opts: _Options, seed: int, rho: float = 0.8, batch: int = 4, n: int = 8,
                  kind: str = "affine") -> Contraction:
    return make_contraction(kind, [(batch, n)], rho=rho, seed=seed, dtype=opts.dtype, device=opts.device)


def _check_per_sample(opts: _Options) -> None:
    c = _flat_problem(opts, seed=1234, rho=0.8)
    z_star = c.z_star.to(opts.dtype)
    z0 = c.z0.clone()
    z0[0] = z_star[0]                                    # starts at its fixed point
    z0[1] = z_star[1] * (1 + 30 * opts.rtol)             # starts close: converges early
    problem = f"{c!r} with sample 0 starting at z*, sample 1 close to it"
    if not bool(c.residual(z0)[0] <= opts.atol + opts.rtol * c.fnorm(z0)[0]):  # pragma: no cover - sanity
        raise AssertionError("check_solver internal error: the reference does not meet the tolerance")
    sol = opts.solve(c.f, z0)
    if sol.result is not Result.CONVERGED:
        raise _fail("did not converge", problem, sol)
    steps = sol.stats.steps.cpu()
    if int(steps[0]) != 0 or not torch.equal(sol.value[0], z0[0]):
        raise _fail("a sample that meets the tolerance at z0 must take 0 steps and be returned unchanged",
                    problem, sol, f"steps {steps.tolist()}")
    if not int(steps[1]) < int(steps[2:].max()):
        raise _fail("a sample that starts close to its fixed point must stop before the others (per-sample "
                    "convergence)", problem, sol, f"steps {steps.tolist()}")
    # the early sample is frozen: stopping the whole solve at its step gives the same value for it
    again = opts.solve(c.f, z0, max_steps=int(steps[1]))
    scale = float(torch.linalg.vector_norm(z_star[1].double()))
    diff = float(torch.linalg.vector_norm((again.value[1] - sol.value[1]).double()))
    if diff > 1e3 * opts.eps * scale + 1e-3 * opts.atol:
        raise _fail("a converged sample was iterated further (its value changed after its convergence step)",
                    problem, sol, f"|difference| {diff:.3g} vs |z*| {scale:.3g}")


def _check_budget(opts: _Options) -> None:
    c = _flat_problem(opts, seed=99, rho=0.9)
    sol = opts.solve(c.f, c.z0, max_steps=2)
    if sol.result is not Result.MAX_STEPS or int(sol.stats.steps.max()) > 2:
        raise _fail("with max_steps=2 on a rho=0.9 problem the result must be MAX_STEPS after <= 2 steps", c, sol)
    if bool(sol.stats.converged.all()):
        raise _fail("samples reported converged although the budget ran out", c, sol)
    try:
        opts.solve(c.f, c.z0, max_steps=2, throw=True)
    except DeqSolveError:
        pass
    else:
        raise _fail("throw=True must raise DeqSolveError when the budget runs out", c)
    # max_steps=0 only measures z0
    sol0 = opts.solve(c.f, c.z0, max_steps=0)
    if int(sol0.stats.steps.max()) != 0 or not torch.equal(sol0.value, c.z0):
        raise _fail("max_steps=0 must return z0 unchanged with 0 steps", c, sol0)


def _check_nonfinite(opts: _Options) -> None:
    """Fault isolation: sample 0 turns non-finite mid-solve, sample 1 has no fixed point and diverges;
    the others must converge to their reference fixed points, and the failures are named, non-finite first."""
    c = _flat_problem(opts, seed=7, rho=0.8, batch=5)
    for bad in (math.nan, math.inf):
        calls = [0]

        def f(z: Tensor, bad: float = bad, calls: list[int] = calls) -> Tensor:
            calls[0] += 1
            out = c.f(z).clone()
            out[1] = z[1] + 1 + z[1] * z[1]    # no real fixed point: the residual 1 + z^2 never vanishes
            if calls[0] > 5:                   # from the sixth evaluation on, sample 0 is non-finite
                out[0, 0] = bad
            return out

        problem = f"{c!r} with sample 0 turning {bad} at the 6th evaluation and sample 1 without a fixed point"
        sol = opts.solve(f, c.z0)
        status = sol.stats.status.cpu().tolist()
        if sol.result is not Result.NONFINITE or status[0] != Result.NONFINITE.code:
            raise _fail(f"{bad} in f during the solve must give Result.NONFINITE and flag sample 0", problem, sol,
                        f"status {status}")
        if status[1] == Result.CONVERGED.code:
            raise _fail("a sample without a fixed point was reported converged", problem, sol, f"status {status}")
        if any(code != Result.CONVERGED.code for code in status[2:]):
            raise _fail("one failing sample stopped the others: every healthy sample must converge on its own",
                        problem, sol, f"status {status}")
        value = sol.value
        if not bool(torch.isfinite(value).all()):
            raise _fail("failed samples must be frozen at a finite iterate", problem, sol)
        healthy = value[2:]
        res = c.residual(value)[2:]
        err = c.error(value)[2:]
        eval_err = 8 * opts.eps * healthy.shape[1] * (1 + c.fnorm(value)[2:])
        if not bool((err <= c.error_bound(res + eval_err)[2:] * (1 + 1e-6)).all()):
            raise _fail("a healthy sample next to failing ones is farther from its fixed point than "
                        "residual / (1 - rho)", problem, sol, f"error {err.tolist()}")
        calls[0] = 0
        try:
            opts.solve(f, c.z0, throw=True)
        except DeqSolveError as e:
            msg = str(e)
            if "samples [0] turned non-finite" not in msg or "1" not in msg.split("turned non-finite", 1)[1]:
                raise _fail("the error must name the non-finite sample first, then the diverged one", problem,
                            detail=msg) from None
            for healthy_id in ("sample 2", "sample 3", "sample 4", "[2", "[3", "[4"):
                if healthy_id in msg:
                    raise _fail("the error names a sample that converged", problem, detail=msg) from None
        else:
            raise _fail(f"{bad} in f with throw=True must raise DeqSolveError", problem)
    bad_z0 = c.z0.clone()
    bad_z0[1, 0] = math.nan
    for what, g, z, kw in (("z0", c.f, bad_z0, {}), ("f(z0) with throw=True", lambda z: c.f(z) * math.nan, c.z0,
                                                     {"throw": True})):
        try:
            opts.solve(g, z, **kw)
        except DeqInputError:
            pass
        else:
            raise _fail(f"nan in {what} must raise DeqInputError", c)


def _check_no_fixed_point(opts: _Options) -> None:
    """Maps without a fixed point: no solver may report a sample converged (a residual that never vanishes,
    however large the iterate grows, is not convergence)."""
    for c in no_fixed_point_maps(opts.dtype, opts.device):
        sol = opts.solve(c.f, c.z0, max_steps=max(opts.max_steps, 200))
        if sol.result is Result.CONVERGED or bool(sol.stats.converged.any()):
            raise _fail("reported CONVERGED on a map that has no fixed point", c, sol,
                        f"status {sol.stats.status.tolist()}, residual {sol.stats.residual.tolist()}")


def _check_gradients(opts: _Options) -> None:
    c = _flat_problem(opts, seed=5, rho=0.7, batch=3, n=6)
    gen = torch.Generator().manual_seed(5)
    a = 0.7 * _unit(torch.randn(6, 6, generator=gen, dtype=torch.float64)).to(opts.device)
    b = torch.randn(3, 6, generator=gen, dtype=torch.float64).to(opts.device).requires_grad_()
    w = torch.randn(3, 6, generator=gen, dtype=torch.float64).to(opts.device)
    adjoint = ImplicitAdjoint(opts.solver, atol=1e-13, rtol=1e-11, max_steps=opts.max_steps)
    sol = fixed_point(lambda z: z @ a.T + b, torch.zeros_like(b.detach()), solver=opts.solver, adjoint=adjoint,
                      atol=1e-13, rtol=1e-11, max_steps=opts.max_steps)
    (grad,) = torch.autograd.grad((sol.value * w).sum(), b)
    eye = torch.eye(6, dtype=torch.float64, device=opts.device)
    expected = torch.linalg.solve(eye - a.T, w.T).T  # dL/db = (I - A)^{-T} w
    err = float((grad - expected).abs().max())
    if not err <= 1e-6 * (1 + float(expected.abs().max())):
        raise _fail("ImplicitAdjoint with this solver does not match the dense implicit gradient", c,
                    detail=f"max |error| {err:.3g}")


def _unit(m: Tensor) -> Tensor:
    return m / torch.linalg.matrix_norm(m, ord=2)

