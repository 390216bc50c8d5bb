"""The conformance kit itself: its problems are what they claim, the reference solver passes it, and it
catches broken solvers."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deq_core import AbstractFixedPointSolver, FixedPointIteration, LoopControl, LoopOutcome
from deq_core.testing import (
    DEFAULT_TOLERANCES,
    Contraction,
    affine_contractions,
    check_solver,
    contractions,
    example_budget,
    make_contraction,
    tanh_contractions,
)

pytestmark = pytest.mark.usefixtures("core_registry")


def _flat(z):
    parts = z if isinstance(z, tuple) else (z,)
    return torch.cat([t.reshape(t.shape[0], -1) for t in parts], dim=1).double()


@given(contractions((torch.float32, torch.float64)))
def test_reference_fixed_point_is_a_fixed_point(c: Contraction) -> None:
    eps = torch.finfo(c.dtype).eps
    zs = _flat(c.z_star)
    n = zs.shape[1]
    # f evaluated in c.dtype at the (rounded) reference: only rounding is left
    z_rounded = tuple(t.to(c.dtype) for t in c.z_star) if isinstance(c.z_star, tuple) else c.z_star.to(c.dtype)
    res = c.residual(z_rounded)
    assert bool((res <= 16 * eps * n * (1 + torch.linalg.vector_norm(zs, dim=1))).all()), res
    assert c.rho < 1 and c.kind in ("affine", "tanh")
    assert c.error(c.z_star).max() == 0


@given(contractions(torch.float64), st.integers(0, 2**31 - 1))
def test_maps_are_rho_contractions(c: Contraction, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    parts = c.z0 if isinstance(c.z0, tuple) else (c.z0,)
    z1 = tuple(torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in parts)
    z2 = tuple(torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in parts)
    if not isinstance(c.z0, tuple):
        z1, z2 = z1[0], z2[0]
    lhs = torch.linalg.vector_norm(_flat(c.f(z1)) - _flat(c.f(z2)), dim=1)
    rhs = c.rho * torch.linalg.vector_norm(_flat(z1) - _flat(z2), dim=1)
    assert bool((lhs <= rhs * (1 + 1e-9)).all())


@settings(max_examples=example_budget(30))
@given(contractions((torch.float32, torch.float64)))
def test_strategies_cover_shapes_dtypes_and_tuples(c: Contraction) -> None:
    out = c.f(c.z0)
    if isinstance(c.z0, tuple):
        assert isinstance(out, tuple) and len(out) == len(c.z0)
        assert all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(out, c.z0))
    else:
        assert out.shape == c.z0.shape and out.dtype == c.dtype
        assert c.z0.dim() in (2, 4)


def test_affine_and_tanh_strategies_give_their_kind() -> None:
    seen = []

    @settings(max_examples=example_budget(5))
    @given(affine_contractions(torch.float32), tanh_contractions(torch.float64))
    def run(a: Contraction, t: Contraction) -> None:
        seen.append((a.kind, a.dtype, t.kind, t.dtype))

    run()
    assert seen and all(s == ("affine", torch.float32, "tanh", torch.float64) for s in seen)


def test_make_contraction_is_deterministic_and_validates() -> None:
    a = make_contraction("tanh", [(2, 3), (2, 1, 2, 2)], rho=0.5, seed=3, dtype=torch.float32)
    b = make_contraction("tanh", [(2, 3), (2, 1, 2, 2)], rho=0.5, seed=3, dtype=torch.float32)
    assert isinstance(a.z0, tuple) and all(torch.equal(x, y) for x, y in zip(a.z0, b.z0))
    assert all(torch.equal(x, y) for x, y in zip(a.f(a.z0), b.f(b.z0)))
    with pytest.raises(ValueError, match="rho"):
        make_contraction("affine", [(2, 3)], rho=1.0, seed=0)
    with pytest.raises(ValueError, match="kind"):
        make_contraction("cubic", [(2, 3)], rho=0.5, seed=0)


# --- the reference solver conforms -----------------------------------------------------------------------


def test_fixed_point_iteration_conforms() -> None:
    check_solver(FixedPointIteration())


def test_damped_fixed_point_iteration_conforms() -> None:
    check_solver(FixedPointIteration(damping=0.7), max_examples=5)


def test_check_solver_accepts_a_registered_name() -> None:
    check_solver("fixed-point", dtype=torch.float64, max_examples=3, gradients=False)


def test_check_solver_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="dtypes"):
        check_solver(FixedPointIteration(), dtype=torch.float16)
    with pytest.raises(ValueError, match="max_examples"):
        check_solver(FixedPointIteration(), max_examples=0)
    assert set(DEFAULT_TOLERANCES) == {torch.float32, torch.float64}


# --- and it catches broken ones ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _StopsEarly(AbstractFixedPointSolver):
    """Claims convergence after 2 steps whatever the residual (a terminate looser than the shared test)."""

    name: ClassVar[str] = "stops-early"

    def init(self, f, z, fz) -> Any:
        return [0]

    def step(self, f, z, fz, state):
        state[0] += 1
        return fz, f(fz), state

    def terminate(self, z, fz, res, fnorm, state, control: LoopControl):
        return torch.full_like(res, state[0] >= 2, dtype=torch.bool)


@dataclasses.dataclass(frozen=True)
class _WritesInPlace(AbstractFixedPointSolver):
    """Reuses the previous f(z) buffer for the next iterate (writes into a tensor f returned)."""

    name: ClassVar[str] = "in-place"

    def init(self, f, z, fz) -> Any:
        return None

    def step(self, f, z, fz, state):
        z_next = fz.mul_(1.0)  # in place on f's output (a no-op value-wise, but bumps the version)
        return z_next, f(z_next), state


@dataclasses.dataclass(frozen=True)
class _NoFreeze(AbstractFixedPointSolver):
    """Postprocesses the outcome into the last iterate of every sample (converged ones keep moving)."""

    name: ClassVar[str] = "no-freeze"

    def init(self, f, z, fz) -> Any:
        return (f, z, fz)

    def step(self, f, z, fz, state):
        return fz, f(fz), state

    def postprocess(self, first: LoopOutcome, state) -> LoopOutcome:
        f, z, fz = state
        k = int(first.steps.max())
        for _ in range(k):
            z, fz = fz, f(fz)
        res = torch.linalg.vector_norm(fz - z, dim=1)
        fn = torch.linalg.vector_norm(fz, dim=1)
        first.z, first.fz, first.residual, first.fnorm = z, fz, res, fn
        first.steps = torch.full_like(first.steps, k)
        return first


@dataclasses.dataclass(frozen=True)
class _StaleF(AbstractFixedPointSolver):
    """Returns a stale f(z) (of the previous iterate) with the new iterate."""

    name: ClassVar[str] = "stale"

    def init(self, f, z, fz) -> Any:
        return None

    def step(self, f, z, fz, state):
        z_next = fz
        f(z_next)
        return z_next, 2 * fz - z, state  # looks like progress, is not f(z_next)


class _NotADataclass(AbstractFixedPointSolver):
    name: ClassVar[str] = "plain"

    def init(self, f, z, fz):
        return None

    def step(self, f, z, fz, state):
        return fz, f(fz), state


@pytest.mark.parametrize(
    ("solver", "message"),
    [
        (_StopsEarly(), "meet atol"),
        (_WritesInPlace(), "in place"),
        (_NoFreeze(), "iterated further|returned unchanged"),
        (_StaleF(), "did not converge"),
        (_NotADataclass(), "dataclass"),
    ],
    ids=["stops-early", "writes-in-place", "no-freeze", "stale-f", "not-a-dataclass"],
)
def test_check_solver_catches_broken_solvers(solver: AbstractFixedPointSolver, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_solver(solver, dtype=torch.float64, max_examples=5, gradients=False)
