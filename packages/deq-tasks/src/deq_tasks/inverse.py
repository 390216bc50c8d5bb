"""Inverse problems (denoising, inpainting) with a decoder DEQ trained through JIIO.

Observation ``y_obs = M * (y + noise)``; the inner problem is ``min_x sum M (h(z) - y_obs)^2`` s.t. ``z = f(z, x)``
(:func:`deq_tasks.generative.decoder_problem`), solved by JIIO or, as the baseline, by Adam on ``x`` (40 steps,
each a DEQ forward + implicit backward solve). Training uses the same inner problem with the outer loss
MSE(h(z*), clean y) (papers.md 1.5). Corruptions (images in [-1, 1]):

* ``denoise``: ``y + N(0, sigma^2)``, ``sigma`` in [-1, 1] units (0.2, 0.4 in the paper);
* ``random`` mask: each pixel hidden with probability ``p`` (inpainting);
* ``block`` mask: one ``b x b`` hole (8x8 on 28x28, the paper's 20x20 on 64x64 scaled), centre uniform in the
  inner region.

Scored by PSNR = ``-10 log10(MSE)`` of the restored vs the CLEAN image on held-out digits, **on [-1, 1] images**
(6.02 dB below the usual [0, 1] PSNR).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from deq_core import DeqConfigError, DeqInputError, save

from ._common import progress, save_grid, seed_all, write_metrics
from .data import load_digits, psnr
from .generative import DecoderTaskOptions, _decoder_config, adam_latents, jiio_latents, load_decoder

__all__ = ["InverseTask", "MASKS", "make_corruption"]

MASKS = ("none", "random", "block")


def make_corruption(mask: str = "none", *, sigma: float = 0.0, p: float = 0.5,
                    block: int | None = None) -> Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor | None]]:
    """``corrupt(y, generator) -> (y_obs, M)``: noise of std ``sigma`` and a visible-pixel mask ``M`` (or None).

    Raises:
        DeqConfigError: unknown mask kind, ``sigma < 0``, ``p`` outside ``[0, 1)``, a block that does not fit.

    Example:
        >>> import torch
        >>> obs, m = make_corruption("block", block=4)(torch.zeros(2, 1, 8, 8), torch.Generator().manual_seed(0))
        >>> int(m[0].numel() - m[0].sum())
        16
    """
    if mask not in MASKS:
        raise DeqConfigError(f"unknown mask {mask!r}; expected one of {MASKS}")
    if not sigma >= 0:
        raise DeqConfigError(f"noise sigma must be >= 0, got {sigma!r}")
    if not 0 <= p < 1:
        raise DeqConfigError(f"random-mask drop probability p must be in [0, 1), got {p!r}")
    if mask == "none" and sigma == 0:
        raise DeqConfigError("nothing to restore: pass a mask ('random', 'block') and/or a noise sigma > 0")

    def corrupt(y: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor | None]:
        if y.dim() != 4:
            raise DeqInputError(f"images must be (B, C, H, W), got shape {tuple(y.shape)}")
        B, _, H, W = y.shape
        obs = y + sigma * torch.randn(y.shape, generator=g) if sigma > 0 else y.clone()
        if mask == "none":
            return obs, None
        if mask == "random":
            m = (torch.rand(B, 1, H, W, generator=g) >= p).to(y.dtype)
        else:
            b = block if block is not None else max(2, round(H * 8 / 28))
            if not 0 < b <= H - 2 or b > W - 2:
                raise DeqConfigError(f"block hole of side {b} does not fit {H}x{W} images")
            m = torch.ones(B, 1, H, W, dtype=y.dtype)
            top = torch.randint(1, H - b, (B,), generator=g)
            left = torch.randint(1, W - b, (B,), generator=g)
            for i in range(B):
                m[i, :, top[i]:top[i] + b, left[i]:left[i] + b] = 0
        return obs * m, m

    return corrupt


@dataclass
class InverseTask(DecoderTaskOptions):
    """``deq tasks run inverse``: train a decoder through JIIO on corrupted observations, restore held-out digits
    with JIIO and with Adam-40, report PSNR ([-1, 1] convention) and a corrupted / restored / truth PNG.

    Options: ``mask`` (none | random | block), ``sigma`` (noise std, [-1, 1] units), ``p`` (random-mask drop
    probability), ``block`` (hole side, default 8 on 28x28), ``data``, ``n_train``, ``n_test``, ``latent_dim``,
    ``steps`` / ``epochs``, ``batch``, ``lr``, ``train_budget``, ``budget``, ``alpha``, ``adam_steps``, ``adam_lr``,
    ``head_bias`` (initial output bias, -1.5: near-black start, see :func:`~deq_tasks.generative.build_decoder`),
    ``jac_reg`` (Jacobian regularization weight, :func:`~deq_tasks.generative.train_decoder`),
    ``latent_ball`` (latents constrained to the ball of radius ``sqrt(latent_dim)``, also for Adam), ``seed``.
    Metrics: ``psnr_jiio`` is the raw decoder output ``h(z*)``; ``psnr_jiio_composed`` the usual inpainting output
    (observed pixels where visible, decoder in the hidden ones; masks only); ``jiio.plain_forward_steps_mean`` the
    decoder's own plain DEQ solve at the restored latents.
    """

    mask: str = "block"
    sigma: float = 0.0
    p: float = 0.5
    block: int | None = None
    name: str = field(default="inverse", init=False)

    def __post_init__(self) -> None:
        make_corruption(self.mask, sigma=self.sigma, p=self.p, block=self.block)  # validate now

    def run(self, out: str | Path, *, checkpoint: str | Path | None = None,
            progress_bar: bool = True) -> dict[str, Any]:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        seed_all(self.seed)
        data = load_digits(self.data, n_train=self.n_train, n_test=self.n_test, seed=self.seed)
        corrupt = make_corruption(self.mask, sigma=self.sigma, p=self.p, block=self.block)
        if checkpoint is not None:
            model, _ = load_decoder(checkpoint)
            if model.layer.size != data.size:
                raise DeqInputError(
                    f"checkpoint decodes {model.layer.size}px images, data {self.data!r} is {data.size}px")
            trained: dict[str, Any] = {"loaded": str(checkpoint)}
        else:
            model, trained = self.train_new_decoder(data, corrupt=corrupt, show=progress_bar,
                                                    desc=f"train inverse ({self.mask})")
        save(out / "model.safetensors", model, {"task": self.name, "decoder": _decoder_config(model),
                                                "options": asdict(self)})
        metrics = self.evaluate(model, data.test_x, corrupt, out, progress_bar)
        metrics["training"] = trained
        write_metrics(out, metrics)
        return metrics

    def evaluate(self, model: Any, test: Tensor, corrupt: Any, out: Path, show: bool) -> dict[str, Any]:
        g = torch.Generator().manual_seed(self.seed + 12345)
        obs, mask = corrupt(test, g)
        cfg = self.jiio_config(self.budget)
        bar = progress(2, "restore", show)
        restored, t_jiio, objs, kkts = [], 0.0, [], []
        for i in range(0, len(test), 100):
            m = None if mask is None else mask[i:i + 100]
            t = time.perf_counter()
            res = jiio_latents(model, obs[i:i + 100], m, cfg, self.radius(model))
            t_jiio += time.perf_counter() - t
            with torch.no_grad():
                restored.append(model.head(res.z))
            objs.append(res.objective)
            kkts.append(res.kkt["x"])
        rest = torch.cat(restored)
        with torch.no_grad():  # the decoder's own plain DEQ solve at the restored latents (a real DEQ: tens of steps)
            _, plain = model(res.x)
        plain_steps = float(plain.stats.steps.float().mean())
        bar.update()
        nb = min(32, len(test))
        base = adam_latents(model, obs[:nb], None if mask is None else mask[:nb], steps=self.adam_steps,
                            lr=self.adam_lr, radius=self.radius(model))
        bar.update()
        bar.close()
        shown = obs[:10] if mask is None else torch.where(mask[:10] > 0, obs[:10], torch.full_like(obs[:10], -1.0))
        # standard inpainting output: observed pixels where visible, the decoder's output in the hidden ones
        composed = None if mask is None else torch.where(mask > 0, obs, rest)
        rows = [("corrupted", shown), ("JIIO (raw decoder)", rest[:10])]
        if composed is not None:
            rows.append(("JIIO composed", composed[:10]))
        rows += [(f"Adam-{self.adam_steps}", base["image"][:10]), ("truth", test[:10])]
        save_grid(out / "restoration.png", rows,
                  title=f"inverse: mask={self.mask}, sigma={self.sigma} (hidden pixels shown black)")
        return {
            "task": self.name, "options": asdict(self), "psnr_convention": "[-1, 1] images: -10 log10(MSE)",
            "psnr_corrupted": psnr(obs if mask is None else obs * mask + 0 * test, test),
            "psnr_jiio": psnr(rest, test), "psnr_adam_subset": psnr(base["image"], test[:nb]),
            "psnr_jiio_composed": None if composed is None else psnr(composed, test),
            "psnr_adam_composed_subset": None if mask is None else psnr(
                torch.where(mask[:nb] > 0, obs[:nb], base["image"]), test[:nb]),
            "psnr_jiio_subset": psnr(rest[:nb], test[:nb]),
            "jiio": {"budget": self.budget, "seconds": t_jiio, "n": len(test),
                     "objective_mean": float(torch.cat(objs).mean()), "kkt_x_mean": float(torch.cat(kkts).mean()),
                     "plain_forward_steps_mean": plain_steps, "plain_max_steps": model.max_steps},
            "adam": {"steps": self.adam_steps, "lr": self.adam_lr, "seconds": base["time_trace"][-1], "n": nb,
                     "objective_mean": float(base["objective"].mean()), "forward_steps_mean": base["forward_steps"]},
        }
