"""Per-sample fault isolation with every built-in solver: one sample turns NaN at step 6, one diverges; the
others converge to the float64 reference fixed point and the error names exactly the failed ones, NaN first."""

from __future__ import annotations

import pytest
import torch

from deq_core import DeqSolveError, Result, fixed_point

SOLVERS = ["fixed-point", "picard", "anderson", "broyden", "neumann"]


def _problem(seed: int = 0, B: int = 6, N: int = 10):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, N, generator=g, dtype=torch.float64)
    W = 0.6 * W / torch.linalg.matrix_norm(W, ord=2)
    x = torch.randn(B, N, generator=g, dtype=torch.float64)
    calls = [0]

    def f(z):
        calls[0] += 1
        out = torch.tanh(z @ W.T + x)
        out = out.clone()
        out[4] = 2.0 * z[4] + 1.0 + z[4] * z[4]   # sample 4: no fixed point, runs away
        if calls[0] > 6:                          # sample 1: non-finite from step 6 on
            out[1, 0] = float("nan")
        return out

    # float64 reference for the healthy samples: Picard to round-off
    ref = torch.zeros(B, N, dtype=torch.float64)
    for _ in range(400):
        ref = torch.tanh(ref @ W.T + x)
    return f, calls, ref


@pytest.mark.parametrize("solver", SOLVERS)
def test_one_bad_sample_does_not_stop_the_batch(solver: str) -> None:
    f, calls, ref = _problem()
    z0 = torch.zeros(6, 10, dtype=torch.float64)
    sol = fixed_point(f, z0, solver=solver, atol=1e-12, rtol=1e-10, max_steps=300, throw=False, adjoint=None)
    status = sol.stats.status.tolist()
    assert status[1] == Result.NONFINITE.code
    assert status[4] in (Result.DIVERGED.code, Result.MAX_STEPS.code)  # never CONVERGED
    healthy = [0, 2, 3, 5]
    assert all(status[i] == Result.CONVERGED.code for i in healthy), status
    assert torch.allclose(sol.value[healthy], ref[healthy], atol=1e-8, rtol=0)
    assert bool(torch.isfinite(sol.value).all())            # failed samples frozen at a finite iterate
    assert sol.result is Result.NONFINITE
    assert sol.stats.failed.tolist() == [False, True, False, False, status[4] == Result.DIVERGED.code, False]
    calls[0] = 0
    with pytest.raises(DeqSolveError) as err:
        fixed_point(f, z0, solver=solver, atol=1e-12, rtol=1e-10, max_steps=300, adjoint=None)
    msg = str(err.value)
    assert msg.index("samples [1] turned non-finite") < msg.index("4")
    assert "2 of 6 samples failed" in msg
    for i in healthy:
        assert f"sample {i}:" not in msg and f"[{i}]" not in msg


@pytest.mark.parametrize("solver", SOLVERS)
def test_device_path_isolates_faults_too(solver: str) -> None:
    """check_every > 1 (no host sync between checks) gives the same per-sample verdicts."""
    f, calls, ref = _problem(seed=1)
    z0 = torch.zeros(6, 10, dtype=torch.float64)
    sol = fixed_point(f, z0, solver=solver, atol=1e-12, rtol=1e-10, max_steps=300, throw=False, adjoint=None,
                      check_every=5)
    status = sol.stats.status.tolist()
    assert status[1] == Result.NONFINITE.code and status[4] != Result.CONVERGED.code
    healthy = [0, 2, 3, 5]
    assert all(status[i] == Result.CONVERGED.code for i in healthy), status
    assert torch.allclose(sol.value[healthy], ref[healthy], atol=1e-8, rtol=0)
