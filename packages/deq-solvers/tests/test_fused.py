"""The Triton-fused Anderson solver: agreement with ``anderson`` (Triton interpreter on CPU), fallbacks."""

from __future__ import annotations

import pytest
import torch

from deq_core import DeqConfigError, Result, fixed_point
from deq_core.testing import make_contraction
from deq_solvers import Anderson, FusedAnderson, triton_status

pytest.importorskip("triton", reason="deq-solvers[fused] (Triton) is not installed")
needs_kernels = pytest.mark.skipif(triton_status() is not None, reason=str(triton_status()))


def _solve(solver, c, **kw):
    kw = {"atol": 1e-12, "rtol": 1e-10, "max_steps": 300, "adjoint": None, **kw}
    return fixed_point(c.f, c.z0, solver=solver, **kw)


CASES = [
    ("affine", [(3, 20)], 0.6, 0, {}),
    ("tanh", [(2, 3, 4, 4)], 0.6, 2, {"m": 3, "damping": 0.7}),
    ("affine", [(2, 5), (2, 2, 3, 3)], 0.5, 3, {"m": 1}),
]
SLOW_CASES = [
    (kind, shapes, rho, seed, opts)
    for kind, shapes, rho, seed in [("affine", [(3, 20)], 0.9, 0), ("tanh", [(2, 40)], 0.8, 1),
                                    ("tanh", [(2, 3, 4, 4)], 0.9, 2), ("affine", [(2, 5), (2, 2, 3, 3)], 0.7, 3)]
    for opts in ({}, {"m": 3, "damping": 0.7}, {"m": 1})
]


@needs_kernels
@pytest.mark.parametrize("kind,shapes,rho,seed,opts", CASES + [pytest.param(*c, marks=pytest.mark.slow)
                                                               for c in SLOW_CASES])
def test_fused_agrees_with_anderson(kind, shapes, rho, seed, opts):
    c = make_contraction(kind, shapes, rho=rho, seed=seed, dtype=torch.float64)
    ref = _solve(Anderson(adaptive=False, **opts), c)  # fused mixes from step 2 on
    # same loop, same stopping steps: the iterates are the same sequence
    fused = _solve(FusedAnderson(block=16, **opts), c)
    assert ref.result is Result.CONVERGED and fused.result is Result.CONVERGED
    for a, b in zip(*(v if isinstance(v, tuple) else (v,) for v in (fused.value, ref.value))):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
    assert torch.equal(fused.stats.steps, ref.stats.steps)


@needs_kernels
def test_fused_float32_agrees_and_checks_every_k():
    c = make_contraction("tanh", [(4, 50)], rho=0.7, seed=4, dtype=torch.float32)
    ref = _solve(Anderson(adaptive=False), c, atol=1e-7, rtol=1e-6)
    fused = _solve(FusedAnderson(block=32), c, atol=1e-7, rtol=1e-6, check_every=4)
    assert fused.result is Result.CONVERGED
    assert torch.allclose(fused.value, ref.value, rtol=1e-5, atol=1e-5)
    # converged samples are frozen: checking every 4 steps only costs extra evaluations, not accuracy
    assert ref.stats.nfev <= fused.stats.nfev <= ref.stats.nfev + 3
    assert fused.stats.solver["name"] == "fused-anderson" and fused.stats.solver["history_bytes"] > 0


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_half_states(dtype):
    c = make_contraction("tanh", [(2, 32)], rho=0.8, seed=5, dtype=dtype)
    sol = _solve(FusedAnderson(block=16), c, atol=0.0, rtol=2e-2)
    assert sol.result is Result.CONVERGED and sol.value.dtype == dtype


def test_fused_without_cuda_or_interpreter_fails_clearly(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET" in triton_status("cpu")
    with pytest.raises(DeqConfigError, match="TRITON_INTERPRET=1.*anderson"):
        fixed_point(lambda z: 0.5 * z + 1, torch.zeros(2, 4), solver=FusedAnderson(), adjoint=None)


def test_fused_options_are_validated():
    with pytest.raises(DeqConfigError, match="block"):
        FusedAnderson(block=100)
    with pytest.raises(DeqConfigError, match="check_every= of the solve"):
        FusedAnderson(check_every=2)   # the old per-solver spelling names the new one
    with pytest.raises(DeqConfigError, match="damping"):
        FusedAnderson(beta=0.5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("check_every", [1, 4])
def test_fused_cuda_agrees_with_anderson(check_every):
    c = make_contraction("tanh", [(16, 512)], rho=0.9, seed=6, dtype=torch.float32, device="cuda")
    ref = _solve(Anderson(adaptive=False), c, atol=1e-7, rtol=1e-6)
    fused = _solve(FusedAnderson(), c, atol=1e-7, rtol=1e-6, check_every=check_every)
    assert fused.result is Result.CONVERGED
    assert torch.allclose(fused.value, ref.value, rtol=1e-5, atol=1e-5)
