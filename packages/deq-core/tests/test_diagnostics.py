"""``spectral_radius``: power iteration by VJPs against dense eigenvalues, where power iteration is well
defined (symmetric Jacobians, a dominant real eigenvalue, a dominant complex pair) and nonlinear maps at
their fixed point."""

from __future__ import annotations

import doctest

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deq_core import DeqConfigError, DeqInputError, fixed_point, spectral_radius

F64 = torch.float64


def dense_rho(J: torch.Tensor) -> float:
    return float(torch.linalg.eigvals(J).abs().max())


@settings(max_examples=15)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 24), batch=st.integers(1, 4))
def test_symmetric_jacobian(seed, n, batch):
    g = torch.Generator().manual_seed(seed)
    # eigenvalues with a clear top modulus (gap >= 20 %), random signs
    lam = torch.rand(n, generator=g, dtype=F64) * 0.8
    lam[0] = 1.0
    lam *= torch.where(torch.rand(n, generator=g, dtype=F64) < 0.5, -1.0, 1.0)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    A = (Q * lam) @ Q.T
    est = spectral_radius(lambda z: z @ A.T, torch.zeros(batch, n, dtype=F64), iters=200,
                          generator=torch.Generator().manual_seed(seed))
    assert est.shape == (batch,)
    # symmetric: every factor ||J w|| <= rho, so the estimate is a lower bound, and the gap makes it tight
    assert bool((est <= 1.0 + 1e-12).all()) and bool((est >= 1.0 - 1e-6).all()), est


@settings(max_examples=15)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 16), top=st.floats(0.3, 2.0))
def test_dominant_real_eigenvalue_of_a_non_normal_jacobian(seed, n, top):
    g = torch.Generator().manual_seed(seed)
    lam = top * 0.6 * torch.rand(n, generator=g, dtype=F64)
    lam[0] = -top if seed % 2 else top
    V = torch.randn(n, n, generator=g, dtype=F64) + 3 * torch.eye(n, dtype=F64)  # well-conditioned, not orthogonal
    A = V @ torch.diag(lam) @ torch.linalg.inv(V)
    est = spectral_radius(lambda z: z @ A.T, torch.zeros(2, n, dtype=F64), iters=300,
                          generator=torch.Generator().manual_seed(seed))
    assert torch.allclose(est, torch.full_like(est, dense_rho(A)), rtol=1e-6), (est, dense_rho(A))


def test_dominant_complex_pair():
    # rotation-scaling block 0.9 * R(theta) plus smaller eigenvalues: ||J w_k|| oscillates, its mean growth is 0.9
    th = 0.7
    A = torch.zeros(5, 5, dtype=F64)
    A[:2, :2] = 0.9 * torch.tensor([[torch.cos(torch.tensor(th)), -torch.sin(torch.tensor(th))],
                                    [torch.sin(torch.tensor(th)), torch.cos(torch.tensor(th))]], dtype=F64)
    A[2:, 2:] = torch.diag(torch.tensor([0.3, -0.2, 0.1], dtype=F64))
    V = torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=F64) + 3 * torch.eye(5, dtype=F64)
    A = V @ A @ torch.linalg.inv(V)
    est = spectral_radius(lambda z: z @ A.T, torch.zeros(3, 5, dtype=F64), iters=400)
    assert torch.allclose(est, torch.full_like(est, 0.9), rtol=2e-2), est


@settings(max_examples=10)
@given(seed=st.integers(0, 2**31 - 1), rho=st.floats(0.3, 0.9))
def test_nonlinear_map_per_sample_at_its_fixed_point(seed, rho):
    g = torch.Generator().manual_seed(seed)
    n, batch = 8, 3
    S = torch.randn(n, n, generator=g, dtype=F64)
    W = rho * (S + S.T) / torch.linalg.matrix_norm(S + S.T, ord=2)  # symmetric W
    b = torch.randn(batch, n, generator=g, dtype=F64)

    def f(z):
        return torch.tanh(z @ W.T + b)

    z = fixed_point(f, torch.zeros(batch, n, dtype=F64), adjoint=None, rtol=1e-12, max_steps=2000).value
    est = spectral_radius(f, z, iters=300, generator=torch.Generator().manual_seed(seed))
    fz = f(z)
    for i in range(batch):
        J = torch.autograd.functional.jacobian(lambda zi, i=i: torch.tanh(zi @ W.T + b[i]), z[i])
        d2 = 1 - fz[i] ** 2
        assert torch.allclose(J, d2[:, None] * W)  # J = D W with D = diag(1 - tanh^2)
        # D W is similar to the symmetric D^1/2 W D^1/2: real eigenvalues, power iteration converges
        want = float(torch.linalg.eigvalsh(d2.sqrt()[:, None] * W * d2.sqrt()[None, :]).abs().max())
        # DW is not symmetric itself (no lower bound), but its eigenvalues are real: power iteration
        # converges like (|l2| / |l1|)^k; where the top two moduli are within 10 % it is not checked
        mods = torch.linalg.eigvals(J).abs().sort(descending=True).values
        if float(mods[1]) <= 0.9 * float(mods[0]):
            assert abs(float(est[i]) - want) <= 1e-6 * want, (float(est[i]), want)


def test_samples_are_estimated_independently():
    A = torch.diag(torch.tensor([0.5, 0.1], dtype=F64))
    scale = torch.tensor([[1.0], [3.0]], dtype=F64)
    est = spectral_radius(lambda z: (z @ A.T) * scale, torch.zeros(2, 2, dtype=F64), iters=100)
    assert torch.allclose(est, torch.tensor([0.5, 1.5], dtype=F64), rtol=1e-9)


def test_constant_map_and_float32():
    assert spectral_radius(lambda z: torch.ones_like(z), torch.zeros(2, 3)).tolist() == [0.0, 0.0]
    est = spectral_radius(lambda z: 0.25 * z, torch.zeros(2, 3), iters=10)
    assert est.dtype == torch.float32 and torch.allclose(est, torch.full((2,), 0.25))
    half = spectral_radius(lambda z: 0.5 * z, torch.zeros(1, 4, dtype=torch.float16), iters=4)
    assert half.dtype == torch.float32 and abs(float(half[0]) - 0.5) < 1e-6


def test_result_is_detached_and_leaves_no_grad():
    W = torch.full((3, 3), 0.1, requires_grad=True)
    est = spectral_radius(lambda z: z @ W, torch.zeros(2, 3), iters=5)
    assert not est.requires_grad and W.grad is None


@pytest.mark.parametrize("iters", [1, 0, 2.5, True])
def test_bad_iters(iters):
    with pytest.raises(DeqConfigError, match="iters"):
        spectral_radius(lambda z: z, torch.zeros(1, 2), iters=iters)


def test_bad_inputs():
    with pytest.raises(DeqInputError, match=r"\(B, N\)"):
        spectral_radius(lambda z: z, torch.zeros(3))
    with pytest.raises(DeqInputError, match="same shape"):
        spectral_radius(lambda z: z[:, :1], torch.zeros(2, 3))


def test_docstring_example():
    import deq_core._diagnostics as mod

    result = doctest.testmod(mod)
    assert result.failed == 0 and result.attempted > 0
