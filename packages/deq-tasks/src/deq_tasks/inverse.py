"""Inverse problems (denoising, inpainting) with a decoder DEQ trained through JIIO.

Observation ``y_obs = M * (y + noise)``; the inner problem is ``min_x sum M (h(z) - y_obs)^2`` s.t. ``z = f(z, x)``
(:func:`deq_tasks.generative.decoder_problem`), solved by JIIO or, as the baseline, by projected Adam on ``x``
(40 steps, each a DEQ forward + implicit backward solve), both on the same held-out images and the same latent
ball as training. Training uses the same inner problem with the outer loss MSE(h(z*), clean y) (papers.md 1.5).
Corruptions (images in [-1, 1]):

* ``denoise``: ``y + N(0, sigma^2)``, ``sigma`` in [-1, 1] units (0.2, 0.4 in the paper);
* ``random`` mask: each pixel hidden with probability ``p`` (inpainting);
* ``block`` mask: one ``b x b`` hole (8x8 on 28x28, the paper's 20x20 on 64x64 scaled), centre uniform in the
  inner region.

Scored at an equilibrium (JIIO's ``x*`` re-decoded by a plain DEQ solve) by PSNR = ``-10 log10(MSE)`` of the restored
vs the CLEAN image, **on [-1, 1] images** (6.02 dB below the usual [0, 1] PSNR).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from deq_core import DeqConfigError, DeqInputError

from ._base import Progress, check_number, help_field, save_grid, write_metrics
from .data import ImageData, psnr
from .generative import DecoderConfig, MDEQDecoder, _DecoderTask, compare_latents

__all__ = ["InverseConfig", "InverseTask", "MASKS", "make_corruption"]

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


@dataclass(frozen=True)
class InverseConfig(DecoderConfig):
    """Options of ``deq tasks run inverse`` (:class:`~deq_tasks.generative.DecoderConfig` plus the corruption)."""

    mask: str = help_field("block", "hidden pixels: none | random | block")
    sigma: float = help_field(0.0, "Gaussian noise std in [-1, 1] units (denoising)")
    p: float = help_field(0.5, "random mask: probability that a pixel is hidden")
    block: int | None = help_field(None, "block mask: hole side (none: 8 on 28x28, scaled)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self, "sigma", self.sigma, allow_low=True)
        make_corruption(self.mask, sigma=self.sigma, p=self.p, block=self.block)  # validate now


class InverseTask(_DecoderTask):
    """``deq tasks run inverse``: train a decoder through JIIO on corrupted observations (or load ``--checkpoint``),
    restore held-out images with JIIO and with Adam-40 (same images, same latent ball), report objectives, times,
    the speed-up at equal objective and PSNR vs the clean images, and ``restoration.png``.

    ``psnr_jiio`` is the decoder output at the re-solved equilibrium; ``psnr_jiio_composed`` the usual inpainting
    output (observed pixels where visible, decoder in the hidden ones; masks only).

    Example:
        >>> InverseTask(mask="random", p=0.3).config.p
        0.3
    """

    name = "inverse"
    Config = InverseConfig

    def run(self, out: str | Path, *, checkpoint: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
        c = self.config
        out, _ = self.prepare(out)
        data, model = self.data_and_model(checkpoint)
        corrupt = make_corruption(c.mask, sigma=c.sigma, p=c.p, block=c.block)
        if c.mask == "block" and c.block is None:
            corrupt(data.test_x[:1], torch.Generator().manual_seed(0))   # the default hole must fit these images
        n_train_steps = 0 if model is not None else self.train_steps(data)
        bar = self.progress(n_train_steps + len(set(c.eval_budgets) | {c.jiio.budget}) + 2, progress)
        try:
            if model is None:
                model, trained = self.train(data, bar, corrupt=corrupt)
            else:
                trained = {"loaded": str(checkpoint)}
            self.save_model(out, model)
            self.save_training(out, trained)
            metrics = self.common_metrics(data, model, trained)
            metrics.update(self.evaluate(model, data, corrupt, out, bar))
        finally:
            bar.close()
        write_metrics(out, metrics)
        return metrics

    def evaluate(self, model: MDEQDecoder, data: ImageData, corrupt: Any, out: Path, bar: Progress) -> dict[str, Any]:
        c = self.config
        test = data.test_x[: c.n_eval]
        g = torch.Generator().manual_seed(c.seed + 12345)
        obs, mask = corrupt(test, g)
        bar.stage("restore: JIIO vs Adam")
        cmp = compare_latents(model, obs, test, mask, jiio=c.jiio, budgets=c.eval_budgets, adam_steps=c.adam_steps,
                              adam_lr=c.adam_lr, radius=self.radius(model), progress=bar)
        imgs = cmp.pop("images")
        rest, adam = imgs["jiio"], imgs["adam"]
        shown = obs[:10] if mask is None else torch.where(mask[:10] > 0, obs[:10], torch.full_like(obs[:10], -1.0))
        composed = None if mask is None else torch.where(mask > 0, obs, rest)
        rows = [("corrupted", shown), (f"JIIO-{c.jiio.budget}", rest[:10])]
        if composed is not None:
            rows.append(("JIIO composed", composed[:10]))
        rows += [(f"Adam-{c.adam_steps}", adam[:10]), ("truth", test[:10])]
        save_grid(out / "restoration.png", rows,
                  title=f"inverse: mask={c.mask}, sigma={c.sigma} (hidden pixels black), re-solved at x*")
        bar.update()
        return {
            "comparison": cmp,
            "psnr_corrupted": psnr(obs if mask is None else obs * mask, test),
            "psnr_jiio": psnr(rest, test), "psnr_adam": psnr(adam, test),
            "psnr_jiio_composed": None if composed is None else psnr(composed, test),
            "psnr_adam_composed": None if mask is None else psnr(torch.where(mask > 0, obs, adam), test),
        }


