"""PNGs: ground truth | reconstruction | error, and PSNR vs training time (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["plot_reconstruction", "plot_psnr_curve", "save_prediction"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_reconstruction(path: str | os.PathLike[str], data: Any, pred: Any, title: str = "",
                        error_max: float | None = None) -> str:
    """Ground truth | reconstruction | absolute error. Images: one row; video: first, middle, last frame;
    audio: waveform, reconstruction and error (full clip and a zoom).

    ``error_max``: the top of the image / video error colour scale (larger errors show at its colour; the colour
    bar is drawn with an arrow). ``None``: each plot's own largest error, which makes two models' plots of the
    same data look alike whatever their errors; pass one value to compare them by eye."""
    if error_max is not None and not (isinstance(error_max, (int, float)) and 0 < error_max < float("inf")):
        raise ValueError(f"plot_reconstruction: error_max must be a finite number > 0 or None, got {error_max!r}")
    plt = _plt()
    gt, rec = data.as_array(data.values), data.as_array(pred)
    if data.kind == "audio":
        t = np.arange(len(gt)) / (data.sample_rate or 1)
        zoom = slice(len(gt) // 2, len(gt) // 2 + min(200, len(gt)))
        fig, axes = plt.subplots(3, 2, figsize=(11, 6), squeeze=False)
        for col, sl in enumerate((slice(None), zoom)):
            axes[0, col].plot(t[sl], gt[sl], lw=0.6, color="k")
            axes[1, col].plot(t[sl], rec[sl], lw=0.6, color="tab:blue")
            axes[2, col].plot(t[sl], rec[sl] - gt[sl], lw=0.6, color="tab:red")
        for row, lab in enumerate(("ground truth", "reconstruction", "error")):
            axes[row, 0].set_ylabel(lab)
        axes[2, 0].set_xlabel("time (s)")
        axes[2, 1].set_xlabel("time (s), zoom")
    else:
        frames = [None] if data.kind == "image" else sorted({0, gt.shape[0] // 2, gt.shape[0] - 1})
        fig, axes = plt.subplots(len(frames), 3, figsize=(10, 3.4 * len(frames)), squeeze=False)
        for r, f in enumerate(frames):
            g, p = (gt, rec) if f is None else (gt[f], rec[f])
            err = np.abs(p - g) if g.ndim == 2 else np.abs(p - g).mean(-1)
            cmap = "gray" if g.ndim == 2 else None
            axes[r, 0].imshow(g, cmap=cmap, vmin=0, vmax=1)
            axes[r, 1].imshow(p, cmap=cmap, vmin=0, vmax=1)
            top = max(float(err.max()), 1e-6) if error_max is None else float(error_max)
            im = axes[r, 2].imshow(err, cmap="inferno", vmin=0, vmax=top)
            fig.colorbar(im, ax=axes[r, 2], fraction=0.046,
                         extend="max" if error_max is not None and float(err.max()) > top else "neither")
            for c, lab in enumerate(("ground truth", "reconstruction", "|error|")):
                axes[r, c].set_title(lab if f is None else f"{lab} (frame {f})")
                axes[r, c].axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plot_psnr_curve(path: str | os.PathLike[str], runs: dict[str, Sequence[dict[str, float]]], title: str = "") -> str:
    """PSNR vs training time (s) for one or several runs (``{label: history}``); held-out solid, all dashed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (label, hist) in enumerate(runs.items()):
        color = f"C{i}"
        t = [h["time_s"] for h in hist]
        held = [h["heldout_psnr"] for h in hist]
        if any(v == v for v in held):
            ax.plot(t, held, "-o", ms=3, color=color, label=f"{label} held-out")
        ax.plot(t, [h["psnr"] for h in hist], "--", color=color, label=f"{label} all points")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def save_prediction(path: str | os.PathLike[str], arr: np.ndarray, kind: str) -> str:
    """A rendered image (PNG) or video (first / middle / last frames side by side, PNG)."""
    plt = _plt()
    if kind == "video":
        idx = sorted({0, arr.shape[0] // 2, arr.shape[0] - 1})
        arr = np.concatenate([arr[i] for i in idx], axis=1)
    if arr.ndim == 2:
        plt.imsave(path, np.clip(arr, 0, 1), cmap="gray", vmin=0, vmax=1)
    else:
        plt.imsave(path, np.clip(arr, 0, 1))
    return str(path)
