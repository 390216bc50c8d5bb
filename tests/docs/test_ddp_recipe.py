"""The torchrun command of docs/how-to/train-on-several-gpus.md, run as written on CPU (2 gloo processes)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

from _snippets import DOCS, ROOT

from deq_core.testing import run_torchrun

PAGE = DOCS / "how-to" / "train-on-several-gpus.md"


def documented_command() -> list[str]:
    text = PAGE.read_text(encoding="utf-8")
    commands = re.findall(r"^torchrun .*$", text, re.M)
    assert commands, f"{PAGE} shows no torchrun command"
    return shlex.split(commands[0])


def test_recipe_runs_with_two_gloo_processes(tmp_path):
    argv = documented_command()
    assert argv[0] == "torchrun" and "examples/ddp_train.py" in argv
    # same launcher, from this interpreter; the script path resolved against the repository root
    argv = [str(ROOT / a) if a.endswith(".py") else a for a in argv[1:]]
    proc = run_torchrun(argv, cwd=tmp_path)
    assert "(2 processes" in proc.stdout
    out = tmp_path / argv[argv.index("--out") + 1]
    log = json.loads((out / "log.json").read_text())
    assert all(r["world_size"] == 2 and r["batch"] == 128 for r in log)  # global batch = 2 x 64
    first, last = log[0]["loss"], sum(r["loss"] for r in log[-5:]) / 5
    assert last < 0.7 * first, (first, last)

    import torch

    from deq_core import load

    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from ddp_train import Classifier
    finally:
        sys.path.pop(0)
    model = Classifier()
    _, config = load(out / "model.safetensors", model)
    assert config["world_size"] == 2
    logits, info = model(torch.rand(3, 64))
    assert logits.shape == (3, 10) and info.result.ok


_INR_WORKER = '''
import gc, sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from deq_inr import build_model, image_data

def setup():
    torch.manual_seed(0)
    xs, ys = image_data("camera", size=32).train()
    return build_model("isiren", 2, 1, width=32, input_scale=16.0).double(), xs.double(), ys.double()

def train(model, xs, ys):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses, steps = [], []
    for _ in range(6):
        y, info = model(xs, cache_key="train")        # amortized: warm start from this rank's previous step
        loss = (y - ys).square().mean()
        opt.zero_grad(); loss.backward(); opt.step()  # truncated Neumann backward, then DDP's all-reduce
        losses.append(loss.item()); steps.append(int(info.stats.steps.max()))
    return {"losses": losses, "steps": steps, "p": torch.cat([p.detach().flatten() for p in model.parameters()])}

out = sys.argv[1]
if len(sys.argv) > 2:
    torch.save(train(*setup()), out + "/single.pt")
else:
    dist.init_process_group("gloo"); r = dist.get_rank()
    model, xs, ys = setup(); n = xs.shape[0] // 2
    ddp = DDP(model)
    torch.save(train(ddp, xs[r * n:(r + 1) * n], ys[r * n:(r + 1) * n]), f"{out}/rank{r}.pt")
    del ddp; gc.collect(); dist.barrier(); dist.destroy_process_group()
'''


def test_inr_model_under_ddp_matches_one_process(tmp_path):
    """An amortized iSIREN (deq-inr) with Neumann backward under DDP = one process on the full batch."""
    import torch

    script = tmp_path / "inr_worker.py"
    script.write_text(_INR_WORKER)
    run_torchrun(["--standalone", "--nproc_per_node=2", script, tmp_path])
    argv = [sys.executable, str(script), str(tmp_path), "single"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{shlex.join(argv)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    r0, r1, one = (torch.load(tmp_path / f"{n}.pt") for n in ("rank0", "rank1", "single"))
    assert torch.equal(r0["p"], r1["p"])
    assert torch.allclose(r0["p"], one["p"], rtol=0, atol=1e-9)
    curve = [(a + b) / 2 for a, b in zip(r0["losses"], r1["losses"])]
    assert torch.allclose(torch.tensor(curve), torch.tensor(one["losses"]), rtol=0, atol=1e-9)
    assert r0["steps"][1:] == [1] * 5  # amortized: one application per step after the first solve
