"""Ablations of the implicit INR's training (why iSIREN underfits; issue 15).

Each variant changes one thing against the reference implicit model (1L-256D, spectral norm 0.97, amortized
one-application forward from the previous step's output, Neumann T = 1, Adam lr 1e-3, input_scale = half the
training points per side). Every run reports the train PSNR of the evaluation solve (from zeros, to tolerance),
the train PSNR of the *training* forward (the last step's loss: the amortized iterate the optimizer saw,
unclamped), held-out PSNR, ms/step and the evaluation solve's iterations.

    OMP_NUM_THREADS=1 python packages/deq-inr/benchmarks/ablate_inr.py --size 64 --steps 300 \\
        --images camera astronaut text --seeds 0 1 --variants base siren-4L siren-1L cold lr3e-3 \\
        --jsonl /tmp/ablate.jsonl
    python packages/deq-inr/benchmarks/ablate_inr.py --from-jsonl /tmp/ablate.jsonl   # the table only
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import defaultdict

import torch

from deq_inr import build_model, default_input_scale, fit, image_data, psnr

FAMILY_NAMES = {"siren": ("isiren", "siren"), "fourier": ("imfn-fourier", "mfn-fourier"),
                "gabor": ("imfn-gabor", "mfn-gabor")}

# variant -> (implicit?, layers, width, lr, input-scale factor, model options)
VARIANTS: dict[str, tuple[bool, int, int, float, float, dict]] = {
    "base": (True, 1, 256, 1e-3, 1.0, {}),   # the paper's recipe (lr 1e-3), the reference of every delta
    "explicit-1L": (False, 1, 256, 1e-3, 1.0, {}),
    "explicit-4L": (False, 4, 256, 1e-3, 1.0, {}),
    "cold": (True, 1, 256, 1e-3, 1.0, {"amortize": False}),
    "warm-solve": (True, 1, 256, 1e-3, 1.0, {"reuse_steps": None}),
    "reuse-3": (True, 1, 256, 1e-3, 1.0, {"reuse_steps": 3}),
    "sn-0.99": (True, 1, 256, 1e-3, 1.0, {"spectral_norm": 0.99}),
    "sn-0.9": (True, 1, 256, 1e-3, 1.0, {"spectral_norm": 0.9}),
    "sn-off": (True, 1, 256, 1e-3, 1.0, {"spectral_norm": None}),
    "power-1": (True, 1, 256, 1e-3, 1.0, {"_power": 1}),
    "T0": (True, 1, 256, 1e-3, 1.0, {"neumann_terms": 0}),
    "T2": (True, 1, 256, 1e-3, 1.0, {"neumann_terms": 2}),
    "Tinf": (True, 1, 256, 1e-3, 1.0, {"neumann_terms": None}),
    "lr3e-4": (True, 1, 256, 3e-4, 1.0, {}),
    "lr3e-3": (True, 1, 256, 3e-3, 1.0, {}),
    "scale0.5": (True, 1, 256, 1e-3, 0.5, {}),
    "scale1.41": (True, 1, 256, 1e-3, math.sqrt(2), {}),
    "scale2": (True, 1, 256, 1e-3, 2.0, {}),
    "w-init0.5": (True, 1, 256, 1e-3, 1.0, {"_winit": 0.5}),
    "w-init2": (True, 1, 256, 1e-3, 1.0, {"_winit": 2.0}),
    "explicit-4L-lr3e-3": (False, 4, 256, 3e-3, 1.0, {}),
    "lr3e-3-T2": (True, 1, 256, 3e-3, 1.0, {"neumann_terms": 2}),
    "lr3e-3-Tinf": (True, 1, 256, 3e-3, 1.0, {"neumann_terms": None}),
    "lr3e-3-scale0.5": (True, 1, 256, 3e-3, 0.5, {}),
    "explicit-4L-sn-lr3e-3": (False, 4, 256, 3e-3, 1.0, {"spectral_norm": 0.97}),
    "w512": (True, 1, 512, 3e-3, 1.0, {}),
    "w512-lr1e-3": (True, 1, 512, 1e-3, 1.0, {}),
    "w512-lr1.5e-3": (True, 1, 512, 1.5e-3, 1.0, {}),
    "explicit-1L-sn": (False, 1, 256, 1e-3, 1.0, {"spectral_norm": 0.97}),
    "explicit-4L-sn": (False, 4, 256, 1e-3, 1.0, {"spectral_norm": 0.97}),
    "explicit-4L-scale0.5": (False, 4, 256, 1e-3, 0.5, {}),
    "explicit-4L-sn-scale0.5": (False, 4, 256, 1e-3, 0.5, {"spectral_norm": 0.97}),
    "explicit-1L-lr3e-3": (False, 1, 256, 3e-3, 1.0, {}),
    # second round: schedules, injection frequency scale, T = 2 at the adopted lr (each model at its lr)
    "lr3e-3-cos": (True, 1, 256, 3e-3, 1.0, {"_sched": "cosine"}),
    "lr5e-3-cos": (True, 1, 256, 5e-3, 1.0, {"_sched": "cosine"}),
    "lr1e-2-cos": (True, 1, 256, 1e-2, 1.0, {"_sched": "cosine"}),
    "lr3e-3-T2-cos": (True, 1, 256, 3e-3, 1.0, {"_sched": "cosine", "neumann_terms": 2}),
    "lr3e-3-inj1.41": (True, 1, 256, 3e-3, 1.0, {"_injscale": math.sqrt(2)}),
    "lr3e-3-inj0.71": (True, 1, 256, 3e-3, 1.0, {"_injscale": 1 / math.sqrt(2)}),
    "lr3e-3-scale1.2": (True, 1, 256, 3e-3, 1.2, {}),
    "lr3e-3-scale0.8": (True, 1, 256, 3e-3, 0.8, {}),
    "explicit-4L-cos": (False, 4, 256, 1e-3, 1.0, {"_sched": "cosine"}),
    "explicit-4L-lr2e-3-cos": (False, 4, 256, 2e-3, 1.0, {"_sched": "cosine"}),
    "explicit-4L-lr5e-4": (False, 4, 256, 5e-4, 1.0, {}),
    "explicit-4L-scale1.2": (False, 4, 256, 1e-3, 1.2, {}),
    "explicit-4L-scale0.8": (False, 4, 256, 1e-3, 0.8, {}),
    "w512-lr1.5e-3-cos": (True, 1, 512, 1.5e-3, 1.0, {"_sched": "cosine"}),
    "w512-lr3e-3-cos": (True, 1, 512, 3e-3, 1.0, {"_sched": "cosine"}),
    "lr5e-3": (True, 1, 256, 5e-3, 1.0, {}),
    "lr3e-3-inj2": (True, 1, 256, 3e-3, 1.0, {"_injscale": 2.0}),
    "lr5e-3-inj1.41": (True, 1, 256, 5e-3, 1.0, {"_injscale": math.sqrt(2)}),
    "explicit-4L-inj1.41": (False, 4, 256, 1e-3, 1.0, {"_injscale": math.sqrt(2)}),
    "explicit-4L-inj2.24": (False, 4, 256, 1e-3, 1.0, {"_injscale": math.sqrt(5)}),
    "w512-lr1.5e-3-inj1.41": (True, 1, 512, 1.5e-3, 1.0, {"_injscale": math.sqrt(2)}),
    "lr3e-3-sn0.9": (True, 1, 256, 3e-3, 1.0, {"spectral_norm": 0.9}),
    "lr3e-3-sn0.8": (True, 1, 256, 3e-3, 1.0, {"spectral_norm": 0.8}),
    "lr3e-3-project": (True, 1, 256, 3e-3, 1.0, {"_project": True}),
    "lr1.5e-3-project": (True, 1, 256, 1.5e-3, 1.0, {"_project": True}),
    "w512-lr1e-3-project": (True, 1, 512, 1e-3, 1.0, {"_project": True}),      # the iMFNs' lr
    "w512-lr1.5e-3-project": (True, 1, 512, 1.5e-3, 1.0, {"_project": True}),  # iSIREN's lr at 512D
    # third round: a width rule for the 512-wide models. ``_winit c`` (c >= 1) multiplies the raw
    # ``weight_orig`` by c; ``W = 0.97 W_orig / sigma(W_orig)`` is unchanged, and under Adam (scale-invariant
    # steps) it is the same as giving W alone the rate lr / c, the filters and readout keeping lr.
    "w512-lr3e-3-winit2": (True, 1, 512, 3e-3, 1.0, {"_winit": 2.0}),
    "w512-lr3e-3-winit1.41": (True, 1, 512, 3e-3, 1.0, {"_winit": math.sqrt(2)}),
    "w512-lr1e-3-winit2": (True, 1, 512, 1e-3, 1.0, {"_winit": 2.0}),
    "w512-lr2e-3-winit2": (True, 1, 512, 2e-3, 1.0, {"_winit": 2.0}),
    "w512-lr2e-3": (True, 1, 512, 2e-3, 1.0, {}),
}


@torch.no_grad()
def project_onto_bound(model) -> None:
    """Projected step: rescale each spectrally-normalized ``weight_orig`` onto the bound after the optimizer step,
    so the raw parameter's norm cannot grow (without it ``sigma(W_orig)`` goes from 1.12 to 1.79 in 300 steps at
    lr 3e-3 and the effective step on ``W`` shrinks by that factor). The map is the same either way."""
    for lin in model.block.linears:
        hook = next((h for h in lin._forward_pre_hooks.values() if hasattr(h, "max_norm")), None)
        if hook is not None:
            lin.weight_orig.copy_(hook.compute(lin, update=True))


def _build(family, data, variant, extra):
    implicit, layers, width, lr, sfac, options = VARIANTS[variant]
    options = {**dict(options), **extra}
    power = options.pop("_power", None)
    winit = options.pop("_winit", None)
    injscale = options.pop("_injscale", None)
    options.pop("_sched", None)
    options.pop("_project", None)
    name = FAMILY_NAMES[family][0 if implicit else 1]
    scale = default_input_scale(data) * sfac
    model = build_model(name, data.in_features, data.channels, width=width, layers=layers, input_scale=scale,
                        **(options if implicit else {k: v for k, v in options.items() if k == "spectral_norm"}))
    if winit is not None:
        block = model.block
        with torch.no_grad():
            for lin in block.linears:
                w = getattr(lin, "weight_orig", None)
                (w if w is not None else lin.weight).mul_(winit)
    if injscale is not None:   # the injection filter's frequencies (Omega_0) times this factor
        with torch.no_grad():
            model.filters.injection.linear.weight.mul_(injscale)
    if power is not None:   # a fixed number of warm-started power iterations per step (no convergence test)
        for lin in model.block.linears:
            for h in lin._forward_pre_hooks.values():
                if hasattr(h, "n_power_iterations"):
                    h.n_power_iterations, h.max_power_iterations, h.tol = power, power, float("inf")
    return name, layers, width, lr, scale, model


def run_one(family, image, seed, variant, args, emit, extra=None):
    data = image_data(image, size=args.size, holdout=0.25)
    torch.manual_seed(seed)
    name, layers, width, lr, scale, model = _build(family, data, variant, extra or {})
    opts = {**VARIANTS[variant][5], **(extra or {})}
    schedule = opts.get("_sched", "constant")
    res = fit(model, data, steps=args.steps, lr=lr, seed=seed, progress=False, log_every=max(1, args.steps // 5),
              measure_memory=False, schedule=schedule, after_step=project_onto_bound if opts.get("_project") else None)
    m = res.metrics
    loss = m["final_loss"]
    eval_steps = tight = None
    if getattr(model, "implicit", False):
        model.eval()
        with torch.no_grad():
            _, info = model(data.coords)
        eval_steps = int(info.stats.steps.max())
        with torch.no_grad():   # the same model solved to a 100x tighter tolerance: is rtol 1e-3 enough?
            filt = model.filters(data.coords)
            z, _ = model.deq(filt, z0=model.block.init_state(filt), options=dict(rtol=1e-5, atol=1e-8, max_steps=500))
            pred = model.readout(z)
        tight = psnr(pred[data.test_idx], data.values[data.test_idx], data.kind)
        model.train()
    w_norm = None
    if hasattr(model, "block"):
        with torch.no_grad():
            model.block(model.block.init_state(model.filters(data.coords[:2])), model.filters(data.coords[:2]))
            w_norm = max(float(torch.linalg.matrix_norm(lin.weight, ord=2)) for lin in model.block.linears)
    row = {"variant": variant, "family": family, "image": image, "seed": seed, "size": args.size,
           "steps": m["steps"], "model": name, "layers": layers, "width": width, "lr": lr, "input_scale": scale,
           "train_psnr": m["train_psnr"], "train_forward_psnr": 10 * math.log10(4 / loss) if loss > 0 else None,
           "heldout_psnr": m["heldout_psnr"], "ms_per_step": m["ms_per_step_median"], "eval_solve_steps": eval_steps,
           "params": m["params"], "w_norm": w_norm,
           "heldout_psnr_tight": tight, "schedule": schedule, **(extra or {})}
    emit(row)
    return row


def table(rows):
    groups = defaultdict(list)
    for r in rows:
        groups[(r["family"], r["variant"])].append(r)
    base = {(r["family"], r["image"], r["seed"]): r for r in rows if r["variant"] == "base"}
    print("| family | variant | n | train PSNR (eval solve) | train PSNR (training forward) | held-out PSNR | "
          "Δ held-out vs base (paired, mean ± sd, min) | Δ train vs base | eval solve iters | ms/step | "
          "held-out, eval solved to rtol 1e-5 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    def ms(v):
        v = [x for x in v if x is not None and math.isfinite(x)]
        if not v:
            return "-"
        return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"

    order = {v: i for i, v in enumerate(VARIANTS)}   # bench rows ('<key> (bench rows)') after the variants
    for (fam, var), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], len(order)),
                                                                 kv[0][1])):
        d_h = [r["heldout_psnr"] - base[k]["heldout_psnr"] for r in rs
               if (k := (fam, r["image"], r["seed"])) in base]
        d_t = [r["train_psnr"] - base[k]["train_psnr"] for r in rs if (k := (fam, r["image"], r["seed"])) in base]
        dh = f"{ms(d_h)}, min {min(d_h):+.2f}" if d_h and var != "base" else "-"
        it = [r.get("eval_solve_steps") for r in rs if r.get("eval_solve_steps") is not None]
        step_ms = [v for r in rs if (v := r.get("ms_per_step_median", r.get("ms_per_step"))) is not None]
        print(f"| {fam} | {var} | {len(rs)} | {ms([r['train_psnr'] for r in rs])} | "
              f"{ms([r.get('train_forward_psnr') for r in rs])} | {ms([r['heldout_psnr'] for r in rs])} | {dh} | "
              f"{ms(d_t) if d_t and var != 'base' else '-'} | {ms(it)} | "
              f"{f'{statistics.median(step_ms):.0f}' if step_ms else '-'} | "
              f"{ms([r.get('heldout_psnr_tight') for r in rs])} |")


def read_jsonl(paths):
    """The JSON lines of ``paths`` (files closed)."""
    rows = []
    for p in paths:
        with open(p) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def versus_bench(rows, bench_rows, ref="i1L-512D", other="e4L-256D"):
    """Markdown: each ablation row against the benchmark's ``ref`` and ``other`` runs (``bench_inr.py`` JSON lines,
    300-step same-steps rows) on the same family, image and seed; then the mean per (family, variant).

    Returns ``{(family, variant): {"d_train": [...], "d_heldout": [...], "vs_other": [...], "ref_vs_other": [...]}}``
    (``d_*``: variant minus ``ref``; ``vs_other``: variant minus ``other``, held-out).
    """
    bench = {(r["family"], r["image"], r["seed"], r["key"]): r for r in bench_rows
             if r["bench"] == "same-steps" and r["steps"] == 300}
    print(f"| family | variant | image | train / held-out | Δ train / Δ held-out vs {ref} at its default | "
          f"held-out − {other} (default's) |")
    print("|---|---|---|---|---|---|")
    agg = defaultdict(lambda: defaultdict(list))
    for r in rows:
        k = (r["family"], r["image"], r["seed"])
        d, e = bench.get((*k, ref)), bench.get((*k, other))
        if d is None or e is None:
            continue
        dt, dh = r["train_psnr"] - d["train_psnr"], r["heldout_psnr"] - d["heldout_psnr"]
        de, de0 = r["heldout_psnr"] - e["heldout_psnr"], d["heldout_psnr"] - e["heldout_psnr"]
        print(f"| {r['family']} | {r['variant']} | {r['image']} s{r['seed']} | {r['train_psnr']:.2f} / "
              f"{r['heldout_psnr']:.2f} | {dt:+.2f} / {dh:+.2f} | {de:+.2f} ({de0:+.2f}) |")
        a = agg[(r["family"], r["variant"])]
        for name, v in (("d_train", dt), ("d_heldout", dh), ("vs_other", de), ("ref_vs_other", de0)):
            a[name].append(v)
    print(f"\n| family | variant | n | mean Δ train | mean Δ held-out (min) | held-out − {other}: variant / {ref} |")
    print("|---|---|---|---|---|---|")
    m = statistics.mean
    for (fam, var), a in sorted(agg.items()):
        print(f"| {fam} | {var} | {len(a['d_heldout'])} | {m(a['d_train']):+.2f} | {m(a['d_heldout']):+.2f} "
              f"({min(a['d_heldout']):+.2f}) | {m(a['vs_other']):+.2f} / {m(a['ref_vs_other']):+.2f} |")
    return {k: dict(v) for k, v in agg.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="*", default=["siren"], choices=list(FAMILY_NAMES))
    ap.add_argument("--variants", nargs="*", default=["base", "explicit-1L", "explicit-4L"], choices=list(VARIANTS))
    ap.add_argument("--images", nargs="*", default=["camera"])
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--jsonl", default=None)
    ap.add_argument("--from-jsonl", nargs="+", default=None)
    ap.add_argument("--versus", nargs="+", default=None,
                    help="with --from-jsonl: compare each row with these bench_inr.py JSON lines' i1L-512D and "
                         "e4L-256D runs (same family, image, seed) instead of the table against 'base'; "
                         "--from-jsonl may also hold bench_inr.py rows (named '<key> (bench rows)')")
    args = ap.parse_args(argv)
    if args.from_jsonl:
        rows = read_jsonl(args.from_jsonl)
        # bench_inr.py rows (no "variant") can be compared too: e.g. a model's runs after a change of its default
        rows = [r if "variant" in r else {**r, "variant": f"{r['key']} (bench rows)"} for r in rows]
        last = {(r["family"], r["variant"], r["image"], r["seed"], r["size"], r["steps"]): r for r in rows}
        if args.versus:
            versus_bench(list(last.values()), read_jsonl(args.versus))
        else:
            table(list(last.values()))   # a repeated run counts once (the last one)
        return 0
    sink = open(args.jsonl, "a") if args.jsonl else None
    rows = []

    def emit(row):
        line = json.dumps(row)
        print(line, flush=True)
        if sink:
            sink.write(line + "\n")
            sink.flush()

    t0 = time.perf_counter()
    for fam in args.families:
        for image in args.images:
            for seed in args.seeds:
                for var in args.variants:
                    rows.append(run_one(fam, image, seed, var, args, emit))
    print(f"\n{len(rows)} runs in {(time.perf_counter() - t0) / 60:.1f} min, {args.size}x{args.size}, "
          f"{args.steps} steps\n")
    table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
