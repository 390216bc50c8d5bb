"""Fault isolation in DEQ and fixed_point: masked training past bad samples, per-call options, empty batches,
maps without a fixed point, temp files of interrupted checkpoint saves."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deq_core import (
    DEQ,
    AbstractFixedPointSolver,
    DeqConfigError,
    DeqInputError,
    DeqSolveError,
    Result,
    UnknownNameError,
    fixed_point,
    save,
)
from deq_core.testing import no_fixed_point_maps


class Layer(torch.nn.Module):
    def __init__(self, width: int = 6, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.lin = torch.nn.Linear(width, width, dtype=torch.float64)
        with torch.no_grad():
            self.lin.weight.copy_(0.4 * torch.randn(width, width, generator=g, dtype=torch.float64) / width ** 0.5)
            self.lin.bias.zero_()

    def forward(self, z, x):
        return torch.tanh(self.lin(z) + x)


def _train(samples: torch.Tensor, targets: torch.Tensor, *, mask: bool, steps: int = 25) -> torch.nn.Module:
    torch.manual_seed(0)
    layer = Layer()
    deq = DEQ(layer, atol=1e-11, rtol=1e-9, max_steps=200, on_failure="mask" if mask else "raise")
    opt = torch.optim.SGD(layer.parameters(), lr=0.05)
    for _ in range(steps):
        z, info = deq(samples)
        per_sample = (z - targets).square().sum(dim=1)
        loss = per_sample[~info.failed].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return layer


def test_masked_training_skips_nan_samples_and_matches_training_without_them() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 6, generator=g, dtype=torch.float64)
    y = 0.5 * torch.randn(8, 6, generator=g, dtype=torch.float64)
    bad = torch.tensor([2, 5])
    x_bad = x.clone()
    x_bad[2, 0] = float("nan")
    x_bad[5, 3] = float("nan")
    keep = torch.tensor([i for i in range(8) if i not in bad.tolist()])
    masked = _train(x_bad, y, mask=True)
    clean = _train(x[keep], y[keep], mask=False)
    for a, b in zip(masked.parameters(), clean.parameters()):
        assert bool(torch.isfinite(a).all())
        assert torch.allclose(a, b, atol=1e-9, rtol=0)
    # and the raise mode refuses the same batch, naming the bad samples
    with pytest.raises(DeqInputError, match=r"samples \[2, 5\]"):
        DEQ(Layer())(x_bad)


def test_masked_forward_flags_and_detaches_failed_rows() -> None:
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    x_in = x.clone()
    x_in.data[1, 0] = float("nan")
    z, info = DEQ(Layer(), on_failure="mask")(x_in)
    assert info.failed.tolist() == [False, True, False, False]
    assert info.stats.sample_results()[1] is Result.NONFINITE
    z[~info.failed].sum().backward()
    assert bool(torch.isfinite(x.grad).all()) and float(x.grad[1].abs().sum()) == 0.0


def test_per_call_options_override_without_mutating() -> None:
    deq = DEQ(Layer(), rtol=1e-10, max_steps=100)
    x = torch.randn(3, 6, dtype=torch.float64)
    _, full = deq(x)
    _, short = deq(x, options={"max_steps": 2})
    assert int(short.stats.steps.max()) == 2 and short.result is Result.MAX_STEPS
    assert int(full.stats.steps.max()) > 2 and deq.max_steps == 100 and deq.rtol == 1e-10
    _, loose = deq(x, options={"rtol": 1e-2})
    assert int(loose.stats.steps.max()) < int(full.stats.steps.max())
    with pytest.raises(UnknownNameError, match="Did you mean 'rtol'"):
        deq(x, options={"rtl": 1e-2})
    with pytest.raises(DeqConfigError, match="max_steps"):
        deq(x, options={"max_steps": -1})
    with pytest.raises(DeqConfigError, match="on_failure"):
        DEQ(Layer(), on_failure="skip")


def test_empty_batch_is_a_defined_result() -> None:
    called = []
    sol = fixed_point(lambda z: called.append(1) or z, torch.zeros(0, 4))
    assert sol.result is Result.CONVERGED and tuple(sol.value.shape) == (0, 4) and not called
    assert sol.stats.summary()["batch"] == 0
    z, info = DEQ(Layer())(torch.zeros(0, 6, dtype=torch.float64))
    assert tuple(z.shape) == (0, 6) and info.result is Result.CONVERGED
    tup = fixed_point(lambda s: s, (torch.zeros(0, 2), torch.zeros(0, 3, 3)))
    assert tuple(tup.value[1].shape) == (0, 3, 3)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 5), n=st.integers(2, 12),
       rtol=st.sampled_from([1e-2, 1e-4, 1e-8]), every=st.sampled_from([1, 3]))
def test_maps_without_a_fixed_point_never_converge(seed: int, batch: int, n: int, rtol: float, every: int) -> None:
    for c in no_fixed_point_maps(torch.float64, batch=batch, n=n, seed=seed):
        sol = fixed_point(c.f, c.z0, throw=False, adjoint=None, rtol=rtol, max_steps=300, check_every=every)
        assert not bool(sol.stats.converged.any()), (c, sol.stats.status.tolist())
        assert sol.result is not Result.CONVERGED


def test_run_away_is_divergence_not_convergence() -> None:
    """A relative test rtol * ||f(z)|| grows with the iterate: an iterate escaping to infinity must be judged
    diverged (with the old loop an extrapolating solver reached CONVERGED at ||z|| ~ 1e17)."""
    c = torch.ones(2, 3, dtype=torch.float64)
    grow = [1.0]

    def f(z):  # every step jumps 1000x further out, residual stays 1
        grow[0] *= 1000.0
        return z * 0 + grow[0] * c + c / 3 ** 0.5

    sol = fixed_point(f, torch.zeros(2, 3, dtype=torch.float64), throw=False, adjoint=None, rtol=1e-2)
    assert sol.result is Result.DIVERGED and sol.stats.failed.all()
    with pytest.raises(DeqSolveError, match=r"samples \[0, 1\] diverged"):
        grow[0] = 1.0
        fixed_point(f, torch.zeros(2, 3, dtype=torch.float64), adjoint=None, rtol=1e-2)


def test_interrupted_save_leaves_no_temp_file_behind(tmp_path, monkeypatch) -> None:
    import signal

    import safetensors.torch

    target = tmp_path / "model.safetensors"
    # a writer killed mid-save (a forked child, SIGKILLed inside the write): its temp file stays, as the
    # process cannot clean up after SIGKILL
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
        try:
            save(target, {"w": torch.zeros(1000)})
        finally:
            os._exit(3)  # not reached: SIGKILL ends the child inside save
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    left = list(tmp_path.glob("model.safetensors.tmp*"))
    assert len(left) == 1, left
    save(target, {"w": torch.ones(3)})
    assert target.exists() and not list(tmp_path.glob("model.safetensors.tmp*"))


def test_trajectory_states_along_the_solve_carry_one_step_gradients() -> None:
    torch.manual_seed(0)
    layer = Layer()
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    deq = DEQ(layer, rtol=1e-10, atol=1e-12, max_steps=100, trajectory=3)
    z, info = deq(x)
    assert len(info.trajectory) == 3 and all(t.shape == z.shape for t in info.trajectory)
    steps = info.stats.steps
    # the last state is f at the returned iterate (numerically z*), the first is early in the solve
    assert torch.allclose(info.trajectory[-1], z, atol=1e-9)
    assert float((info.trajectory[0] - z).detach().abs().max()) > 1e-6
    # each state's gradient is the one of a single application of f at a detached iterate (phantom, 1 step)
    (g,) = torch.autograd.grad(info.trajectory[0].sum(), x)
    zs = torch.zeros(3, 6, dtype=torch.float64)
    at = torch.round(steps.double() / 3).long()
    rows = []
    for i in range(3):
        zi = zs[i:i + 1]
        for _ in range(int(at[i])):
            zi = layer(zi, x[i:i + 1].detach())
        rows.append(zi)
    ref_in = torch.cat(rows).detach()
    (g_ref,) = torch.autograd.grad(layer(ref_in, x).sum(), x)
    assert torch.allclose(g, g_ref, atol=1e-10)
    _, plain = DEQ(layer)(x)
    assert plain.trajectory is None


def test_diagnostics_report_the_spectral_radius_at_the_fixed_point() -> None:
    layer = Layer()
    x = torch.randn(4, 6, dtype=torch.float64)
    z, info = DEQ(layer, rtol=1e-10, diagnostics=60)(x)
    J = torch.autograd.functional.jacobian(lambda zz: layer(zz, x[0:1]), z[0:1].detach()).reshape(6, 6)
    rho = float(torch.linalg.eigvals(J).abs().max())
    assert info.spectral_radius.shape == (4,)
    assert abs(float(info.spectral_radius[0]) - rho) < 0.05 * rho + 1e-3
    assert DEQ(layer)(x)[1].spectral_radius is None
    with pytest.raises(DeqConfigError, match="diagnostics"):
        DEQ(layer, diagnostics=1)


def test_a_start_at_residual_zero_is_not_divergence_under_a_custom_terminate() -> None:
    """A sample that starts exactly at its fixed point under a terminate that never stops (as JIIO's schedule)
    used to be flagged diverged at step 1 (its divergence limit was divergence * 0)."""
    from deq_core import FixedPointIteration, LoopControl, run_loop

    class Never(FixedPointIteration):
        def terminate(self, z, fz, res, fnorm, state, control):
            return torch.zeros_like(res, dtype=torch.bool)

    z = torch.tensor([[2.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    f = lambda z: 0.5 * z + 1.0  # noqa: E731 - sample 0 starts at its fixed point 2
    for divergence in (1e6, float("inf")):
        out = run_loop(Never(), f, z, f(z), LoopControl(1e-12, 0.0, 20, divergence=divergence))
        assert out.status.tolist() == [Result.MAX_STEPS.code, Result.MAX_STEPS.code], divergence
        assert torch.allclose(out.z, torch.full((2, 2), 2.0, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("adjoint", ["implicit", "neumann", "phantom"])
@pytest.mark.parametrize("reuse_steps", [0, 1, 3])
def test_amortized_masked_step_gives_the_gradient_of_the_healthy_rows(adjoint: str, reuse_steps: int) -> None:
    """A warm-started (``reuse_steps``) call with one nan sample: the parameter gradient is the one of the batch
    without it (it was nan: the adjoint was attached to every row and only blanked after), and the Jacobian
    penalty is finite."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    x_bad = x.clone()
    x_bad[1, 0] = float("nan")
    keep = torch.tensor([0, 2, 3])
    grads = []
    for inputs, warm in ((x_bad, x), (x[keep], x[keep])):
        layer = Layer()
        deq = DEQ(layer, adjoint=adjoint, atol=1e-12, rtol=1e-10, max_steps=200, reuse=True,
                  reuse_steps=reuse_steps, on_failure="mask", jac_reg_probes=1)
        deq(warm, cache_key="train")                      # the cache holds the clean batch's fixed points
        z, info = deq(inputs, cache_key="train")
        assert info.warm and info.jac_loss is not None and bool(torch.isfinite(info.jac_loss))
        (z[~info.failed].square().sum()).backward()
        grads.append([p.grad.clone() for p in layer.parameters()])
    assert info.failed.tolist() == [False, False, False]
    for a, b in zip(*grads):
        assert bool(torch.isfinite(a).all())
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


def test_mask_mode_refuses_adjoints_it_cannot_attach() -> None:
    """Unrolled backpropagates through the forward iterations (it used to come back detached: no gradient at
    all); adjoints that need the forward solver's state cannot have it per row or on an amortized call."""
    from deq_core import AbstractAdjoint

    class NeedsState(AbstractAdjoint):
        name = "needs-state"
        needs_forward_state = True

        def attach(self, f, z_star, *, solver, control, init=None, forward=None):
            return z_star

    with pytest.raises(DeqConfigError, match="UnrolledAdjoint"):
        DEQ(Layer(), adjoint="unrolled", on_failure="mask")
    deq = DEQ(Layer(), adjoint="unrolled")
    with pytest.raises(DeqConfigError, match="UnrolledAdjoint"):
        deq(torch.zeros(2, 6, dtype=torch.float64), options={"on_failure": "mask"})
    with pytest.raises(DeqConfigError, match="forward solver's final state"):
        DEQ(Layer(), adjoint=NeedsState(), on_failure="mask")
    with pytest.raises(DeqConfigError, match="reuse_steps"):
        DEQ(Layer(), adjoint=NeedsState(), reuse=True, reuse_steps=1)
    DEQ(Layer(), adjoint=NeedsState(), reuse=True)               # warm start + full solve: the state exists


class _Extrapolate(AbstractFixedPointSolver):
    """``z <- z + gain (f(z) - z)`` (gain 1000: an extrapolation that overshoots)."""

    name = "extrapolate"

    def init(self, f, z, fz):
        return None

    def step(self, f, z, fz, state):
        z = z + 1000.0 * (fz - z)
        return z, f(z), state


class _Scale(_Extrapolate):
    """``z <- 1000 f(z)``."""

    name = "scale"

    def step(self, f, z, fz, state):
        z = 1000.0 * fz
        return z, f(z), state


@pytest.mark.parametrize("every", [1, 3])
def test_each_divergence_guard_on_its_own(every: int) -> None:
    """The residual limit and the ||f(z)|| run-away limit each stop a solve the other cannot see (each could be
    removed with every other test green)."""
    z0 = torch.zeros(2, 3, dtype=torch.float64)
    # bounded f (tanh), exploding residual: only the residual limit sees it
    sol = fixed_point(lambda z: torch.tanh(z - 2.0), z0, solver=_Extrapolate(), throw=False, adjoint=None,
                      max_steps=20, check_every=every)
    assert sol.result is Result.DIVERGED and bool(sol.stats.failed.all()), sol.stats.status.tolist()
    assert float(sol.stats.residual.max()) < 1e3            # the best finite iterate, not the run-away one
    # constant residual, ||f(z)|| running away: only the ||f(z)|| limit sees it
    c = torch.ones(2, 3, dtype=torch.float64)
    sol = fixed_point(lambda z: z + c, z0, solver=_Scale(), throw=False, adjoint=None, atol=1e-12, rtol=0.0,
                      max_steps=20, check_every=every)
    assert sol.result is Result.DIVERGED, sol.stats.status.tolist()
    # and fixed_point's divergence= is that factor
    late = fixed_point(lambda z: torch.tanh(z - 2.0), z0, solver=_Extrapolate(), throw=False, adjoint=None,
                       max_steps=20, divergence=1e12)
    early = fixed_point(lambda z: torch.tanh(z - 2.0), z0, solver=_Extrapolate(), throw=False, adjoint=None,
                        max_steps=20, divergence=10.0)
    assert int(early.stats.steps.max()) < int(late.stats.steps.max())


def test_failed_samples_report_the_residual_of_the_iterate_they_return() -> None:
    """A sample that diverges comes back at its best finite iterate; its reported residual is that iterate's."""
    z0 = torch.zeros(2, 3, dtype=torch.float64)
    f = lambda z: torch.tanh(z - 2.0)   # noqa: E731
    sol = fixed_point(f, z0, solver=_Extrapolate(), throw=False, adjoint=None, max_steps=20)
    assert sol.result is Result.DIVERGED
    torch.testing.assert_close(sol.stats.residual, (f(sol.value) - sol.value).norm(dim=1))


def test_per_call_on_failure_strict_and_check_every_act() -> None:
    x = torch.randn(3, 6, dtype=torch.float64)
    x_bad = x.clone()
    x_bad[1, 0] = float("nan")
    deq = DEQ(Layer(), rtol=1e-10, max_steps=100)
    with pytest.raises(DeqInputError):
        deq(x_bad)
    _, info = deq(x_bad, options={"on_failure": "mask"})        # per call, the constructor's "raise" aside
    assert info.failed.tolist() == [False, True, False]
    # strict: a masked batch whose healthy samples run out of budget still raises
    with pytest.raises(DeqSolveError):
        DEQ(Layer(), rtol=1e-12, max_steps=2, strict=True, on_failure="mask")(x_bad)
    # per-call check_every: the device path runs whole blocks of steps before it looks
    _, every1 = deq(x, options={"check_every": 1})
    _, every7 = deq(x, options={"check_every": 7})
    assert int(every7.stats.nfev) > int(every1.stats.nfev)


def test_failed_samples_are_not_cached() -> None:
    from deq_core import FixedPointCache

    x = torch.randn(3, 6, dtype=torch.float64)
    x_bad = x.clone()
    x_bad[1, 0] = float("nan")
    deq = DEQ(Layer(), rtol=1e-10, max_steps=100, on_failure="mask", cache=FixedPointCache(3))
    idx = torch.arange(3)
    deq(x_bad, index=idx)
    _, hits = deq.cache.get(idx, torch.zeros(3, 6, dtype=torch.float64))
    assert hits.tolist() == [True, False, True]
