"""Tests of the example plugin: the solver itself, and that deq finds it through the entry point."""

from __future__ import annotations

import importlib.metadata
import warnings

import pytest
import torch

from deq_core import DeqConfigError, FixedPointIteration, fixed_point, registry
from deq_core.plugins import DeqPluginWarning, PluginManager, use_manager
from deq_core.testing import DEFAULT_TOLERANCES, check_solver, make_contraction
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


def rotation_problem(rho: float = 0.9, batch: int = 3):
    """f(z) = rho R z + b with R a quarter turn: eigenvalues +-i rho, where plain heavy ball diverges."""
    rot = rho * torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    b = torch.linspace(0.5, 2.0, 2 * batch, dtype=torch.float64).reshape(batch, 2)
    return (lambda z: z @ rot.T + b), b


def test_restarts_keep_it_converging_where_plain_momentum_diverges():
    # |roots of r^2 - (lambda + beta) r + beta| = 1.34 > 1 at lambda = 0.9i, beta = 0.5: without the restart
    # the residual grows geometrically; with it every momentum step is discarded and the residual never rises
    f, b = rotation_problem()
    kw = dict(rtol=1e-10, atol=0, max_steps=2000, adjoint=None)
    z, z_prev = torch.zeros_like(b), torch.zeros_like(b)
    for _ in range(60):  # the unsafeguarded recursion
        z, z_prev = f(z) + 0.5 * (z - z_prev), z
    assert float((f(z) - z).norm()) > 1e3 * float((f(b * 0) - 0).norm())
    heavy = fixed_point(f, torch.zeros_like(b), solver=HeavyBall(momentum=0.5), **kw)
    picard = fixed_point(f, torch.zeros_like(b), solver=FixedPointIteration(), **kw)
    assert heavy.result.name == "CONVERGED"
    assert heavy.stats.nfev <= 2 * picard.stats.nfev  # the worst case: twice damped Picard's evaluations
    solver, z = HeavyBall(momentum=0.5), torch.zeros_like(b)  # the steps themselves: residuals never rise
    fz = f(z)
    state, res = solver.init(f, z, fz), [(fz - z).norm(dim=1)]
    for _ in range(200):
        z, fz, state = solver.step(f, z, fz, state)
        res.append((fz - z).norm(dim=1))
    res = torch.stack(res)
    assert bool((res[1:] <= res[:-1]).all()) and bool((res[-1] < 1e-3 * res[0]).all())


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


@pytest.mark.parametrize(("kind", "shape", "rho", "dtype", "seed"), [
    ("affine", [(4, 3, 1, 1)], 0.714, torch.float32, 2133470821),
    ("tanh", [(3, 7)], 0.892, torch.float64, 815993425),
    ("tanh", [(4, 11)], 0.896, torch.float64, 426587693),
])
def test_kit_problems_plain_momentum_failed_on(kind, shape, rho, dtype, seed):
    # found by running the kit with many random examples: unrestarted momentum 0.5 did not converge in 500 steps
    c = make_contraction(kind, shape, rho=rho, seed=seed, dtype=dtype)
    atol, rtol = DEFAULT_TOLERANCES[dtype]
    sol = fixed_point(c.f, c.z0, solver=HeavyBall(momentum=0.5), atol=atol, rtol=rtol, max_steps=500, adjoint=None)
    assert sol.result.name == "CONVERGED"
    assert bool((c.error(sol.value) <= c.error_bound(c.residual(sol.value)) + 1e-5).all())


@pytest.mark.parametrize("momentum", [0.5, 0.9])
def test_passes_the_deq_conformance_kit(momentum):
    # deq's own conformance test: accuracy on random contractions (float32 and float64, tuple states; under
    # --hypothesis-profile=explore 20x the examples), per-sample convergence, budget and non-finite handling,
    # implicit gradients, pickling. Before the restart, momentum 0.5 failed on about 1 problem in 25.
    check_solver(HeavyBall(momentum=momentum), max_examples=10)
