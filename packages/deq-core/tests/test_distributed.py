"""DDP on CPU: 2 gloo processes on loopback train a DEQ exactly like one process with the full batch.

The test runs ``worker`` on 2 ranks set up as ``torchrun --standalone --nproc_per_node=2`` sets them up
(``deq_core.testing.run_ranks``: forked, env:// rendezvous on a free port); each rank trains on its half of the
batch with a mean loss, so DDP's gradient average equals the full-batch gradient, and the parameters and loss curve
must match a one-process run to 1e-5 (float64, tight forward and backward tolerances). The two halves are built so
that the ranks take different numbers of solver steps: DDP only synchronizes parameter gradients, once per backward,
after the implicit-adjoint hook ran.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from deq_core import DEQ, FixedPointIteration, ImplicitAdjoint
from deq_core.distributed import reduce_stats
from deq_core.nn import spectral_norm
from deq_core.testing import run_ranks

STEPS, BATCH, WIDTH, LR = 5, 8, 6, 0.5
VARIANTS = {"find_unused_parameters": {"find_unused_parameters": True}, "static_graph": {"static_graph": True}}
TOL = dict(atol=1e-12, rtol=1e-11)


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = spectral_norm(nn.Linear(WIDTH, WIDTH, dtype=torch.float64), max_norm=0.7)
        self.inj = nn.Linear(3, WIDTH, dtype=torch.float64)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(z) + self.inj(x))

    def init_state(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], WIDTH)


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.deq = DEQ(Layer(), solver=FixedPointIteration(), adjoint=ImplicitAdjoint(**TOL, max_steps=500),
                       max_steps=500, strict=True, reuse=True, **TOL)
        self.head = nn.Linear(WIDTH, 1, dtype=torch.float64)

    def forward(self, x: torch.Tensor):
        z, info = self.deq(x, cache_key="train")
        return self.head(z), info


def setup() -> tuple[Model, torch.Tensor, torch.Tensor]:
    """Same seed on every rank: identical initial model and the full batch (each rank slices its half)."""
    torch.manual_seed(0)
    model = Model()
    x = torch.randn(BATCH, 3, dtype=torch.float64)
    x[: BATCH // 2] *= 0.1  # weak injection: the first half needs more solver steps than the second
    x[BATCH // 2:] *= 3.0
    y = torch.randn(BATCH, 1, dtype=torch.float64)
    return model, x, y


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    losses, local_steps, reduced = [], [], []
    for _ in range(STEPS):
        opt.zero_grad()
        pred, info = model(x)
        loss = (pred - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        local_steps.append(int(info.stats.steps.max()))
        reduced.append(reduce_stats(info.stats))
    params = torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
    return {"losses": losses, "local_steps_max": local_steps, "reduced": reduced, "params": params}


def worker(out: Path) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, x, y = setup()
    shard = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    ddp = DDP(model)
    result = train(ddp, x[shard], y[shard])
    result["rank"], result["world"] = rank, world
    del ddp  # free DDP's reducer (and the gloo work it holds) before the process group goes away
    gc.collect()
    result["variants"] = {}
    for name, options in VARIANTS.items():  # DDP's other graph modes must not change a thing
        model, x, y = setup()
        ddp = DDP(model, **options)
        result["variants"][name] = train(ddp, x[shard], y[shard])["params"]
        del ddp
        gc.collect()
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    run_ranks(worker, out, timeout=180)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def single_run() -> dict:
    model, x, y = setup()
    return train(model, x, y)


def test_ranks_hold_identical_parameters(ddp_run):
    r0, r1 = ddp_run
    assert (r0["world"], r1["world"]) == (2, 2)
    assert r0["params"] == r1["params"]


def test_ddp_matches_one_process_full_batch(ddp_run, single_run):
    ref_params = torch.tensor(single_run["params"])
    for r in ddp_run:
        assert torch.allclose(torch.tensor(r["params"]), ref_params, rtol=0, atol=1e-5)
    # each rank's loss is the mean over its half; with equal halves their average is the full-batch loss
    ddp_curve = (torch.tensor(ddp_run[0]["losses"]) + torch.tensor(ddp_run[1]["losses"])) / 2
    ref_curve = torch.tensor(single_run["losses"])
    assert torch.allclose(ddp_curve, ref_curve, rtol=0, atol=1e-5)
    assert ref_curve[-1] < ref_curve[0]  # it trained
    # float64 + tight tolerances: far better than the 1e-5 asked for
    assert (torch.tensor(ddp_run[0]["params"]) - ref_params).abs().max() < 1e-9


def test_ddp_graph_modes_agree(ddp_run):
    # find_unused_parameters traverses the graph from the outputs (z, DEQInfo); static_graph replays the
    # first iteration's bucket order: both must coexist with the implicit-adjoint hook
    for r in ddp_run:
        assert set(r["variants"]) == set(VARIANTS)
        for name, params in r["variants"].items():
            assert params == r["params"], name


def test_ranks_took_different_solver_steps(ddp_run):
    # the situation DDP must tolerate: per-rank solves of different length (no collective inside the solve)
    assert ddp_run[0]["local_steps_max"] != ddp_run[1]["local_steps_max"]


def test_reduced_stats_describe_the_global_batch(ddp_run, single_run):
    for t in range(STEPS):
        a, b = ddp_run[0]["reduced"][t], ddp_run[1]["reduced"][t]
        assert a == b  # every rank logs the same numbers
        assert a["world_size"] == 2 and a["batch"] == BATCH and a["converged"] == BATCH
        local = [ddp_run[r]["local_steps_max"][t] for r in range(2)]
        assert a["steps_max"] == max(local)
        ref = single_run["reduced"][t]
        assert a["steps_max"] == ref["steps_max"]
        assert a["steps_mean"] == pytest.approx(ref["steps_mean"])
        assert a["rel_residual_max"] == pytest.approx(ref["rel_residual_max"], rel=1e-3, abs=1e-14)


def test_reduce_stats_without_process_group_is_local():
    model, x, _ = setup()
    _, info = model(x)
    r = reduce_stats(info.stats)
    s = info.stats.summary()
    assert r["world_size"] == 1 and r["batch"] == s["batch"] == BATCH
    assert r["steps_max"] == s["steps_max"] and r["steps_mean"] == pytest.approx(s["steps_mean"])
    assert r["rel_residual_max"] == s["rel_residual_max"] and r["nfev_max"] == s["nfev"]
    assert reduce_stats(s)["steps_mean"] == pytest.approx(s["steps_mean"])


def test_reduce_stats_rejects_other_input():
    from deq_core import DeqInputError

    with pytest.raises(DeqInputError, match="SolveStats"):
        reduce_stats([1, 2, 3])
    with pytest.raises(DeqInputError, match="missing"):
        reduce_stats({"steps_max": 3})


def test_average_gradients_and_rank_shard_without_process_group():
    from deq_core.distributed import average_gradients, rank_shard

    p, q = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    p.grad = torch.full((3,), 2.0)
    average_gradients([p, q])          # one process: nothing changes, no gradient is invented
    assert torch.equal(p.grad, torch.full((3,), 2.0)) and q.grad is None
    assert rank_shard(6) == slice(0, 6)


def _rank_raises(out: Path) -> None:
    import os

    if os.environ["RANK"] == "1":
        raise ValueError("boom on rank 1")
    (out / "rank0.ok").write_text(os.environ["WORLD_SIZE"])


def _rank_hangs(out: Path) -> None:
    import time

    time.sleep(60)


def test_run_ranks_reports_a_failing_rank_with_its_traceback(tmp_path):
    with pytest.raises(AssertionError, match=r"(?s)--- rank 1 ---.*ValueError: boom on rank 1"):
        run_ranks(_rank_raises, tmp_path)
    assert (tmp_path / "rank0.ok").read_text() == "2"      # the other rank ran, with torchrun's environment


def test_run_ranks_kills_ranks_past_the_timeout_and_rejects_a_bad_world_size(tmp_path):
    with pytest.raises(AssertionError, match=r"still running after 0.5 s: \['rank0'\]"):
        run_ranks(_rank_hangs, tmp_path, world_size=1, timeout=0.5)
    with pytest.raises(ValueError, match="world_size must be an int >= 1, got 0"):
        run_ranks(_rank_hangs, tmp_path, world_size=0)
