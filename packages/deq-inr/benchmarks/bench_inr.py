"""(Implicit)^2 image-generalization benchmark (CPU or GPU), with paired differences, spread and equal wall-clock.

Protocol (issue 15): for each image (natural: camera, astronaut, coffee, chelsea, rocket, coins; text: text, page),
each seed and each family (SIREN-like, Fourier, Gabor), train on the [::2, ::2] pixels of a ``--size`` crop, evaluate
on [1::2, 1::2]: implicit 1L-256D and 1L-512D against explicit 1L-256D, 1L-512D and 4L-256D, same steps, each
model at its library defaults (implicit: spectral norm 0.97; explicit: unconstrained) and the explicit 4L-256D also
with spectral norm 0.97 as in the authors' image configs ("e4L-256D-sn"); input_scale = half the training points
per side. Reported per model: held-out and
train PSNR mean +- std over images x seeds, ms/step, peak training memory, parameters; per comparison the paired
held-out difference over (image, seed) pairs with its std, minimum and win count, and over images (seeds averaged
first) with a 95 % t interval; and equal wall-clock (explicit
4L-256D given the time the implicit 1L-256D model trained, read off its own evaluation curve, logged every 5 steps).
``--long-steps`` adds a longer run on ``--long-images``; ``--media`` adds an audio row (``--audio WAV``, or by
default a synthesized chirp + harmonics of 4 000 samples; even/odd split) and a video row (scikit-image's bundled
24-frame GIF, stride-2 split).

Prints one JSON line per run and markdown tables at the end. Run (from the repository root):
    python packages/deq-inr/benchmarks/bench_inr.py --quick                      # camera + text, 64^2, 100 steps
    python packages/deq-inr/benchmarks/bench_inr.py --jsonl /tmp/b.jsonl         # the full protocol (hours on CPU)
    python packages/deq-inr/benchmarks/bench_inr.py --from-jsonl /tmp/b.jsonl    # the tables only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections import defaultdict

import torch

from deq_inr import (
    RENDERED_TEXT_PREFIX,
    audio_data,
    build_model,
    default_input_scale,
    fit,
    image_data,
    interpolation_heldout_psnr,
    plot_reconstruction,
    video_data,
)

FAMILIES = {"siren": ("isiren", "siren"), "fourier": ("imfn-fourier", "mfn-fourier"),
            "gabor": ("imfn-gabor", "mfn-gabor")}
NATURAL = ("camera", "astronaut", "coffee", "chelsea", "rocket", "coins")
TEXT = ("text", "page")
# key -> (implicit?, layers, width, model options); "-sn": explicit with the authors' spectral norm 0.97
MODELS = {"i1L-256D": (True, 1, 256, {}), "i1L-512D": (True, 1, 512, {}), "e1L-256D": (False, 1, 256, {}),
          "e1L-512D": (False, 1, 512, {}), "e4L-256D": (False, 4, 256, {}),
          "e4L-256D-sn": (False, 4, 256, {"spectral_norm": 0.97}),
          # the paper's video sizes (its video table: 1L-1024D, 1L-2048D, 4L-1024D)
          "i1L-1024D": (True, 1, 1024, {}), "e1L-1024D": (False, 1, 1024, {}), "e4L-1024D": (False, 4, 1024, {})}
IMAGE_MODELS = tuple(k for k in MODELS if "1024D" not in k)
COMPARISONS = (("i1L-256D", "e4L-256D"), ("i1L-256D", "e4L-256D-sn"), ("i1L-512D", "e4L-256D"),
               ("i1L-512D", "e4L-256D-sn"), ("i1L-256D", "e1L-256D"), ("i1L-512D", "e1L-512D"),
               ("i1L-1024D", "e1L-1024D"), ("i1L-1024D", "e4L-1024D"))
PNG_ERROR_MAX = 0.5   # |error| colour scale of every reconstruction PNG (pixel values lie in [0, 1])
EQUAL_TIME = (("i1L-256D", "e4L-256D"), ("i1L-256D", "e4L-256D-sn"))


def run(data, label, family, key, steps, seed, emit, *, log_every=None, png=None, lr=None, tag="same-steps"):
    """One fit; ``lr=None``: the model's default (iSIREN 3e-3, the others 1e-3)."""
    implicit, layers, width, options = MODELS[key]
    name = FAMILIES[family][0 if implicit else 1]
    torch.manual_seed(seed)
    model = build_model(name, data.in_features, data.channels, width=width, layers=layers,
                        input_scale=default_input_scale(data), **options)
    res = fit(model, data, steps=steps, lr=lr, seed=seed, progress=False,
              log_every=log_every or max(1, steps // 10), grad_clip=0.1 if data.kind == "video" else None)
    m = res.metrics
    text = label in TEXT or label.startswith(RENDERED_TEXT_PREFIX)
    row = {"bench": tag, "image": label, "set": "text" if text else data.kind if data.kind != "image" else "natural",
           "family": family, "key": key, "model": name, "size": key[1:], "implicit": implicit,
           "grid": list(data.shape),
           "seed": seed, "steps": m["steps"], "heldout_psnr": m["heldout_psnr"], "train_psnr": m["train_psnr"],
           "ms_per_step": m["ms_per_step"], "ms_per_step_median": m["ms_per_step_median"],
           "train_time_s": m["train_time_s"], "peak_mem_mb": m["peak_mem_mb"], "params": m["params"],
           "solver_steps_per_step_late": m["solver_steps_per_step_late"], "lr": m.get("lr"),
           "curve": [(h["time_s"], h["heldout_psnr"], h["step"]) for h in res.history],
           "interp_heldout_psnr": m.get("interp_heldout_psnr")}
    row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
    emit(row)
    if png:
        os.makedirs(png, exist_ok=True)
        plot_reconstruction(os.path.join(png, f"{label}_{family}_{key}_s{seed}.png"), data, res.prediction,
                            f"{name} {key[1:]} on {label} (seed {seed}): held-out {m['heldout_psnr']:.2f} dB, "
                            f"train {m['train_psnr']:.2f} dB", error_max=PNG_ERROR_MAX)
    return row


def media_rows(kinds, wav=None):
    """``(label, make_data)`` of the media rows: the audio clip ``wav`` (or the synthesized chirp), the bundled
    video; only the ``kinds`` asked for."""
    out = []
    if "audio" in kinds:
        out.append((f"audio:{os.path.basename(wav)}", lambda: audio_data(wav, holdout=0.5)) if wav else
                   ("audio:synth-chirp", lambda: audio_data(seconds=0.5, sample_rate=8000, holdout=0.5)))
    if "video" in kinds:
        out.append(("video:skimage-gif", lambda: video_data(holdout=0.125)))
    return out


def backfill_interpolation(rows, size, wav=None):
    """Rows saved before they carried ``interp_heldout_psnr``: compute it for bundled images at the row's ``grid``
    (rows saved before they recorded it: at crop ``size``), the synthesized audio, the bundled video and the clip
    ``wav``; other rows stay without it."""
    cache = {}
    for r in rows:
        if r.get("interp_heldout_psnr") is not None:
            continue
        label = r["image"]
        side = r["grid"][0] if r.get("grid") and ":" not in label else size
        if (label, side) not in cache:
            media = {lab: make for lab, make in media_rows(("audio", "video"), wav)}
            if label in media:
                data = media[label]()
            elif ":" not in label and side:
                data = image_data(label, size=side, holdout=0.25)
            else:
                data = None
            cache[(label, side)] = None if data is None else interpolation_heldout_psnr(data)
        r["interp_heldout_psnr"] = cache[(label, side)]


def report_interpolation(rows):
    """Markdown: each model's held-out PSNR minus linear interpolation's on the same data (paired per image and
    seed), and interpolation's own held-out PSNR per set."""
    rows = [r for r in rows if r.get("interp_heldout_psnr") is not None and r["heldout_psnr"] is not None]
    if not rows:
        return
    print("\n#### Held-out PSNR against linear interpolation of the training samples (dB; model − interpolation, "
          "mean ± std over (image, seed), min, runs ≥ 0)\n")
    print("| set | interpolation (mean over images) | family | model | model − interpolation |")
    print("|---|---|---|---|---|")
    for s in ("natural", "text", "audio", "video"):
        sel = [r for r in rows if r["set"] == s]
        if not sel:
            continue
        per_image = {r["image"]: r["interp_heldout_psnr"] for r in sel}
        ref = _ms(list(per_image.values()))
        for fam in FAMILIES:
            for key in MODELS:
                mine = [r for r in sel if r["family"] == fam and r["key"] == key]
                if mine:
                    print(f"| {s} | {ref} | {fam} | {key} | "
                          f"{_diff([r['heldout_psnr'] - r['interp_heldout_psnr'] for r in mine])} |")


def pair_key(r):
    """What two rows must share to be paired: image, seed, step count and data grid (a 1 000-step row is not
    paired with a 2 000-step one, nor a 128² crop with a 256² one; ``heldout_by_step`` compares runs of other
    step counts at their common logged steps). Rows saved before they recorded ``grid`` have ``None`` there.

    Example:
        >>> pair_key({"image": "camera", "seed": 0, "steps": 300, "key": "i1L-256D", "grid": [128, 128]})
        ('camera', 0, 300, (128, 128))
    """
    grid = r.get("grid")
    return r["image"], r["seed"], r.get("steps"), None if grid is None else tuple(grid)


def at_time(curve, budget):
    """Held-out PSNR of the last evaluation whose training time is within ``budget`` seconds."""
    ok = [c for c in curve if c[0] <= budget * 1.0001]
    return (ok[-1][1], ok[-1][2]) if ok else (float("nan"), 0)


def _ms(vals, digits=2):
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def _diff(vals):
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    if not vals:
        return "n/a"
    sd = f" ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else ""
    wins = sum(v >= 0 for v in vals)
    return f"{statistics.mean(vals):+.2f}{sd} (min {min(vals):+.2f}, {wins}/{len(vals)} ≥ 0)"


def over_images(diffs_by_image):
    """Mean of the per-image mean differences with its 95 % t interval, images as the units: the seeds of one
    image share its content, so (image, seed) pairs are not independent and their std understates the
    uncertainty of the mean.

    Example:
        >>> over_images({"camera": [1.0, 3.0], "coffee": [0.0], "text": [1.0]})
        '+1.00 [-1.48, +3.48] (3 images)'
    """
    from scipy.stats import t

    means = [statistics.mean(v) for v in diffs_by_image.values() if v]
    if len(means) < 2:
        return "n/a"
    m, n = statistics.mean(means), len(means)
    half = float(t.ppf(0.975, n - 1)) * statistics.stdev(means) / math.sqrt(n)
    return f"{m:+.2f} [{m - half:+.2f}, {m + half:+.2f}] ({n} images)"


def report_over_images(rows):
    """Markdown: each comparison's per-image mean difference, averaged over images, with its 95 % interval."""
    cells_by = {}
    for s in ("natural", "text"):
        for fam in FAMILIES:
            by = defaultdict(dict)
            for r in rows:
                if r["set"] == s and r["family"] == fam and r["heldout_psnr"] is not None:
                    by[pair_key(r)][r["key"]] = r["heldout_psnr"]
            cells = []
            for a, b in COMPARISONS:
                per_image = defaultdict(list)
                for (image, *_), p in by.items():
                    if a in p and b in p:
                        per_image[image].append(p[a] - p[b])
                cells.append(over_images(per_image))
            if any(c != "n/a" for c in cells):
                cells_by[(s, fam)] = cells
    if not cells_by:
        return
    print("\n#### Over images: mean of the per-image mean differences (dB), 95 % t interval with images as units\n")
    print("| set | family | " + " | ".join(f"{a} − {b}" for a, b in COMPARISONS) + " |")
    print("|---|---|" + "---|" * len(COMPARISONS))
    for (s, fam), cells in cells_by.items():
        print(f"| {s} | {fam} | " + " | ".join(cells) + " |")


def _curve_key(r):
    """``pair_key`` without the step count: runs of other lengths compare at their common logged steps."""
    image, seed, _, grid = pair_key(r)
    return image, seed, grid


def heldout_by_step(rows):
    """Held-out PSNR at the evaluation steps every row of a group logged (the ``curve``), for runs that say
    whether a model catches up or falls behind with more steps.

    Returns ``(steps, table, diffs)``: ``steps`` the common logged steps (step 1 left out); ``table[(set, family,
    key)][step]`` the held-out PSNRs over (image, seed); ``diffs[(set, family, a, b)][step]`` the paired
    ``a - b`` differences for the pairs of :data:`COMPARISONS` both of whose runs exist.

    Example:
        >>> r = lambda key, c: {"set": "natural", "family": "siren", "image": "camera", "seed": 0, "key": key,
        ...                     "curve": [(0.1 * s, p, s) for s, p in c]}
        >>> steps, tab, dif = heldout_by_step([r("i1L-256D", [(1, 10), (100, 20), (200, 24)]),
        ...                                    r("e4L-256D", [(1, 11), (5, 12), (100, 21), (200, 23)])])
        >>> steps, tab[("natural", "siren", "i1L-256D")][200], dif[("natural", "siren", "i1L-256D", "e4L-256D")]
        ([100, 200], [24], {100: [-1], 200: [1]})
    """
    groups = defaultdict(list)
    for r in rows:
        if r.get("curve"):
            groups[(r["set"], r["family"], r["key"])].append(r)
    logged = [{c[2] for c in r["curve"]} for rs in groups.values() for r in rs]
    steps = sorted(set.intersection(*logged) - {1}) if logged else []
    at = {id(r): {c[2]: c[1] for c in r["curve"]} for rs in groups.values() for r in rs}
    table = {g: {s: [at[id(r)][s] for r in rs] for s in steps} for g, rs in groups.items()}
    diffs = {}
    for (st, fam, a) in groups:
        for b in [b for a_, b in COMPARISONS if a_ == a and (st, fam, b) in groups]:
            other = {_curve_key(r): r for r in groups[(st, fam, b)]}
            pairs = [(r, other[_curve_key(r)]) for r in groups[(st, fam, a)] if _curve_key(r) in other]
            if pairs:
                diffs[(st, fam, a, b)] = {s: [at[id(p)][s] - at[id(q)][s] for p, q in pairs] for s in steps}
    return steps, table, diffs


def report_by_step(rows):
    """Markdown: held-out PSNR and the paired differences at each commonly logged step (see heldout_by_step)."""
    steps, table, diffs = heldout_by_step(rows)
    if not steps:
        return
    print("\n#### Held-out PSNR (dB) at each logged step, mean over (image, seed)\n")
    print("| set | family | model | n | " + " | ".join(f"step {s}" for s in steps) + " |")
    print("|---|---|---|---|" + "---|" * len(steps))
    for (st, fam, key), by in sorted(table.items()):
        n = len(by[steps[0]])
        print(f"| {st} | {fam} | {key} | {n} | " + " | ".join(f"{statistics.mean(by[s]):.2f}" for s in steps) + " |")
    print("\n#### Paired held-out differences (dB) at each logged step\n")
    print("| set | family | pair | " + " | ".join(f"step {s}" for s in steps) + " |")
    print("|---|---|---|" + "---|" * len(steps))
    for (st, fam, a, b), by in sorted(diffs.items()):
        print(f"| {st} | {fam} | {a} − {b} | " + " | ".join(_diff(by[s]) for s in steps) + " |")


def report(rows, title=""):
    """Markdown tables from the JSON rows (also on saved lines: ``--from-jsonl``)."""
    for tag in ("same-steps", "long"):
        sel_rows = [r for r in rows if r["bench"] == tag]
        if not sel_rows:
            continue
        steps = sorted({r["steps"] for r in sel_rows})
        print(f"\n### {'Same steps' if tag == 'same-steps' else 'Longer run'} ({'/'.join(map(str, steps))} steps) "
              f"{title}\n")
        print("| set | family | model | n | held-out PSNR | train PSNR | ms/step (median) | peak train mem MB | "
              "params |")
        print("|---|---|---|---|---|---|---|---|---|")
        sets = [s for s in ("natural", "text", "audio", "video") if any(r["set"] == s for r in sel_rows)]
        for s in sets:
            for fam in FAMILIES:
                for key in MODELS:
                    sel = [r for r in sel_rows if r["set"] == s and r["family"] == fam and r["key"] == key]
                    if not sel:
                        continue
                    params = next((f"{r['params']:,}" for r in sel if r.get("params")), "n/a")
                    print(f"| {s} | {fam} | {sel[0]['model']} {key[1:]} | {len(sel)} | "
                          f"{_ms([r['heldout_psnr'] for r in sel])} | {_ms([r['train_psnr'] for r in sel])} | "
                          f"{statistics.median(r['ms_per_step_median'] for r in sel):.0f} | "
                          f"{_ms([r.get('peak_mem_mb') for r in sel], 1)} | "
                          f"{params} |")
        print(f"\n#### Paired held-out differences (dB), mean ± std over (image, seed) pairs ({tag})\n")
        cols = ([f"{a} − {b}" for a, b in COMPARISONS] + [f"{a} − {b}, equal wall-clock" for a, b in EQUAL_TIME]
                + ["mem i1L-256D / e4L-256D"])
        print("| set | family | " + " | ".join(cols) + " |")
        print("|---|---|" + "---|" * len(cols))
        for s in sets:
            for fam in FAMILIES:
                by = defaultdict(dict)
                for r in sel_rows:
                    if r["set"] == s and r["family"] == fam:
                        by[pair_key(r)][r["key"]] = r
                if not by:
                    continue
                cells = []
                for a, b in COMPARISONS:
                    cells.append(_diff([p[a]["heldout_psnr"] - p[b]["heldout_psnr"] for p in by.values()
                                        if a in p and b in p and p[a]["heldout_psnr"] is not None
                                        and p[b]["heldout_psnr"] is not None]))
                for a, b in EQUAL_TIME:
                    eq = []
                    for p in by.values():
                        if a in p and b in p and p[a]["heldout_psnr"] is not None:
                            v, _ = at_time(p[b]["curve"], p[a]["train_time_s"])
                            eq.append(p[a]["heldout_psnr"] - v)
                    cells.append(_diff(eq))
                mem = [p["i1L-256D"]["peak_mem_mb"] / p["e4L-256D"]["peak_mem_mb"] for p in by.values()
                       if "i1L-256D" in p and "e4L-256D" in p and p["i1L-256D"].get("peak_mem_mb")
                       and p["e4L-256D"].get("peak_mem_mb")]
                cells.append(f"{statistics.mean(mem):.2f}" if mem else "n/a")
                print(f"| {s} | {fam} | " + " | ".join(cells) + " |")
        # pooled over families and sets: the headline numbers
        pooled = defaultdict(dict)
        for r in sel_rows:
            pooled[(r["set"], r["family"], *pair_key(r))][r["key"]] = r
        print("\n| all sets and families | " + " | ".join(f"{a} − {b}" for a, b in COMPARISONS) + " |")
        print("|---|" + "---|" * len(COMPARISONS))
        print("| pooled | " + " | ".join(_diff([p[a]["heldout_psnr"] - p[b]["heldout_psnr"] for p in pooled.values()
                                                if a in p and b in p and p[a]["heldout_psnr"] is not None
                                                and p[b]["heldout_psnr"] is not None])
                                          for a, b in COMPARISONS) + " |")
        report_over_images(sel_rows)
        report_interpolation(sel_rows)
        if tag == "long":
            report_by_step(sel_rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="camera + text, 64x64, 100 steps, seed 0, no long run")
    ap.add_argument("--steps", type=int, default=None, help="training steps per model (default 300; quick 100)")
    ap.add_argument("--size", type=int, default=None,
                    help="image crop size (default 128; quick 64); with --from-jsonl: the crop size of saved image "
                         "rows that lack the interpolation reference, to compute it")
    ap.add_argument("--images", nargs="*", default=None)
    ap.add_argument("--seeds", nargs="*", type=int, default=None, help="default 0 1 2 (quick: 0)")
    ap.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--models", nargs="*", default=list(IMAGE_MODELS), choices=list(MODELS),
                    help="default: the image sizes (256 and 512 wide); the 1024-wide video sizes on request")
    ap.add_argument("--long-steps", type=int, default=None, help="longer run (default 1000; quick: none)")
    ap.add_argument("--long-images", nargs="*", default=["camera", "text"])
    ap.add_argument("--media", action=argparse.BooleanOptionalAction, default=None,
                    help="audio + video rows (default on, quick off)")
    ap.add_argument("--media-steps", type=int, default=300)
    ap.add_argument("--media-rows", nargs="+", default=["audio", "video"], choices=["audio", "video"],
                    help="which media rows --media runs (each over --seeds)")
    ap.add_argument("--audio", default=None, metavar="WAV",
                    help="the audio row's clip: a PCM WAV file (default: the synthesized chirp + harmonics)")
    ap.add_argument("--skip-same-steps", action="store_true", help="only the long run / media rows")
    ap.add_argument("--png", default=None, help="write reconstruction PNGs (first --seeds entry) into this folder; "
                    f"the error panel's scale ends at {PNG_ERROR_MAX} for every model, so they compare by eye")
    ap.add_argument("--jsonl", default=None, help="also append the JSON lines to this file")
    ap.add_argument("--from-jsonl", nargs="+", default=None, help="only print the tables from saved JSON lines")
    args = ap.parse_args(argv)
    if args.from_jsonl:
        rows = []
        for p in args.from_jsonl:
            with open(p) as f:
                rows += [json.loads(line) for line in f if line.strip()]
        # one row per run: a repeated run counts once; a row converted from elsewhere ("from") never
        # replaces a benchmark row (which has the evaluation curve and the memory)
        rows.sort(key=lambda r: "from" not in r)
        backfill_interpolation(rows, args.size, args.audio)
        last = {(r["bench"], r["set"], r["family"], r["key"], *pair_key(r)): r for r in rows}
        report(list(last.values()))
        return 0
    q = args.quick
    steps = args.steps or (100 if q else 300)
    size = args.size or (64 if q else 128)
    seeds = args.seeds if args.seeds is not None else ([0] if q else [0, 1, 2])
    images = args.images or (["camera", "text"] if q else [*NATURAL, *TEXT])
    long_steps = args.long_steps if args.long_steps is not None else (0 if q else 1000)
    media = args.media if args.media is not None else not q
    sink = open(args.jsonl, "a") if args.jsonl else None
    rows = []

    def emit(row):
        line = json.dumps(row)
        print(line if len(line) < 400 else line[:400] + " ...", flush=True)
        if sink:
            sink.write(line + "\n")
            sink.flush()

    def block(data, label, n_steps, tag, seeds_):
        for seed in seeds_:
            for fam in args.families:
                for key in args.models:
                    le = 5 if key.startswith("e4L") else None
                    png = args.png if (seed == seeds_[0] and args.png) else None
                    rows.append(run(data, label, fam, key, n_steps, seed, emit, log_every=le, png=png, tag=tag))

    t0 = time.perf_counter()
    if not args.skip_same_steps:
        for image in images:
            block(image_data(image, size=size, holdout=0.25), image, steps, "same-steps", seeds)
    if long_steps:
        for image in args.long_images:
            block(image_data(image, size=size, holdout=0.25), image, long_steps, "long", seeds[:1])
    if media:
        for label, make in media_rows(args.media_rows, args.audio):
            block(make(), label, args.media_steps, "same-steps", seeds)
    total = time.perf_counter() - t0
    imaged = not args.skip_same_steps or long_steps
    what = f"{size}x{size} images, train [::2, ::2], test [1::2, 1::2]" if imaged else "media rows only"
    report(rows, f"— {what}, Adam at each model's default lr, torch threads {torch.get_num_threads()}, "
                 f"total {total / 60:.1f} min")
    if sink:
        sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
