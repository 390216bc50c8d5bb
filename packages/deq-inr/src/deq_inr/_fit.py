"""Fitting loop: Adam on coordinates -> values, PSNR on all and held-out points, time, memory, solver steps."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from deq_core import DeqInputError

from ._data import CoordData, _check_count
from ._metrics import interpolation_heldout_psnr, psnr, rss_peak_mb, saved_activation_bytes, training_memory_mb

__all__ = ["FitResult", "fit", "evaluate", "SCHEDULES", "lr_factor"]

#: Learning-rate schedules of :func:`fit`: ``constant`` (the paper's) and ``cosine`` (half-cosine decay to 0 over
#: ``steps``).
SCHEDULES = ("constant", "cosine")


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based) of ``steps``.

    ``constant``: 1. ``cosine``: ``(1 + cos(pi * step / steps)) / 2`` (1 at the first step, about 0 at the last).

    Example:
        >>> lr_factor("cosine", 0, 100), round(lr_factor("cosine", 50, 100), 3), lr_factor("constant", 99, 100)
        (1.0, 0.5, 1.0)
    """
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        metrics: final scalars: ``psnr`` (all points), ``heldout_psnr``, ``train_psnr`` (evaluation solves from
            zeros), ``ms_per_step`` (training time only), ``ms_per_step_median``, ``peak_mem_mb``,
            ``solver_steps_per_step`` (mean; and ``_late``: mean over the last half of training),
            ``interp_heldout_psnr`` (linear interpolation of the training samples on the held-out points, the
            floor to beat; ``None`` without a regular-grid split), ...
        history: one dict per logging point: ``step``, ``time_s`` (training time so far), ``loss``, ``psnr``,
            ``train_psnr``, ``heldout_psnr``.
        prediction: ``(N, C)`` prediction on every point at the end.
        solver_steps: solver steps of every training step (implicit models; empty otherwise).
    """

    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    prediction: Tensor | None = None
    solver_steps: list[int] = field(default_factory=list)


@torch.no_grad()
def evaluate(model: nn.Module, data: CoordData, chunk: int = 65536) -> tuple[dict[str, float], Tensor]:
    """Full-grid prediction (implicit models: solved from zeros) and PSNR on all / train / held-out points."""
    device = next(model.parameters()).device
    pred = model.predict(data.coords.to(device), chunk=chunk).cpu()
    out = {"psnr": psnr(pred, data.values, data.kind),
           "train_psnr": psnr(pred[data.train_idx], data.values[data.train_idx], data.kind)}
    out["heldout_psnr"] = (psnr(pred[data.test_idx], data.values[data.test_idx], data.kind)
                           if len(data.test_idx) else float("nan"))
    return out, pred


def fit(model: nn.Module, data: CoordData, *, steps: int = 300, lr: float | None = None, batch_size: int | None = None,
        log_every: int | None = None, time_budget: float | None = None, grad_clip: float | None = None,
        seed: int = 0, progress: bool = True, measure_memory: bool = True, desc: str | None = None,
        device: str | torch.device | None = None, schedule: str = "constant",
        after_step: Callable[[nn.Module], None] | None = None) -> FitResult:
    """Fit ``model`` to ``data`` with Adam (betas 0.9/0.999), one model per signal.

    Arguments:
        model: an INR from :func:`deq_inr.build_model` (``forward(coords, cache_key=...) -> (y, info)``).
        data: :class:`CoordData`; training uses ``data.train_idx`` only.
        steps: training steps (at most).
        lr: Adam learning rate; ``None`` = the model's ``default_lr`` (iSIREN ``3e-3 * min(1, 256 / width)``,
            the others 1e-3).
        schedule: ``constant`` (the paper's) or ``cosine`` (``lr * (1 + cos(pi t / steps)) / 2`` at step ``t``;
            see :func:`lr_factor`).
        after_step: called as ``after_step(model)`` after every optimizer step (e.g. a projection of the
            weights; the ablations use it), not counted separately from the step time.
        batch_size: ``None`` = full batch (amortized implicit models warm-start from the previous step's fixed
            point, keyed by the fixed training set); otherwise random mini-batches (no amortization).
        log_every: evaluate (full solve on every point, not counted as training time) every this many steps
            (default ``steps // 10``); the last step is always evaluated.
        time_budget: stop once the training time reaches this many seconds.
        grad_clip: clip gradient values to ``+-grad_clip`` (video uses 0.1).
        measure_memory: measure activation memory on one training step (saved-tensor hooks) and CUDA peak.

    Returns:
        :class:`FitResult`.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if lr is None:
        lr = float(getattr(model, "default_lr", 1e-3))
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    _check_count("batch_size", batch_size, least=1)   # None: full batch
    if grad_clip is not None and not (isinstance(grad_clip, (int, float)) and grad_clip > 0):
        raise ValueError(f"grad_clip must be a number > 0 or None, got {grad_clip!r}")
    _check_model_fits_data(model, data)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    torch.manual_seed(seed)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).train()
    cuda = device.type == "cuda"
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    xs, ys = (t.to(device) for t in data.train())
    log_every = max(1, steps // 10) if log_every is None else max(1, log_every)
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    step_ms: list[float] = []
    solver_steps: list[int] = []
    nfev: list[int] = []
    act_bytes = 0
    train_time = 0.0
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    if hasattr(model, "deq"):
        model.deq.clear_cache()

    def one_step() -> Tensor:
        if batch_size is None or batch_size >= len(xs):
            xb, yb, key = xs, ys, "train"
        else:
            sel = torch.randint(len(xs), (batch_size,), generator=gen).to(device)
            xb, yb, key = xs[sel], ys[sel], None
        opt.zero_grad(set_to_none=True)
        y, info = model(xb, cache_key=key)
        loss = torch.mean((y - yb) ** 2)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_value_(model.parameters(), grad_clip)
        opt.step()
        if after_step is not None:
            after_step(model)
        if info is not None:
            solver_steps.append(int(info.stats.steps.max()))
            nfev.append(int(info.stats.nfev))
        return loss.detach()

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, desc=desc or getattr(model, "name", "fit"), disable=not progress, leave=False)
    done = 0
    try:
        for step in range(1, steps + 1):
            for group in opt.param_groups:
                group["lr"] = lr * lr_factor(schedule, step - 1, steps)
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            if measure_memory and step == min(3, steps):
                box: list[Tensor] = []
                act_bytes = saved_activation_bytes(partial(_append_step, box, one_step))
                loss = box[0]
            else:
                loss = one_step()
            if cuda:
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            train_time += dt
            step_ms.append(1000 * dt)
            done = step
            last = step == steps or (time_budget is not None and train_time >= time_budget)
            if step % log_every == 0 or last or step == 1:
                ev, _ = evaluate(model, data)
                history.append({"step": step, "time_s": train_time, "loss": float(loss), **ev})
                bar.set_postfix(loss=f"{float(loss):.2e}", heldout=f"{ev['heldout_psnr']:.2f}",
                                psnr=f"{ev['psnr']:.2f}")
            bar.update(1)
            if last:
                break
    finally:
        bar.close()
    final, pred = evaluate(model, data)
    half = solver_steps[len(solver_steps) // 2:]
    metrics: dict[str, Any] = {
        **final,
        "steps": done,
        "train_time_s": train_time,
        "ms_per_step": 1000 * train_time / done,
        "ms_per_step_median": statistics.median(step_ms),
        "final_loss": history[-1]["loss"],
        "solver_steps_per_step": (sum(solver_steps) / len(solver_steps)) if solver_steps else None,
        "solver_steps_per_step_late": (sum(half) / len(half)) if half else None,
        "f_evals_per_step_late": (sum(nfev[len(nfev) // 2:]) / len(half)) if half else None,
        "params": sum(p.numel() for p in model.parameters()),
        "lr": lr,
        "schedule": schedule,
        "rss_peak_mb": rss_peak_mb(),
        "device": str(device),
    }
    if cuda:
        metrics["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        metrics["peak_mem_kind"] = "torch.cuda.max_memory_allocated"
    else:
        metrics["peak_mem_mb"] = training_memory_mb(model, act_bytes) if measure_memory else None
        metrics["peak_mem_kind"] = "params+grads+Adam state+autograd-saved activations (one step, measured)"
    metrics["activation_mb"] = act_bytes / 2**20 if measure_memory else None
    metrics["interp_heldout_psnr"] = interpolation_heldout_psnr(data)
    return FitResult(metrics, history, pred, solver_steps)



def _check_model_fits_data(model: nn.Module, data: CoordData) -> None:
    """A model whose config() states its coordinate / channel sizes must match the data's."""
    cfg = model.config() if callable(getattr(model, "config", None)) else {}
    want = (cfg.get("in_features", data.in_features), cfg.get("out_features", data.channels))
    if want != (data.in_features, data.channels):
        raise DeqInputError(f"the model maps {want[0]}-D coordinates to {want[1]} channel(s), but the data "
                            f"{data.name!r} has {data.in_features}-D coordinates and {data.channels} channel(s)")


def _append_step(box: list[Tensor], step: Callable[[], Tensor]) -> None:
    box.append(step())
