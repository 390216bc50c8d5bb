"""Tests of the example plugin: the solver itself, and that deq finds it through the entry point."""

from __future__ import annotations

import importlib.metadata
import warnings

import pytest
import torch

from deq_core import DeqConfigError, FixedPointIteration, fixed_point, registry
from deq_core.plugins import DeqPluginWarning, PluginManager, use_manager
from deq_core.testing import check_solver
from deq_solver_example import HeavyBall
from deq_solver_example import plugin as example_plugin


def slow_linear_problem(n: int = 32, batch: int = 4, top: float = 0.95):
    """f(z) = W z + b with W symmetric, eigenvalues spread in [0, top]; returns f, b and the exact z*."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    w = q @ torch.diag(torch.linspace(0, top, n, dtype=torch.float64)) @ q.T
    b = torch.randn(batch, n, generator=g, dtype=torch.float64)
    z_star = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - w, b.T).T
    return (lambda z: z @ w.T + b), b, z_star


def test_converges_to_the_exact_fixed_point_in_float64():
    f, b, z_star = slow_linear_problem()
    sol = fixed_point(f, torch.zeros_like(b), solver=HeavyBall(), rtol=1e-12, atol=0, max_steps=1000, adjoint=None)
    assert sol.result.name == "CONVERGED"
    torch.testing.assert_close(sol.value, z_star, rtol=0, atol=1e-9)


def test_momentum_needs_fewer_steps_than_picard_on_a_slow_contraction():
    f, b, _ = slow_linear_problem()
    kw = dict(rtol=1e-10, atol=0, max_steps=2000, adjoint=None)
    picard = fixed_point(f, torch.zeros_like(b), solver=FixedPointIteration(), **kw)
    heavy = fixed_point(f, torch.zeros_like(b), solver=HeavyBall(momentum=0.6), **kw)
    assert int(heavy.stats.steps.max()) < 0.5 * int(picard.stats.steps.max())


def test_zero_momentum_is_damped_picard():
    f, b, _ = slow_linear_problem()
    kw = dict(rtol=1e-8, atol=0, max_steps=40, adjoint=None, throw=False)
    a = fixed_point(f, torch.zeros_like(b), solver=HeavyBall(relaxation=0.7, momentum=0.0), **kw)
    c = fixed_point(f, torch.zeros_like(b), solver=FixedPointIteration(damping=0.7), **kw)
    torch.testing.assert_close(a.value, c.value, rtol=0, atol=1e-12)
    assert torch.equal(a.stats.steps, c.stats.steps)


def test_implicit_gradient_through_heavy_ball_matches_the_linear_solve():
    n = 6
    g = torch.Generator().manual_seed(1)
    w = 0.5 * torch.randn(n, n, generator=g, dtype=torch.float64) / n**0.5
    x = torch.randn(3, n, generator=g, dtype=torch.float64, requires_grad=True)
    sol = fixed_point(lambda z: torch.tanh(z @ w.T + x), torch.zeros(3, n, dtype=torch.float64),
                      solver=HeavyBall(momentum=0.2), adjoint="implicit", rtol=1e-12, atol=0, max_steps=500)
    sol.value.sum().backward()
    z = sol.value.detach()
    d = 1 - torch.tanh(z @ w.T + x.detach()) ** 2  # df/d(pre-activation)
    eye, ones = torch.eye(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    # x.grad = D (I - D W)^-T 1 per sample, D = diag(1 - tanh^2)
    expected = torch.stack([torch.linalg.solve((eye - d[i, :, None] * w).T, ones) * d[i] for i in range(3)])
    torch.testing.assert_close(x.grad, expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kw", [{"relaxation": 0.0}, {"relaxation": 1.5}, {"momentum": 1.0}, {"momentum": -0.1},
                                {"momentum": True}])
def test_rejects_bad_hyperparameters(kw):
    with pytest.raises(DeqConfigError):
        HeavyBall(**kw)


def test_plugin_module_registers_heavy_ball_with_its_alias():
    with use_manager(PluginManager.from_plugins([("deq-solver-example", example_plugin)], include_builtin=False)):
        assert list(registry.solvers()) == ["heavy-ball"]
        assert registry.get_solver("momentum", momentum=0.25) == HeavyBall(momentum=0.25)
        with pytest.raises(DeqConfigError, match="valid options: relaxation, momentum"):
            registry.get_solver("heavy-ball", beta=0.1)


def test_entry_point_is_declared_and_discovered():
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="deq")}
    assert eps["deq-solver-example"] == "deq_solver_example.plugin"
    mgr = PluginManager.from_entry_points(environ={}, include_builtin=False)
    with warnings.catch_warnings():  # other installed plugins may be broken (the integration env installs one)
        warnings.simplefilter("ignore", DeqPluginWarning)
        info = {p.name: p for p in mgr.plugins()}
    assert info["deq-solver-example"].status == "active"
    assert info["deq-solver-example"].provides["solvers"] == ("heavy-ball",)


def test_passes_the_deq_conformance_kit():
    # deq's own conformance test: accuracy on random contractions (float32 and float64, tuple states),
    # per-sample convergence, budget and non-finite handling, implicit gradients, pickling
    check_solver(HeavyBall(momentum=0.3), max_examples=10)
