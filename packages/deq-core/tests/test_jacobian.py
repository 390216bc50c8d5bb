"""Jacobian regularizers: ``jacobian_frobenius`` (Hutchinson) and ``jacobian_spectral`` (a differentiable
power-iteration estimate) against dense float64 references on per-sample linear maps."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deq_core import DeqConfigError, jacobian_frobenius, jacobian_spectral

F64 = torch.float64


def symmetric_with_gap(g: torch.Generator, n: int) -> tuple[torch.Tensor, float]:
    """A random symmetric ``(n, n)`` matrix whose top eigenvalue modulus leads the next by >= 30 %."""
    lam = torch.rand(n, generator=g, dtype=F64) * 0.7
    top = 0.2 + 1.3 * float(torch.rand((), generator=g, dtype=F64))
    lam = lam * top
    lam[0] = top
    lam *= torch.where(torch.rand(n, generator=g, dtype=F64) < 0.5, -1.0, 1.0)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return q @ torch.diag(lam) @ q.T, top


@settings(max_examples=20)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 30), batch=st.integers(1, 4))
def test_spectral_estimate_and_its_gradient(seed, n, batch):
    g = torch.Generator().manual_seed(seed)
    A, top = symmetric_with_gap(g, n)
    s = torch.tensor(0.9, dtype=F64, requires_grad=True)
    rho = jacobian_spectral(lambda z: s * (z @ A.T), torch.randn(batch, n, generator=g, dtype=F64), iters=120,
                            generator=g)
    assert rho.shape == (batch,)
    # (0.7)^119 relative error from the start direction: at float64 round-off
    torch.testing.assert_close(rho.detach(), torch.full((batch,), 0.9 * top, dtype=F64), rtol=1e-9, atol=0)
    rho.sum().backward()      # d(s * top) / ds per sample
    torch.testing.assert_close(s.grad, torch.tensor(batch * top, dtype=F64), rtol=1e-9, atol=0)


@settings(max_examples=20)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 20), iters=st.integers(1, 6))
def test_spectral_estimate_is_bounded_by_the_norm_per_sample(seed, n, iters):
    """Few iterations: each sample's estimate lies in (0, ||J_i||_2], with its own Jacobian per row."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(2, n, n, generator=g, dtype=F64) / n ** 0.5
    rho = jacobian_spectral(lambda z: torch.einsum("bij,bj->bi", A, z), torch.zeros(2, n, dtype=F64),
                            iters=iters, generator=g)
    norms = torch.linalg.matrix_norm(A, ord=2)
    assert bool((rho > 0).all()) and bool((rho <= norms * (1 + 1e-12)).all()), (rho, norms)


def test_hinge_on_the_estimate_only_acts_above_its_target():
    A = torch.diag(torch.tensor([0.8, 0.3, -0.1], dtype=F64))
    s = torch.tensor(1.0, dtype=F64, requires_grad=True)
    rho = jacobian_spectral(lambda z: s * z @ A.T, torch.zeros(3, 3, dtype=F64), iters=60)
    torch.relu(rho - 0.9).pow(2).mean().backward()
    assert float(s.grad) == 0.0
    s.grad = None
    rho = jacobian_spectral(lambda z: s * z @ A.T, torch.zeros(3, 3, dtype=F64), iters=60)
    torch.relu(rho - 0.5).pow(2).mean().backward()      # d/ds (0.8 s - 0.5)^2 = 2 * 0.3 * 0.8
    torch.testing.assert_close(s.grad, torch.tensor(0.48, dtype=F64), rtol=1e-9, atol=0)


def test_frobenius_estimate_is_unbiased():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(50, 50, generator=g, dtype=F64)
    est = jacobian_frobenius(lambda z: z @ A.T, torch.zeros(64, 50, dtype=F64), probes=40, generator=g)
    torch.testing.assert_close(est, (A ** 2).sum() / 50, rtol=0.05, atol=0)


@pytest.mark.parametrize("iters", [0, -1, 2.0, True])
def test_spectral_rejects_bad_iters(iters):
    with pytest.raises(DeqConfigError, match="iters must be an int >= 1"):
        jacobian_spectral(lambda z: z, torch.zeros(1, 2), iters=iters)
