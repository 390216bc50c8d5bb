"""Benchmark of the JIIO tasks: wall time for JIIO and for each task's baseline to reach the same objective.

Same trained model, same batch, ``time.perf_counter`` around the whole inner loop (CPU):

* generative: latents of 32 held-out MNIST-5k digits for the MDEQ-style decoder (trained here briefly through
  JIIO, or ``--checkpoint`` = a ``model.safetensors`` of ``deq tasks run generative``). Baseline Adam-40 (lr 1.0,
  each step a plain DEQ forward solve + implicit backward, Anderson m = 5, rtol 1e-4). Target = Adam-40's final
  mean objective (sum of squared errors per image); JIIO's time is re-measured for the smallest budget whose
  returned objective reaches it. If JIIO (budget <= 100) never reaches it, the reverse is reported too: the time
  Adam needs to reach JIIO-100's objective.
* inverse: the same model, inpainting with one 8x8 block hole and denoising (sigma 0.2), objective on the
  visible / noisy pixels, PSNR vs the clean digits ([-1, 1] convention: -10 log10 MSE).
* adversarial, meta-learning: the sections of ``bench_adv_meta.py`` (same directory).

Prints JSON lines and a markdown table like the paper's tables 1-5.

    python packages/deq-tasks/benchmarks/bench_tasks.py [--quick] [--only generative|inverse|adversarial|meta-learning]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

SECTIONS = ("generative", "inverse", "adversarial", "meta-learning")


def _line(rec: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(rec), flush=True)
    return rec


def _model(quick: bool, checkpoint: str | None):
    from deq_tasks.data import load_digits
    from deq_tasks.generative import build_decoder, default_jiio_config, load_decoder, train_decoder

    data = load_digits("mnist", n_train=2000, n_test=200, seed=0)
    t = time.perf_counter()
    if checkpoint:
        model, _ = load_decoder(checkpoint)
        info = {"loaded": checkpoint}
    else:
        model = build_decoder(size=28, latent_dim=32, seed=0)
        steps = 30 if quick else 80
        logs = train_decoder(model, data.train_x, steps=steps, batch=32, lr=2e-3,
                             config=default_jiio_config(30, alpha=0.1, alpha_final=0.03), seed=0)
        info = {"train_steps": steps, "train_loss_first": logs[0]["loss"], "train_loss_last": logs[-1]["loss"]}
    info["train_seconds"] = time.perf_counter() - t
    return model.eval(), data, info


def _compare(model, target_img, clean, mask, *, label: str, batch: int, alpha: float, adam_lr: float,
             max_budget: int = 100) -> list[dict[str, Any]]:
    from deq_tasks.data import psnr
    from deq_tasks.generative import adam_latents, default_jiio_config, jiio_latents

    recs = []
    with torch.no_grad():
        _, info = model(torch.zeros(batch, model.latent_dim))
    plain_iters = float(info.stats.steps.float().mean())
    # warm-up (first-call kernel selection) so neither method pays it
    jiio_latents(model, target_img[:2], None if mask is None else mask[:2], default_jiio_config(3, alpha=alpha))
    adam_latents(model, target_img[:2], None if mask is None else mask[:2], steps=1, lr=adam_lr)

    base = adam_latents(model, target_img, mask, steps=40, lr=adam_lr)
    t_adam = base["time_trace"][-1]
    target = base["trace"][-1]
    recs.append(_line({"bench": label, "method": "Adam-40", "batch": batch, "seconds": t_adam,
                       "objective": target, "psnr": psnr(base["image"], clean), "lr": adam_lr,
                       "plain_deq_iterations": base["forward_steps"]}))
    cfg = default_jiio_config(max_budget, alpha=alpha, alpha_final=alpha / 3)
    full = jiio_latents(model, target_img, mask, cfg)
    t_full = float(full.stats["time_trace"][-1])
    obj_trace = full.stats["objective_trace"].mean(1)
    with torch.no_grad():
        img_full = model.head(full.z)
    recs.append(_line({"bench": label, "method": f"JIIO-{max_budget}", "batch": batch, "seconds": t_full,
                       "objective": float(full.objective.mean()), "psnr": psnr(img_full, clean),
                       "speedup_vs_adam40": t_adam / t_full, "kkt": {k: float(v.mean()) for k, v in full.kkt.items()}}))
    hit = (obj_trace <= target).nonzero().flatten()
    chosen = None
    if len(hit):
        k = max(int(hit[0]), 1)
        for budget in sorted({k, min(max_budget, k + 5), max_budget}):
            t = time.perf_counter()
            res = jiio_latents(model, target_img, mask, default_jiio_config(budget, alpha=alpha, alpha_final=alpha / 3))
            secs = time.perf_counter() - t
            if float(res.objective.mean()) <= target:
                with torch.no_grad():
                    img = model.head(res.z)
                chosen = _line({"bench": label, "method": f"JIIO-{budget}", "batch": batch, "seconds": secs,
                                "objective": float(res.objective.mean()), "psnr": psnr(img, clean),
                                "speedup_vs_adam40": t_adam / secs, "reaches_adam40_objective": True})
                recs.append(chosen)
                break
    reverse = None
    jiio_final = float(full.objective.mean())
    adam_hit = [i for i, v in enumerate(base["trace"]) if v <= jiio_final]
    if adam_hit:
        reverse = base["time_trace"][adam_hit[0]]
    recs.append(_line({
        "bench": label, "summary": True, "baseline": "Adam-40", "baseline_seconds": t_adam, "target_objective": target,
        "method": None if chosen is None else chosen["method"],
        "speedup": None if chosen is None else chosen["speedup_vs_adam40"],
        "jiio_100_objective": jiio_final,
        "adam_seconds_to_reach_jiio_100": reverse,
        "speedup_at_jiio_100_objective": None if reverse is None else reverse / t_full,
        "plain_deq_iterations_per_solve": plain_iters, "target": 9.0}))
    return recs


def bench_generative(quick: bool, checkpoint: str | None = None, model_data=None) -> list[dict[str, Any]]:
    model, data, info = model_data or _model(quick, checkpoint)
    _line({"bench": "generative", "model": info})
    B = 16 if quick else 32
    y = data.test_x[:B]
    return _compare(model, y, y, None, label="generative", batch=B, alpha=0.1, adam_lr=1.0)


def bench_inverse(quick: bool, checkpoint: str | None = None, model_data=None) -> list[dict[str, Any]]:
    from deq_tasks.inverse import make_corruption

    model, data, info = model_data or _model(quick, checkpoint)
    B = 16 if quick else 32
    y = data.test_x[:B]
    g = torch.Generator().manual_seed(1)
    recs = []
    for name, corrupt in (("inverse-block", make_corruption("block")),
                          ("inverse-denoise", make_corruption("none", sigma=0.2))):
        obs, mask = corrupt(y, g)
        recs += _compare(model, obs, y, mask, label=name, batch=B, alpha=0.1, adam_lr=1.0)
    return recs


def markdown(recs: list[dict[str, Any]]) -> str:
    rows = ["| task | method | batch | ms | objective | PSNR [-1,1] (dB) | speed-up vs Adam-40 |",
            "|---|---|---|---|---|---|---|"]
    for r in recs:
        if r.get("summary") or "method" not in r:
            continue
        sp = r.get("speedup_vs_adam40")
        rows.append(f"| {r['bench']} | {r['method']} | {r['batch']} | {1000 * r['seconds']:.0f} | {r['objective']:.2f} | "
                    f"{r['psnr']:.2f} | {'' if sp is None else f'{sp:.2f}x'} |")
    rows.append("")
    for r in recs:
        if r.get("summary"):
            if r["speedup"] is not None:
                sp = f"**{r['speedup']:.2f}x** ({r['method']} reaches Adam-40's objective {r['target_objective']:.2f})"
            else:
                sp = f"n/a: JIIO-100 stops at {r['jiio_100_objective']:.2f} > Adam-40's {r['target_objective']:.2f}"
                if r["speedup_at_jiio_100_objective"] is not None:
                    sp += (f"; Adam needs {r['adam_seconds_to_reach_jiio_100']:.2f} s to reach JIIO-100's objective: "
                           f"{r['speedup_at_jiio_100_objective']:.2f}x")
            rows.append(f"- {r['bench']}: {sp}; plain DEQ solve {r['plain_deq_iterations_per_solve']:.1f} iterations "
                        f"(target >= {r['target']}x)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller training and batches")
    p.add_argument("--only", choices=SECTIONS, action="append", default=None, help="run only these sections")
    p.add_argument("--checkpoint", default=None, help="decoder model.safetensors (generative / inverse)")
    p.add_argument("--json-out", default=None, help="also write all JSON records to this file")
    a = p.parse_args(argv)
    which = tuple(a.only or SECTIONS)
    t0 = time.perf_counter()
    recs: list[dict[str, Any]] = []
    if "generative" in which or "inverse" in which:
        md = _model(a.quick, a.checkpoint)
        if "generative" in which:
            recs += bench_generative(a.quick, model_data=md)
        if "inverse" in which:
            recs += bench_inverse(a.quick, model_data=md)
    other = tuple(w for w in which if w in ("adversarial", "meta-learning"))
    extra_md = ""
    if other:
        sys.path.insert(0, str(Path(__file__).parent))
        import bench_adv_meta

        more = bench_adv_meta.run_benchmark(a.quick, other)
        extra_md = bench_adv_meta.markdown(more)
        recs += more
    print()
    print(markdown([r for r in recs if r.get("bench", "").startswith(("generative", "inverse"))]))
    if extra_md:
        print()
        print(extra_md)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s, torch threads {torch.get_num_threads()}")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(recs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
