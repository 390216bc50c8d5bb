"""(Implicit)^2 image-generalization benchmark on a CPU.

For each bundled image (natural: camera, astronaut, coffee, chelsea; text: text, page) at 128x128, trained on
the [::2, ::2] pixels and evaluated on [1::2, 1::2], and for each family (SIREN-like, Fourier, Gabor):
implicit 1L-256D vs explicit 1L-256D and 4L-256D, same steps, Adam lr 1e-3, input_scale = half the training points
per side (32). Reports held-out PSNR mean +- std, train PSNR, ms/step, peak memory; then an equal wall-clock
comparison (explicit 4L-256D given the training time the implicit 1L-256D model used: its held-out PSNR read off
its own training curve at that time, which is exactly what a time-budgeted run of the same seed would reach);
then ablations on camera and text (Gabor iMFN): amortized (1 F per step) vs warm start solved to tolerance vs
cold solve every step, and Neumann backward T in {1, 2, 5, inf} (inf = exact implicit adjoint).

Prints one JSON line per run and markdown tables at the end. Run:
    python packages/deq-inr/benchmarks/bench_inr.py            # full (~15 min on an idle 2-core CPU)
    python packages/deq-inr/benchmarks/bench_inr.py --quick    # camera + text, 100 steps
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch

from deq_inr import build_model, default_input_scale, fit, image_data

FAMILIES = {"siren": ("isiren", "siren"), "fourier": ("imfn-fourier", "mfn-fourier"),
            "gabor": ("imfn-gabor", "mfn-gabor")}
NATURAL = ("camera", "astronaut", "coffee", "chelsea")
TEXT = ("text", "page")


def run(image, data, name, layers, steps, seed, log_every, emit, tag, **options):
    torch.manual_seed(seed)
    model = build_model(name, data.in_features, data.channels, width=256, layers=layers,
                        input_scale=default_input_scale(data), **options)
    res = fit(model, data, steps=steps, lr=1e-3, seed=seed, progress=False, log_every=log_every)
    m = res.metrics
    row = {"bench": tag, "image": image, "set": "text" if image in TEXT else "natural", "model": name,
           "size": f"{layers}L-256D", "implicit": bool(getattr(model, "implicit", False)), "steps": m["steps"],
           "heldout_psnr": m["heldout_psnr"], "train_psnr": m["train_psnr"], "psnr": m["psnr"],
           "ms_per_step": m["ms_per_step"], "ms_per_step_median": m["ms_per_step_median"],
           "train_time_s": m["train_time_s"], "peak_mem_mb": m["peak_mem_mb"],
           "solver_steps_per_step": m["solver_steps_per_step"],
           "solver_steps_per_step_late": m["solver_steps_per_step_late"],
           "f_evals_per_step_late": m["f_evals_per_step_late"], **{k: v for k, v in options.items()}}
    row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
    emit(row)
    return row, res.history


def at_time(history, budget):
    """Held-out PSNR of the last evaluation whose training time is within ``budget`` seconds."""
    ok = [h for h in history if h["time_s"] <= budget * 1.0001]
    return (ok[-1]["heldout_psnr"], ok[-1]["step"]) if ok else (float("nan"), 0)


def ms(vals):
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    if not vals:
        return "n/a"
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else f"{vals[0]:.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="camera + text, 100 steps, ablations T in {1, inf} only")
    ap.add_argument("--steps", type=int, default=None, help="training steps per model (default 300; quick 100)")
    ap.add_argument("--ablation-steps", type=int, default=None, help="default 150 (quick 60)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--images", nargs="*", default=None)
    ap.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jsonl", default=None, help="also append the JSON lines to this file")
    ap.add_argument("--from-jsonl", nargs="+", default=None, help="only print the tables from saved JSON lines")
    args = ap.parse_args(argv)
    if args.from_jsonl:
        from_jsonl(args.from_jsonl)
        return 0
    steps = args.steps or (100 if args.quick else 300)
    abl_steps = args.ablation_steps or (60 if args.quick else 150)
    images = args.images or (["camera", "text"] if args.quick else [*NATURAL, *TEXT])
    sink = open(args.jsonl, "a") if args.jsonl else None

    def emit(row):
        line = json.dumps(row)
        print(line, flush=True)
        if sink:
            sink.write(line + "\n")
            sink.flush()

    t_start = time.perf_counter()
    rows, equal_time = [], []
    for image in images:
        data = image_data(image, size=args.size, holdout=0.25)
        for fam in args.families:
            imp, exp = FAMILIES[fam]
            r_i, h_i = run(image, data, imp, 1, steps, args.seed, max(1, steps // 10), emit, "same-steps")
            r_e1, _ = run(image, data, exp, 1, steps, args.seed, max(1, steps // 10), emit, "same-steps")
            r_e4, h_e4 = run(image, data, exp, 4, steps, args.seed, 5, emit, "same-steps")
            rows += [r_i, r_e1, r_e4]
            budget = r_i["train_time_s"]
            p4, k4 = at_time(h_e4, budget)
            eq = {"bench": "equal-time", "image": image, "set": r_i["set"], "family": fam, "budget_s": budget,
                  "implicit_heldout": r_i["heldout_psnr"], "explicit4L_heldout": p4, "explicit4L_steps": k4,
                  "implicit_steps": r_i["steps"]}
            equal_time.append(eq)
            emit(eq)
    ablations = []
    if not args.no_ablations:
        abl_images = [i for i in ("camera", "text") if i in images] or images[:1]
        terms = (1, None) if args.quick else (1, 2, 5, None)
        for image in abl_images:
            data = image_data(image, size=args.size, holdout=0.25)
            for label, opts in (("amortized k=1", {"amortize": True, "reuse_steps": 1}),
                                ("warm start, solve to tol", {"amortize": True, "reuse_steps": None}),
                                ("cold solve every step", {"amortize": False})):
                r, _ = run(image, data, "imfn-gabor", 1, abl_steps, args.seed, max(1, abl_steps // 5), emit,
                           "amortization", **opts)
                ablations.append({"kind": "amortization", "variant": label, **r})
            for t in terms:
                r, _ = run(image, data, "imfn-gabor", 1, abl_steps, args.seed, max(1, abl_steps // 5), emit,
                           "neumann", neumann_terms=t)
                ablations.append({"kind": "neumann", "variant": f"T={'inf' if t is None else t}", **r})
    total = time.perf_counter() - t_start
    print(f"\n## (Implicit)² generalization, {args.size}x{args.size}, train [::2, ::2], test [1::2, 1::2], "
          f"{steps} Adam steps lr 1e-3, torch threads {torch.get_num_threads()}, total {total / 60:.1f} min\n")
    report(rows, equal_time, ablations, args.families)
    if sink:
        sink.close()
    return 0


def report(rows, equal_time, ablations, families=tuple(FAMILIES)):
    """Markdown tables from the JSON rows (also usable on saved JSON lines: ``--from-jsonl``)."""
    abl_steps = ablations[0]["steps"] if ablations else 0
    print("| set | model | size | held-out PSNR | train PSNR | ms/step (median) | peak mem MB | "
          "solver steps/step (late) |")
    print("|---|---|---|---|---|---|---|---|")
    sets = [s for s in ("natural", "text") if any(r["set"] == s for r in rows)]
    for s in sets:
        for fam in families:
            for name, size in ((FAMILIES[fam][0], "1L-256D"), (FAMILIES[fam][1], "1L-256D"),
                               (FAMILIES[fam][1], "4L-256D")):
                sel = [r for r in rows if r["set"] == s and r["model"] == name and r["size"] == size]
                if not sel:
                    continue
                late = [r["solver_steps_per_step_late"] for r in sel if r["solver_steps_per_step_late"] is not None]
                print(f"| {s} | {name} | {size} | {ms([r['heldout_psnr'] for r in sel])} | "
                      f"{ms([r['train_psnr'] for r in sel])} | "
                      f"{statistics.median(r['ms_per_step_median'] for r in sel):.1f} | "
                      f"{statistics.mean(r['peak_mem_mb'] for r in sel):.1f} | "
                      f"{f'{statistics.mean(late):.2f}' if late else '-'} |")
    print("\n### Held-out PSNR differences (dB), implicit 1L-256D minus explicit, mean over images (paired)\n")
    print("| set | family | vs explicit 1L-256D | vs explicit 4L-256D | vs explicit 4L-256D at equal wall-clock |")
    print("|---|---|---|---|---|")
    for s in sets:
        for fam in families:
            imp, exp = FAMILIES[fam]

            def per_image(name, size, s=s):
                return {r["image"]: r["heldout_psnr"] for r in rows
                        if r["set"] == s and r["model"] == name and r["size"] == size}

            def paired(a, b):   # mean over the images that have both runs, and how many
                common = sorted(set(a) & set(b))
                if not common:
                    return "n/a"
                return f"{statistics.mean(a[i] - b[i] for i in common):+.2f} (n={len(common)})"

            eq = [e for e in equal_time if e["set"] == s and e["family"] == fam]
            d_eq = (f"{statistics.mean(e['implicit_heldout'] - e['explicit4L_heldout'] for e in eq):+.2f} "
                    f"(n={len(eq)})") if eq else "n/a"
            imp1 = per_image(imp, "1L-256D")
            print(f"| {s} | {fam} | {paired(imp1, per_image(exp, '1L-256D'))} | "
                  f"{paired(imp1, per_image(exp, '4L-256D'))} | {d_eq} |")
    if ablations:
        print(f"\n### Ablations (Gabor iMFN 1L-256D, {abl_steps} steps)\n")
        print("| image | ablation | variant | held-out PSNR | train PSNR | ms/step (median) | "
              "solver steps/step (late half) | f evals/step (late) |")
        print("|---|---|---|---|---|---|---|---|")
        for a in ablations:
            f_late = a["f_evals_per_step_late"]
            print(f"| {a['image']} | {a['kind']} | {a['variant']} | {a['heldout_psnr']:.2f} | {a['train_psnr']:.2f} | "
                  f"{a['ms_per_step_median']:.1f} | {a['solver_steps_per_step_late']:.2f} | "
                  f"{'-' if f_late is None else f'{f_late:.2f}'} |")


def from_jsonl(paths):
    rows, equal_time, ablations = [], [], []
    for path in paths:
        with open(path) as fh:
            for line in fh:
                r = json.loads(line)
                for k, v in r.items():
                    if v is None and k in ("heldout_psnr", "explicit4L_heldout"):
                        r[k] = float("nan")
                if r["bench"] == "same-steps":
                    rows.append(r)
                elif r["bench"] == "equal-time":
                    equal_time.append(r)
                elif r["bench"] == "amortization":
                    label = ("cold solve every step" if not r.get("amortize") else
                             "amortized k=1" if r.get("reuse_steps") == 1 else "warm start, solve to tol")
                    ablations.append({"kind": "amortization", "variant": label, **r})
                else:
                    t = r.get("neumann_terms")
                    ablations.append({"kind": "neumann", "variant": f"T={'inf' if t is None else t}", **r})
    report(rows, equal_time, ablations)


if __name__ == "__main__":
    sys.exit(main())
