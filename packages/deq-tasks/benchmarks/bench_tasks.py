"""Benchmark of the JIIO tasks: wall time for JIIO and for each task's baseline to reach the same objective.

Same trained model, same images, same latent ball, ``time.perf_counter`` around the whole inner loop (CPU); JIIO's
latents are scored on an equilibrium re-solved at ``x*`` (timed as part of JIIO), as Adam's are
(:func:`deq_tasks.generative.compare_latents`).

* ``generative``, ``inverse``: the MNIST decoder of ``deq tasks run generative`` (trained here, or
  ``--checkpoint``); latents of 32 held-out digits; inpainting with an 8x8 block hole and denoising (sigma 0.2).
* ``datasets`` (the issue's section 4): ``deq tasks run generative --data PATH`` with the task's defaults on image
  sets it was not tuned on, written to files first: scikit-learn's 8x8 digits (.npz), 16x16 patches of
  scikit-image's photographs (.npy), scikit-image's LFW faces (a folder of 25x25 PNGs, padded to 28), and the
  built-in MNIST-5k the defaults were tuned on, over ``--seeds``. Per set and seed: the decoder's own solve length
  (mean Anderson iterations inside Adam's solves), Adam-40's objective and time, the first JIIO budget that reaches
  it, its time and the speed-up; the weakest set last.
* ``adversarial``, ``meta-learning``: the sections of ``bench_adv_meta.py`` (same directory).

Prints JSON lines and markdown tables.

    python packages/deq-tasks/benchmarks/bench_tasks.py [--quick] [--only SECTION ...] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

SECTIONS = ("generative", "inverse", "datasets", "adversarial", "meta-learning")
BUDGETS = (20, 40, 60, 80, 100)


def _line(rec: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(rec, default=str), flush=True)
    return rec


def _model(quick: bool, checkpoint: str | None):
    from deq_tasks.generative import GenerativeTask

    task = GenerativeTask(steps=120 if quick else 200)
    data, model = task.data_and_model(checkpoint)
    t = time.perf_counter()
    if model is None:
        from deq_tasks._base import Progress

        model, tr = task.train(data, Progress(0, "train", False))
        info = {"train_steps": tr["steps"], "train_loss_first": tr["first_loss"], "train_loss_last": tr["final_loss"]}
    else:
        info = {"loaded": checkpoint}
    info["train_seconds"] = time.perf_counter() - t
    return task, model.eval(), data, info


def _summary(label: str, cmp: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    reach = cmp["speedup"]["jiio_reaches_adam_objective"]
    return _line({"bench": label, "summary": True, **(extra or {}),
                  "decoder_solve_steps": cmp["adam"]["decoder_solve_steps_mean"],
                  "decoder_converged_fraction": cmp["adam"]["decoder_converged_fraction"],
                  "void": cmp["void"],
                  "adam_objective": cmp["adam"]["objective"], "adam_seconds": cmp["adam"]["seconds"],
                  "jiio_budget_reaching_adam": None if reach is None else reach["budget"],
                  "jiio_seconds": None if reach is None else reach["seconds"],
                  "speedup": None if reach is None else reach["speedup"],
                  "best_jiio_objective": min(r["objective"] for r in cmp["jiio"]["per_budget"]),
                  "boundary_at_100": cmp["jiio"]["per_budget"][-1]["latents_on_boundary"],
                  "per_budget": [{k: r[k] for k in ("budget", "objective", "seconds", "speedup_at_equal_objective")}
                                 for r in cmp["jiio"]["per_budget"]]})


def bench_latents(quick: bool, checkpoint: str | None, which: tuple[str, ...]) -> list[dict[str, Any]]:
    from deq_tasks.generative import compare_latents
    from deq_tasks.inverse import make_corruption

    task, model, data, info = _model(quick, checkpoint)
    _line({"bench": "mnist-decoder", "model": info})
    y = data.test_x[: 16 if quick else 32]
    r = task.radius(model)
    recs = []
    problems = []
    if "generative" in which:
        problems.append(("generative", y, None))
    if "inverse" in which:
        g = torch.Generator().manual_seed(1)
        for name, corrupt in (("inverse-block", make_corruption("block")),
                              ("inverse-denoise", make_corruption("none", sigma=0.2))):
            obs, mask = corrupt(y, g)
            problems.append((name, obs, mask))
    for name, obs, mask in problems:
        cmp = compare_latents(model, obs, y, mask, jiio=task.config.jiio, budgets=BUDGETS, radius=r)
        cmp.pop("images")
        recs.append(_summary(name, cmp, {"batch": len(y)}))
    return recs


def write_datasets(folder: Path) -> dict[str, str]:
    """Image sets that ship with scikit-learn / scikit-image, written as a user would hand them to ``--data``."""
    from PIL import Image
    from skimage import data as skd
    from skimage.color import rgb2gray
    from skimage.transform import rescale
    from sklearn.datasets import load_digits

    out: dict[str, str] = {}
    np.savez(folder / "digits.npz", x=load_digits().images)                     # 1797 x 8 x 8, values 0-16
    out["sklearn-digits"] = str(folder / "digits.npz")
    patches = []
    for name in ("camera", "astronaut", "coffee", "chelsea", "rocket", "text", "page", "moon"):
        img = getattr(skd, name)()
        img = rgb2gray(img) if img.ndim == 3 else img / 255.0
        img = rescale(img, 0.5, anti_aliasing=True)
        h, w = img.shape
        patches += [img[i:i + 16, j:j + 16] for i in range(0, h - 15, 16) for j in range(0, w - 15, 16)]
    np.save(folder / "patches.npy", np.stack(patches).astype(np.float32))
    out["skimage-patches"] = str(folder / "patches.npy")
    faces = folder / "lfw"
    faces.mkdir(exist_ok=True)
    for i, im in enumerate(skd.lfw_subset()):
        Image.fromarray((np.clip(im, 0, 1) * 255).astype(np.uint8)).save(faces / f"{i:03d}.png")
    out["skimage-lfw-faces"] = str(faces)
    out["mnist (tuned on)"] = "mnist"
    return out


def bench_datasets(quick: bool, seeds: tuple[int, ...], only: tuple[str, ...] | None = None,
                   tangent_step: bool = False) -> list[dict[str, Any]]:
    from deq_tasks.generative import DECODER_JIIO, GenerativeTask

    recs = []
    with tempfile.TemporaryDirectory() as tmp:
        sets = write_datasets(Path(tmp))
        for label, path in sets.items():
            if only and not any(label.startswith(o) for o in only):
                continue
            for seed in seeds:
                t = time.perf_counter()
                task = GenerativeTask(data=path, seed=seed, vae=False, n_eval=16 if quick else 32,
                                      steps=60 if quick else 200, n_samples_fit=100, eval_budgets=BUDGETS,
                                      jiio=DECODER_JIIO.replace(tangent_step=tangent_step))
                m = task.run(Path(tmp) / f"run-{len(recs)}", progress=False)
                recs.append(_summary("datasets", m["comparison"], {
                    "set": label, "seed": seed, "tangent_step": tangent_step, "decoder_size": m["data"]["decoder_size"],
                    "n_train": m["data"]["n_train"], "train_final_loss": m["training"]["final_loss"],
                    "run_seconds": time.perf_counter() - t}))
    return recs


def markdown(recs: list[dict[str, Any]]) -> str:
    rows = ["| problem | set | seed | decoder solve (Anderson its in Adam's solves) | Adam-40 objective | Adam-40 s "
            "| first JIIO budget reaching it | its s | speed-up | best JIIO objective (T <= 100) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        if not r.get("summary"):
            continue
        b = r["jiio_budget_reaching_adam"]
        secs = "-" if b is None else f"{r['jiio_seconds']:.2f}"
        sp = "-" if b is None else f"{r['speedup']:.2f}x"
        if r.get("void"):
            sp += f" (void: decoder converged in {r['decoder_converged_fraction']:.1%} of Adam's solves)"
        rows.append(f"| {r['bench']} | {r.get('set', 'mnist')} | {r.get('seed', 0)} | {r['decoder_solve_steps']:.1f} "
                    f"| {r['adam_objective']:.2f} | {r['adam_seconds']:.2f} | {'never' if b is None else b} | {secs} "
                    f"| {sp} | {r['best_jiio_objective']:.2f} |")
    rows_ds = [r for r in recs if r.get("bench") == "datasets" and r.get("summary")]
    ds = [r for r in rows_ds if not r.get("void")]
    void = [r for r in rows_ds if r.get("void")]
    if void:
        rows.append("")
        rows.append("void (the decoder's own solve does not converge; left out of 'weakest'): "
                    + ", ".join(f"{r['set']} seed {r['seed']}" for r in void))
    if ds:
        weakest = min(ds, key=lambda r: -1.0 if r["speedup"] is None else r["speedup"])
        rows.append("")
        rows.append(f"weakest: {weakest['set']} (seed {weakest['seed']}): "
                    + ("JIIO never reaches Adam-40's objective within 100 iterations"
                       if weakest["speedup"] is None else f"{weakest['speedup']:.2f}x"))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller training and batches")
    p.add_argument("--only", choices=SECTIONS, action="append", default=None, help="run only these sections")
    p.add_argument("--checkpoint", default=None, help="decoder model.safetensors (generative / inverse)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the datasets section")
    p.add_argument("--sets", nargs="+", default=None, help="datasets section: only these sets (name prefixes)")
    p.add_argument("--tangent-step", action="store_true", help="datasets section: JIIO with tangent_step")
    p.add_argument("--json-out", default=None, help="also write all JSON records to this file")
    a = p.parse_args(argv)
    which = tuple(a.only or SECTIONS)
    t0 = time.perf_counter()
    recs: list[dict[str, Any]] = []
    if "generative" in which or "inverse" in which:
        recs += bench_latents(a.quick, a.checkpoint, which)
    if "datasets" in which:
        recs += bench_datasets(a.quick, tuple(a.seeds), tuple(a.sets) if a.sets else None, a.tangent_step)
    extra_md = ""
    other = tuple(w for w in which if w in ("adversarial", "meta-learning"))
    if other:
        sys.path.insert(0, str(Path(__file__).parent))
        import bench_adv_meta

        more = bench_adv_meta.run_benchmark(a.quick, other)
        extra_md = bench_adv_meta.markdown(more)
        recs += more
    print()
    print(markdown(recs))
    if extra_md:
        print()
        print(extra_md)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s, torch threads {torch.get_num_threads()}")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(recs, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
