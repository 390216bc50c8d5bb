"""The fixed-point driver: per-sample convergence and freezing, statistics, trace, tuple states, budgets."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deq_core import (
    AbstractFixedPointSolver,
    DeqSolveError,
    FixedPointIteration,
    Result,
    StateLayout,
    fixed_point,
)
from deq_core.testing import Contraction, contractions, example_budget, make_contraction

pytestmark = pytest.mark.usefixtures("core_registry")

F64 = torch.float64


def _affine(batch: int = 4, n: int = 6, rho: float = 0.8, seed: int = 0) -> Contraction:
    return make_contraction("affine", [(batch, n)], rho=rho, seed=seed, dtype=F64)


def _solve(c: Contraction, z0=None, **kw: Any):
    kw = {"atol": 1e-10, "rtol": 1e-8, "max_steps": 500, "adjoint": None, "solver": FixedPointIteration(), **kw}
    return fixed_point(c.f, c.z0 if z0 is None else z0, **kw)


class _CountingF:
    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, z):
        self.calls += 1
        return self.f(z)


# --- per-sample convergence --------------------------------------------------------------------------------


def test_samples_converge_and_freeze_independently() -> None:
    c = _affine()
    z0 = c.z0.clone()
    z0[0] = c.z_star[0]  # already at its fixed point
    sol = _solve(c, z0)
    steps = sol.stats.steps
    assert sol.result is Result.CONVERGED and bool(sol.stats.converged.all())
    assert int(steps[0]) == 0 and torch.equal(sol.value[0], z0[0])
    assert int(steps[1:].min()) > 0 and len(set(steps.tolist())) > 1
    # every sample is returned as it was at its own convergence step
    for i in range(4):
        alone = _solve(c, z0, max_steps=int(steps[i]), throw=False)
        assert torch.equal(alone.value[i], sol.value[i])
    # and meets the tolerance there
    res, fn = c.residual(sol.value), c.fnorm(sol.value)
    assert bool((res <= 1e-10 + 1e-8 * fn).all())
    assert torch.allclose(sol.stats.residual, res, rtol=1e-12, atol=1e-15)


def test_batch_solve_equals_per_sample_solves() -> None:
    c = _affine(batch=3, n=5, seed=3)
    sol = _solve(c)
    for i in range(3):
        single = fixed_point(lambda z, i=i: c.f(torch.cat([c.z0[:i], z, c.z0[i + 1:]]))[i:i + 1],
                             c.z0[i:i + 1], solver=FixedPointIteration(), atol=1e-10, rtol=1e-8, max_steps=500,
                             adjoint=None)
        assert int(single.stats.steps[0]) == int(sol.stats.steps[i])
        assert torch.allclose(single.value[0], sol.value[i], rtol=1e-12, atol=1e-14)


def test_stats_are_consistent() -> None:
    c = _affine(seed=1)
    counted = _CountingF(c.f)
    sol = fixed_point(counted, c.z0, solver=FixedPointIteration(), atol=1e-10, rtol=1e-8, max_steps=500,
                      adjoint=None)
    s = sol.stats
    assert s.steps.dtype == torch.long and s.converged.dtype == torch.bool
    assert s.nfev == counted.calls == int(s.steps.max()) + 1  # f(z0), then one evaluation per Picard step
    fn = c.fnorm(sol.value)
    assert torch.allclose(s.rel_residual, s.residual / fn, rtol=1e-12)
    summary = s.summary()
    assert summary["steps_max"] == int(s.steps.max()) and summary["nfev"] == s.nfev
    assert summary["converged"] == 4 and summary["batch"] == 4 and summary["name"] == "fixed-point"


def test_residual_trace() -> None:
    c = _affine(seed=2)
    sol = _solve(c)
    trace, steps = sol.stats.trace, sol.stats.steps
    assert trace.shape == (int(steps.max()) + 1, 4)
    rel0 = c.residual(c.z0) / c.fnorm(c.z0)
    assert torch.allclose(trace[0], rel0, rtol=1e-10)
    for i in range(4):
        k = int(steps[i])
        assert float(trace[k, i]) < float(trace[k - 1, i]) < float(trace[0, i])  # still going down at the end
        assert bool((trace[k:, i] == sol.stats.rel_residual[i]).all())  # frozen after convergence
    assert _solve(c, record_trace=False).stats.trace.shape == (0, 4)


@given(contractions(F64, shapes=st.just((((3, 4), (3, 2, 2, 1)), True))))
@settings(max_examples=example_budget(10))
def test_tuple_states_match_the_flat_problem(c: Contraction) -> None:
    sol = _solve(c)
    assert isinstance(sol.value, tuple) and [t.shape for t in sol.value] == [t.shape for t in c.z0]
    layout = StateLayout.of(c.z0)
    flat = fixed_point(lambda z: layout.pack(c.f(layout.unpack(z))), layout.pack(c.z0), solver=FixedPointIteration(),
                       atol=1e-10, rtol=1e-8, max_steps=500, adjoint=None)
    assert torch.equal(layout.pack(sol.value), flat.value)
    assert torch.equal(sol.stats.steps, flat.stats.steps)
    assert bool((c.error(sol.value) <= c.error_bound(c.residual(sol.value)) + 1e-13).all())


def test_list_state_is_treated_like_a_tuple() -> None:
    # regression: a list z0 used to be unpacked as one tensor (a reshape error deep inside the loop)
    a, b = torch.randn(2, 3, dtype=F64), torch.randn(2, 4, dtype=F64)
    sol = fixed_point(lambda z: (0.5 * z[0] + 1, 0.25 * z[1]), [a, b], solver=FixedPointIteration(),
                      rtol=1e-10, atol=1e-12, max_steps=200, adjoint=None)
    assert isinstance(sol.value, tuple) and len(sol.value) == 2
    assert torch.allclose(sol.value[0], torch.full((2, 3), 2.0, dtype=F64))
    assert torch.allclose(sol.value[1], torch.zeros(2, 4, dtype=F64), atol=1e-10)


# --- budgets -----------------------------------------------------------------------------------------------


def test_max_steps_zero_only_measures_z0() -> None:
    c = _affine(seed=4)
    counted = _CountingF(c.f)
    sol = fixed_point(counted, c.z0, solver=FixedPointIteration(), max_steps=0, throw=False, adjoint=None)
    assert sol.result is Result.MAX_STEPS and torch.equal(sol.value, c.z0)
    assert counted.calls == 1 and sol.stats.nfev == 1 and int(sol.stats.steps.max()) == 0
    assert torch.allclose(sol.stats.residual, c.residual(c.z0))
    assert sol.stats.trace.shape == (1, 4)
    # already at the fixed point: converged with 0 steps
    at = fixed_point(c.f, c.z_star, solver=FixedPointIteration(), max_steps=0, adjoint=None)
    assert at.result is Result.CONVERGED


def test_budget_exhausted_returns_best_iterate() -> None:
    c = _affine(seed=5, rho=0.95)
    sol = _solve(c, max_steps=3, throw=False)
    assert sol.result is Result.MAX_STEPS and not bool(sol.stats.converged.any())
    assert sol.stats.steps.tolist() == [3, 3, 3, 3] and sol.stats.trace.shape == (4, 4)


@dataclasses.dataclass(frozen=True)
class _Zigzag(AbstractFixedPointSolver):
    """Picard on even steps, a deliberately bad step on odd ones: residuals go up and down."""

    name: ClassVar[str] = "zigzag"

    def init(self, f, z, fz) -> Any:
        return 0

    def step(self, f, z, fz, state):
        z_next = fz if state % 2 == 0 else 3.0 * fz
        return z_next, f(z_next), state + 1


@pytest.mark.parametrize("every", [1, 3])   # the host path and the device path (check_every > 1)
def test_best_iterate_is_returned_when_residuals_go_up(every: int) -> None:
    c = _affine(seed=6, rho=0.5)
    seen: list[torch.Tensor] = []

    def f(z):
        seen.append(z.clone())
        return c.f(z)

    sol = fixed_point(f, c.z0, solver=_Zigzag(), atol=1e-30, rtol=0.0, max_steps=7, throw=False, adjoint=None,
                      check_every=every)
    res = torch.stack([c.residual(z) for z in seen])  # (8, B): z0 and the 7 iterates
    best = res.argmin(dim=0)
    for i in range(4):
        assert torch.equal(sol.value[i], seen[int(best[i])][i])
    assert torch.allclose(sol.stats.residual, res.min(dim=0).values, rtol=1e-12)
    assert bool((res[1:] > res[:-1]).any())  # the residual did go up on the way


@pytest.mark.parametrize("every", [2, 3, 7, 1000])
def test_check_every_changes_syncs_not_results(every: int) -> None:
    c = _affine(seed=7)
    ref = _solve(c)
    counted = _CountingF(c.f)
    sol = fixed_point(counted, c.z0, solver=FixedPointIteration(), atol=1e-10, rtol=1e-8, max_steps=500,
                      check_every=every, adjoint=None)
    assert sol.result is Result.CONVERGED
    assert torch.equal(sol.value, ref.value) and torch.equal(sol.stats.steps, ref.stats.steps)
    assert torch.equal(sol.stats.trace[: ref.stats.trace.shape[0]], ref.stats.trace)
    extra = counted.calls - ref.stats.nfev
    assert 0 <= extra < every and (every > 1 or extra == 0)


@given(st.integers(1, 6), st.integers(0, 1000))
@settings(max_examples=example_budget(15))
def test_check_every_property(every: int, seed: int) -> None:
    c = make_contraction("tanh", [(3, 5)], rho=0.7, seed=seed, dtype=F64)
    ref, sol = _solve(c), _solve(c, check_every=every)
    assert torch.equal(sol.value, ref.value) and torch.equal(sol.stats.steps, ref.stats.steps)


# --- failures ----------------------------------------------------------------------------------------------


def test_divergence_is_detected() -> None:
    z0 = torch.ones(3, 4, dtype=F64)
    sol = fixed_point(lambda z: 3.0 * z + 1.0, z0, solver=FixedPointIteration(), max_steps=100, throw=False,
                      adjoint=None)
    assert sol.result is Result.DIVERGED and int(sol.stats.steps.max()) < 100
    with pytest.raises(DeqSolveError, match="diverged"):
        fixed_point(lambda z: 3.0 * z + 1.0, z0, solver=FixedPointIteration(), max_steps=100, adjoint=None)


def test_nonfinite_during_solve_is_detected() -> None:
    sol = fixed_point(lambda z: torch.exp(3 * z) + 1, torch.zeros(2, 3, dtype=torch.float32),
                      solver=FixedPointIteration(), max_steps=100, throw=False, adjoint=None)
    assert sol.result is Result.NONFINITE
    assert bool(torch.isfinite(sol.value).all())  # the best finite iterate comes back


@dataclasses.dataclass(frozen=True)
class _SpoilsRow0(AbstractFixedPointSolver):
    """Picard, but writes ``value`` into row 0 of every new iterate (as a solver with a degenerate history
    for an already converged sample might)."""

    name: ClassVar[str] = "spoils-row-0"
    value: float = math.nan

    def init(self, f, z, fz) -> Any:
        return None

    def step(self, f, z, fz, state):
        z_next = fz.clone()
        z_next[0] = z_next[0] + self.value
        return z_next, f(z_next), state


@pytest.mark.parametrize("value", [math.nan, math.inf, 1e-3])
def test_what_happens_to_converged_samples_afterwards_is_ignored(value: float) -> None:
    # regression: divergence (residual > 1e6 x a zero initial residual) and non-finite values were judged on
    # every row, so a sample converged at z0 could make the whole solve fail
    c = _affine(seed=8)
    z0 = c.z0.clone()
    z0[0] = 0.0
    f = lambda z: c.f(z) * torch.tensor([0.0, 1, 1, 1], dtype=F64)[:, None]  # sample 0: f(z) = 0, z* = 0
    sol = fixed_point(f, z0, solver=_SpoilsRow0(value), atol=1e-10, rtol=1e-8, max_steps=500, adjoint=None)
    assert sol.result is Result.CONVERGED
    assert int(sol.stats.steps[0]) == 0 and torch.equal(sol.value[0], z0[0])


def test_throw_false_keeps_the_solution_and_throw_true_names_samples() -> None:
    c = _affine(seed=9, rho=0.95)
    with pytest.raises(DeqSolveError) as info:
        _solve(c, max_steps=2)
    msg = str(info.value)
    assert "did not converge" in msg and "sample" in msg and "4 of 4 samples" in msg
    assert info.value.solution is not None and info.value.solution.result is Result.MAX_STEPS


def test_best_iterate_at_round_off_level() -> None:
    # float32 far below its precision: residuals jitter at round-off; any iterate down there counts as best
    c = make_contraction("tanh", [(6, 32)], rho=0.9, seed=11, dtype=torch.float32)
    seen: list[torch.Tensor] = []

    def f(z):
        seen.append(z.clone())
        return c.f(z)

    sol = fixed_point(f, c.z0, solver=FixedPointIteration(), atol=1e-30, rtol=0.0, max_steps=150, throw=False,
                      adjoint=None)
    assert sol.result is Result.MAX_STEPS
    with torch.no_grad():
        res = torch.stack([torch.linalg.vector_norm(c.f(z) - z, dim=1) for z in seen])
        fn = torch.stack([torch.linalg.vector_norm(c.f(z), dim=1) for z in seen])
    floor = 4 * torch.finfo(torch.float32).eps * fn.max(dim=0).values
    assert bool((sol.stats.residual <= torch.maximum(res.min(dim=0).values, floor) * (1 + 1e-6)).all())
    assert bool((res[1:] > res[:-1]).any())  # the jitter is there
    for i in range(6):  # the returned row is one of the iterates
        assert any(torch.equal(sol.value[i], z[i]) for z in seen)
