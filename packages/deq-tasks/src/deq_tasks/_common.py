"""Shared plumbing of the task modules: seeding, progress bars, image grids, metrics files, frozen parameters."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["frozen_params", "progress", "save_grid", "seed_all", "write_metrics"]


def seed_all(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded with ``seed`` for data sampling."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def progress(total: int, desc: str, enabled: bool = True) -> Any:
    """A tqdm bar (to stderr) or a silent stand-in with the same ``update`` / ``set_postfix`` / ``close``."""
    if enabled:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
    return _Silent()


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


@contextmanager
def frozen_params(module: nn.Module) -> Iterator[None]:
    """Temporarily ``requires_grad_(False)`` every parameter (inner loops that only optimize inputs)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def save_grid(path: str | Path, rows: Sequence[tuple[str, Tensor]], *, ncols: int | None = None,
              title: str | None = None) -> Path:
    """Save labelled rows of grayscale images ``(N, 1, H, W)`` in [-1, 1] as one PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = ncols or max(len(imgs) for _, imgs in rows)
    nrows = len(rows)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 0.9 + 1.2, nrows * 0.95 + 0.4), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if c < len(imgs):
                ax.imshow(imgs[c, 0].detach().float().cpu().clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_metrics(out: Path, metrics: dict[str, Any]) -> Path:
    """Write ``metrics.json`` (non-finite floats become null)."""
    path = Path(out) / "metrics.json"
    path.write_text(json.dumps(_clean(metrics), indent=2, sort_keys=True) + "\n")
    return path


def _clean(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, Tensor):
        return _clean(v.tolist())
    if isinstance(v, (np.floating, np.integer)):
        return _clean(v.item())
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
