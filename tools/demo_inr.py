"""Demo section 3: (Implicit)² — held-out PSNR vs training time, iSIREN 1L-256D vs explicit SIREN 4L-256D.

The fits are plain ``deq inr fit`` runs (the demo prints each command); this module reads their ``metrics.json``
(``history``: PSNR on the held-out pixels at logging points, against training time, evaluation excluded) and
rebuilds both models from their ``model.safetensors`` (``deq_inr.load_checkpoint``) to draw the reconstructions
side by side with the ground truth and the error maps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODELS = (("implicit", "isiren", "1L-256D", "iSIREN 1L-256D (implicit)", "C0"),
          ("explicit", "siren", "4L-256D", "SIREN 4L-256D (explicit)", "C1"))


def commands(deq: list[str], image: str, size: int, steps: int, out: Path) -> list[tuple[str, list[str], Path]]:
    """``(title, argv, out dir)`` of the two fits, same image, size, steps, seed and held-out pixels."""
    runs = []
    for _key, model, arch, label, _c in MODELS:
        d = out / f"inr-{model}-{arch}"
        runs.append((f"INR: {label}", [*deq, "inr", "fit", "--model", model, "--arch", arch, "--image", image,
                                       "--size", str(size), "--steps", str(steps), "--holdout", "0.25",
                                       "--no-progress", "--out", str(d)], d))
    return runs


def load(dirs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    return {k: json.loads((d / "metrics.json").read_text()) for k, d in dirs.items()}


def time_to_psnr(history: list[dict[str, float]], target: float) -> float | None:
    """First logged training time at which held-out PSNR >= target (None: never, within the logged points)."""
    return next((h["time_s"] for h in history if h["heldout_psnr"] >= target), None)


def plot_curve(metrics: dict[str, dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.3))
    for key, _model, _arch, label, color in MODELS:
        h = metrics[key]["history"]
        t = [x["time_s"] for x in h]
        ax.plot(t, [x["heldout_psnr"] for x in h], "-o", ms=3.5, color=color, label=f"{label}: held-out pixels")
        ax.plot(t, [x["train_psnr"] for x in h], ":", color=color, lw=1.2, label=f"{label}: training pixels")
    m = metrics["implicit"]
    d = m["data"]
    if m.get("interp_heldout_psnr") is not None:
        ax.axhline(m["interp_heldout_psnr"], color="0.4", ls="--", lw=1,
                   label=f"bilinear interpolation of the training pixels: held-out {m['interp_heldout_psnr']:.2f} dB")
    ax.set_xlabel("training time (s; evaluation not counted)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"{Path(d['name']).name} {d['shape'][0]}×{d['shape'][1]}: train on {d['train_points']} pixels "
                 f"([::2, ::2]), held-out {d['test_points']} ([1::2, 1::2])\n"
                 f"{m['steps']} full-batch Adam steps each", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reconstructions(metrics: dict[str, dict[str, Any]], dirs: dict[str, Path], path: Path) -> Path:
    """Ground truth | iSIREN | SIREN (top), |error| of each (bottom), from the saved checkpoints."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from deq_inr import grid_coords, image_data, load_checkpoint

    d = metrics["implicit"]["data"]
    data = image_data(d["name"], size=d["shape"][0], holdout=d["holdout"], seed=metrics["implicit"]["seed"])
    gt = data.as_array(data.values)
    preds = {}
    for key, *_ in MODELS:
        model, _ = load_checkpoint(dirs[key] / "model.safetensors")
        with torch.no_grad():
            preds[key] = data.as_array(model.predict(grid_coords(tuple(d["shape"]))))
    errs = {k: np.abs(p - gt) if p.ndim == 2 else np.abs(p - gt).mean(-1) for k, p in preds.items()}
    vmax = max(float(e.max()) for e in errs.values())
    fig, axes = plt.subplots(2, 3, figsize=(10, 7.2), layout="constrained")
    cmap = "gray" if gt.ndim == 2 else None
    axes[0, 0].imshow(gt, cmap=cmap, vmin=0, vmax=1)
    axes[0, 0].set_title(f"ground truth ({gt.shape[0]}×{gt.shape[1]})", fontsize=9)
    seen = gt[::2, ::2]
    axes[1, 0].imshow(seen, cmap=cmap, vmin=0, vmax=1)
    axes[1, 0].set_title(f"what both models trained on:\nthe [::2, ::2] pixels ({seen.shape[0]}×{seen.shape[1]})",
                         fontsize=9)
    im = None
    for col, (key, _model, _arch, label, _c) in enumerate(MODELS, start=1):
        m = metrics[key]
        axes[0, col].imshow(preds[key], cmap=cmap, vmin=0, vmax=1)
        axes[0, col].set_title(f"{label}\nheld-out {m['heldout_psnr']:.2f} dB, train {m['train_psnr']:.2f} dB",
                               fontsize=9)
        im = axes[1, col].imshow(errs[key], cmap="inferno", vmin=0, vmax=vmax)
        axes[1, col].set_title(f"|error|, {label.split(' (')[0]}", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[1, 1:].tolist(), shrink=0.9, label="|error| (intensity in [0, 1])")
    fig.suptitle(f"Reconstructions on the full {d['shape'][0]}×{d['shape'][1]} grid after "
                 f"{metrics['implicit']['steps']} steps (one colour scale for both error maps)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
