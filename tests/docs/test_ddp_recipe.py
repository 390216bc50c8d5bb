"""The torchrun command of docs/how-to/train-on-several-gpus.md, run as written on CPU (2 gloo processes)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

from _snippets import DOCS, ROOT

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
    argv = [sys.executable, "-m", "torch.distributed.run", *[str(ROOT / a) if a.endswith(".py") else a
                                                             for a in argv[1:]]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{shlex.join(argv)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
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
