"""PSNR and memory measurements."""

from __future__ import annotations

import math
import resource
import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ._data import KINDS, CoordData, interpolate_train

__all__ = ["psnr", "interpolation_heldout_psnr", "saved_activation_bytes", "training_memory_mb", "rss_peak_mb"]


def psnr(pred: Tensor, target: Tensor, kind: str = "image") -> float:
    """PSNR in dB, ``-10 log10(MSE)``, as (Implicit)^2 reports it.

    Images / video: values in ``[-1, 1]`` are mapped to ``[0, 1]`` and the prediction is **clamped** first.
    Audio: MSE of the peak-normalized waveform (prediction clamped to ``[-1, 1]``).

    Example:
        >>> import torch
        >>> round(psnr(torch.zeros(4, 1), torch.full((4, 1), 0.2)), 2)   # 0.1 error on [0, 1] -> 20 dB
        20.0
    """
    if kind not in KINDS:
        raise ValueError(f"psnr kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    if pred.shape != target.shape:
        raise ValueError(f"psnr: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if pred.numel() == 0:
        return float("nan")
    p = pred.detach().double().clamp(-1, 1)
    t = target.detach().double()
    if kind != "audio":
        p, t = (p + 1) / 2, (t + 1) / 2
    mse = float(((p - t) ** 2).mean())
    return float("inf") if mse == 0 else -10 * math.log10(mse)


def interpolation_heldout_psnr(data: CoordData) -> float | None:
    """Held-out PSNR of linear interpolation of the training samples (:func:`~deq_inr.interpolate_train`), the
    floor a fitted representation should beat; ``None`` without a regular-grid split.

    Example:
        >>> from deq_inr import image_data
        >>> round(interpolation_heldout_psnr(image_data("camera", size=32, holdout=0.25)), 1) > 10
        True
    """
    pred = interpolate_train(data)
    return None if pred is None else psnr(pred, data.values[data.test_idx], data.kind)


def saved_activation_bytes(step: Callable[[], None]) -> int:
    """Bytes of the distinct tensor storages autograd saves for backward while ``step()`` runs its forward
    (measured with ``torch.autograd.graph.saved_tensors_hooks``)."""
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        try:
            st = t.untyped_storage()
            seen.setdefault(st.data_ptr(), st.nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def training_memory_mb(model: nn.Module, activation_bytes: int) -> float:
    """Parameters + gradients + Adam's two moments + the activations saved for backward, in MiB."""
    pbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bbytes = sum(b.numel() * b.element_size() for b in model.buffers())
    return (4 * pbytes + bbytes + activation_bytes) / 2**20


def rss_peak_mb() -> float:
    """Peak resident set size of this process so far (MiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024
