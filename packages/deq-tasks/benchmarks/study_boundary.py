"""Why JIIO stalls when many latents sit on the latent ball's boundary: one trained decoder per image set, JIIO
variants against Adam-40 on the same held-out images (everything scored at a re-solved equilibrium).

Variants: the task's JIIO (``DECODER_JIIO``), the same with ``tangent_step`` (on the boundary, the outward radial
part of the step is dropped), and both without the latent ball (how far the constraint is what stalls). Reports,
per budget, the objective, the fraction of latents on the boundary, and the first budget reaching Adam-40.

    python packages/deq-tasks/benchmarks/study_boundary.py [--sets skimage-patches sklearn-digits] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_tasks import write_datasets

    from deq_tasks._base import Progress
    from deq_tasks.generative import GenerativeTask, adam_latents, compare_latents

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", default=["skimage-patches"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--n-eval", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sets = write_datasets(Path(tmp))
        for name in a.sets:
            t = time.perf_counter()
            task = GenerativeTask(data=sets[name], steps=a.steps, seed=a.seed, vae=False)
            data, _ = task.data_and_model(None)
            model, tr = task.train(data, Progress(0, "", False))
            y = data.test_x[: a.n_eval]
            r = task.radius(model)
            base = adam_latents(model, y, steps=40, radius=r)
            on = float((base["x"].norm(dim=1) >= r * (1 - 1e-4)).float().mean())
            print(json.dumps({"set": name, "train_seconds": time.perf_counter() - t, "train_loss": tr["final_loss"],
                              "adam40_objective": base["trace"][-1], "adam40_on_boundary": on,
                              "decoder_solve_steps": base["forward_steps"]}), flush=True)
            for label, jiio, radius in (("task JIIO", task.config.jiio, r),
                                        ("tangent_step", task.config.jiio.replace(tangent_step=True), r),
                                        ("no ball (JIIO)", task.config.jiio, None)):
                cmp = compare_latents(model, y, y, None, jiio=jiio, budgets=(20, 40, 60, 80, 100), radius=radius)
                reach = cmp["speedup"]["jiio_reaches_adam_objective"]
                print(json.dumps({"set": name, "variant": label, "adam_objective": cmp["adam"]["objective"],
                                  "reach": reach,
                                  "per_budget": [(b["budget"], round(b["objective"], 3), b["latents_on_boundary"],
                                                  round(b["seconds"], 3)) for b in cmp["jiio"]["per_budget"]]}),
                      flush=True)
    print(f"torch threads {torch.get_num_threads()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
