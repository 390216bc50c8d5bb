"""DEQ(reuse=True, reuse_steps=k): the warm-started amortized step (Implicit² style)."""

import torch
from torch import nn

from deq_core import DEQ, NeumannAdjoint


class _Layer(nn.Module):
    def __init__(self, n: int = 5) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(0.3 * torch.randn(n, n, generator=g, dtype=torch.float64) / n**0.5)
        self.calls = 0

    def forward(self, z, x):
        self.calls += 1
        return torch.tanh(z @ self.w.T + x)


def test_amortized_step_is_one_f_application_with_neumann_gradient():
    layer = _Layer()
    deq = DEQ(layer, adjoint=NeumannAdjoint(terms=1), reuse=True, reuse_steps=1, rtol=1e-10, max_steps=200)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    z_cold, info = deq(x, cache_key="k")
    assert not info.warm
    z_prev = z_cold.detach() + 0.01   # perturbed cache: the step must apply f once to it
    deq._cache["k"] = z_prev
    layer.calls = 0
    z, info = deq(x, cache_key="k")
    assert info.warm and layer.calls == 1 and int(info.stats.steps.max()) == 1 and info.stats.nfev == 1
    torch.testing.assert_close(z, layer(z_prev, x))               # numerically f(z_prev)
    torch.testing.assert_close(deq._cache["k"], z.detach())       # the cache advances
    # gradient: (df/dx)^T (v + J^T v) at z_prev, the Neumann T=1 rule
    v = torch.randn_like(z)
    (gx,) = torch.autograd.grad(z, x, v)
    zp = z_prev.clone().requires_grad_()
    xx = x.detach().requires_grad_()
    fz = torch.tanh(zp @ layer.w.T + xx)
    (jtv,) = torch.autograd.grad(fz, zp, v, retain_graph=True)
    (ref,) = torch.autograd.grad(fz, xx, v + jtv)
    torch.testing.assert_close(gx, ref)


def test_amortized_k_steps_and_k0():
    layer = _Layer()
    x = torch.randn(2, 5, dtype=torch.float64)
    z0 = torch.zeros(2, 5, dtype=torch.float64)
    for k in (2, 3):
        deq = DEQ(layer, adjoint="neumann", reuse=True, reuse_steps=k, rtol=1e-12, atol=0.0)
        deq._cache[None] = z0
        z, info = deq(x)
        ref = z0
        for _ in range(k):
            ref = layer(ref, x)
        torch.testing.assert_close(z.detach(), ref)
        assert int(info.stats.steps.max()) == k
    deq = DEQ(layer, adjoint="neumann", reuse=True, reuse_steps=0)
    deq._cache[None] = z0
    z, info = deq(x)
    torch.testing.assert_close(z.detach(), z0)
    assert int(info.stats.steps.max()) == 0
