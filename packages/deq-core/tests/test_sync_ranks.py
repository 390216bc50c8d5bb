"""Rank-synchronised stopping: under torch.distributed with ``sync_ranks=True`` every rank takes the same
number of steps, even when the ranks' problems need very different step counts, so an ``f`` that runs a
collective (as FSDP's layers do) cannot deadlock. The test runs ``worker`` on 2 gloo ranks
(``deq_core.testing.run_ranks``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deq_core import DEQ, fixed_point
from deq_core.testing import run_ranks


def worker(out: Path, sync: bool) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    rho = (0.2, 0.9)[rank]                 # rank 0 converges in a few steps, rank 1 needs many more
    collectives = [0]

    def f(z):
        t = torch.ones(1)
        dist.all_reduce(t)                 # a collective inside f, like FSDP's all-gather of the weights
        collectives[0] += 1
        return rho * z + 1.0

    sol = fixed_point(f, torch.zeros(3, 4, dtype=torch.float64), rtol=1e-10, atol=1e-12, max_steps=500,
                      adjoint=None, sync_ranks=sync, check_every=3)
    err = float((sol.value - 1.0 / (1.0 - rho)).abs().max())
    # and a DEQ with the same setting, forward + implicit backward
    lin = torch.nn.Linear(4, 4, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.mul_(rho / float(torch.linalg.matrix_norm(lin.weight, ord=2)))
    deq = DEQ(lambda z, x: torch.tanh(lin(z) + x), rtol=1e-8, max_steps=300, sync_ranks=sync)
    z, info = deq(torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(rank)))
    z.sum().backward()
    (out / f"rank{rank}.json").write_text(json.dumps({
        "nfev": sol.stats.nfev, "steps": int(sol.stats.steps.max()), "collectives": collectives[0], "err": err,
        "deq_nfev": info.stats.nfev, "grad_finite": bool(torch.isfinite(lin.weight.grad).all())}))
    dist.destroy_process_group()


def _run(tmp_path: Path) -> list[dict]:
    run_ranks(worker, tmp_path, True, timeout=240)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ranks_take_the_same_number_of_steps(tmp_path: Path) -> None:
    r0, r1 = _run(tmp_path)
    assert r0["collectives"] == r1["collectives"] and r0["nfev"] == r1["nfev"] and r0["deq_nfev"] == r1["deq_nfev"]
    assert r0["err"] < 1e-8 and r1["err"] < 1e-8 and r0["grad_finite"] and r1["grad_finite"]
    # rank 0 converged long before rank 1 stopped: its samples were frozen, its step count is its own
    assert r0["steps"] < r1["steps"]


def test_sync_ranks_without_a_process_group_is_a_plain_solve() -> None:
    sol = fixed_point(lambda z: 0.5 * z + 1, torch.zeros(2, 3), sync_ranks=True, adjoint=None)
    assert sol.result.name == "CONVERGED"
