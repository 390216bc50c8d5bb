"""Adversarial training of a DEQ classifier with JIO (adversarial JIIO) and its PGD-20 baseline.

Threat model: an L2 ball of radius ``eps`` (``eps = 1`` on ``[0, 1]`` MNIST pixels, as in the JIIO paper)
around each image ``u``; the attack maximizes the cross entropy of the classifier at the equilibrium of
``z = f(z, u + delta)``.

**JIO** (JIIO with a sign): one augmented fixed point over ``(z, mu, delta)``, with the inner loss
``l(z, delta) = -10 * CE(h(z), y)`` (per sample; descending it ascends the CE), the per-sample normalized step
and the projection ``Pi_eps(delta) = delta * min(1, eps / ||delta||_2)``::

    z+     = z + beta_z (f(z, u + delta) - z)
    mu+    = mu + beta_mu ((df/dz)^T mu + grad_z l - mu)
    delta+ = Pi_eps(delta - alpha d / ||d||_2),   d = (df/ddelta)^T mu + grad_delta l

(paper settings: ``T = 80``, ``alpha = 0.6 -> 0.2`` at iteration 50, Anderson with ``m = 20``).

**PGD-20** baseline: ``delta = 0``; 20 times: a full DEQ forward solve at ``u + delta``, an implicit backward
for ``g = grad_delta CE``, ``delta <- Pi_eps(delta + lr g / ||g||_2)`` with ``lr = 0.2``.

Attacks are scored on an equilibrium re-solved from zero at ``u + delta*`` (the JIIO state need not satisfy
``z = f(z, u + delta*)``). Training ``theta`` treats ``delta*`` as a constant, which is exact at the inner optimum
(Danskin's theorem).

Example:
    >>> import torch
    >>> from deq_tasks.adversarial import project_l2
    >>> d = project_l2(torch.full((2, 1, 28, 28), 1.0), eps=1.0)
    >>> [round(float(n), 4) for n in d.flatten(1).norm(dim=1)]
    [1.0, 1.0]
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from deq_core import DeqConfigError, DeqInputError

from ._adv_meta_utils import (
    config_from,
    jsonable,
    load_checkpoint,
    load_mnist,
    make_solver,
    progress_bar,
    save_checkpoint,
    seed_all,
)
from .models.classifier import MDEQClassifier

__all__ = [
    "AdversarialConfig", "AdversarialTask", "project_l2", "check_eps", "jio_attack", "pgd_attack", "adversarial_loss",
    "robust_accuracy", "train_classifier", "build_classifier", "solve_iterations", "run",
]


def _jio_solver(name: str, m: int) -> Any:
    """The solver JIO runs on the augmented map: ``name`` from the registry, with memory ``m`` if it is
    ``"anderson"``."""
    return make_solver(name, **({"m": m} if name == "anderson" else {}))


@dataclass
class AdversarialConfig:
    """Settings of the ``adversarial`` task (defaults: the paper's MNIST settings, CPU-sized training, except JIO's).

    Attributes:
        eps: L2 radius of the threat model on ``[0, 1]`` pixels (> 0).
        jio_budget, jio_alpha, jio_alpha_final, jio_switch_at, jio_solver, jio_m: JIO iterations, step size
            before/after the switch iteration, the solver of the augmented map (``"fixed-point"`` = the damped
            JIIO iteration itself, or ``"anderson"`` with memory ``jio_m``, the paper's choice: T = 80,
            0.6 -> 0.2 at 50, m = 20). Measured on the clean- and PGD-trained MNIST classifiers (32 test images):
            Anderson's extrapolation weakens the attack (its normalized, projected step is not smooth at the
            ball's boundary); the plain iteration with T = 40, 1.0 -> 0.1 at 25 reaches PGD-20's adversarial loss
            on both (4.29 vs 4.23, 1.137 vs 1.136), where Anderson m = 20 reaches 3.67 at T = 80.
        loss_scale: inner loss ``-loss_scale * CE`` (the paper's 10).
        pgd_steps, pgd_lr: PGD baseline (20 steps, lr 0.2).
        channels, solver, max_steps, backward_steps, rtol: the DEQ classifier and its equilibrium solve
            (papers: 18 forward / 20 backward iterations).
        n_train, n_test: MNIST-5k split sizes (shuffled with ``seed``; disjoint).
        clean_epochs: clean (pre-)training epochs shared by the three models; adv_epochs: adversarial fine-tuning
            epochs of the PGD and JIO models (each starts from the clean model) over the first
            ``adv_train_samples`` training images (``None`` = all; PGD-20 training costs ~20 DEQ solves a batch).
        batch_size, lr, jac_reg: optimizer settings and Jacobian-regularization weight (Hutchinson, 1 probe; the
            paper's MNIST value is 0.01, off by default here to save CPU time).
        eval_batches: test batches attacked when scoring (``None`` = all).
        seed: random seed.
    """

    eps: float = 1.0
    jio_budget: int = 40
    jio_alpha: float = 1.0
    jio_alpha_final: float = 0.1
    jio_switch_at: int = 25
    jio_solver: str = "fixed-point"
    jio_m: int = 20
    loss_scale: float = 10.0
    pgd_steps: int = 20
    pgd_lr: float = 0.2
    channels: tuple[int, int] = (16, 24)
    solver: str = "anderson"
    max_steps: int = 18
    backward_steps: int = 20
    rtol: float = 1e-4
    n_train: int = 4000
    n_test: int = 1000
    clean_epochs: int = 5
    adv_epochs: int = 1
    adv_train_samples: int | None = 2000
    batch_size: int = 64
    lr: float = 3e-3
    jac_reg: float = 0.0
    eval_batches: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_eps(self.eps)
        for name in ("jio_alpha", "jio_alpha_final", "pgd_lr", "lr", "loss_scale"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0):
                raise DeqConfigError(f"AdversarialConfig.{name} must be a positive number, got {v!r}")
        for name in ("jio_budget", "pgd_steps", "n_train", "n_test", "batch_size", "max_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DeqConfigError(f"AdversarialConfig.{name} must be an int >= 1, got {v!r}")
        _jio_solver(self.jio_solver, self.jio_m)  # an unknown name fails here

    @classmethod
    def quick(cls, **overrides: Any) -> AdversarialConfig:
        """A seconds-scale configuration for tests and ``--quick`` runs."""
        base = dict(n_train=256, n_test=64, clean_epochs=1, adv_epochs=1, batch_size=64, jio_budget=30,
                    jio_switch_at=20, pgd_steps=5, max_steps=12, backward_steps=12)
        base.update(overrides)
        return cls(**base)


def check_eps(eps: float) -> None:
    """Raise :class:`DeqConfigError` unless ``eps`` is a finite number > 0."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (eps > 0 and math.isfinite(eps)):
        raise DeqConfigError(f"eps (the L2 radius of the threat model) must be a finite number > 0, got {eps!r}")


def project_l2(delta: Tensor, eps: float) -> Tensor:
    """``Pi_eps(delta) = delta * min(1, eps / ||delta||_2)`` per sample (norm over all non-batch dims).

    Raises:
        DeqConfigError: ``eps <= 0``.
    """
    check_eps(eps)
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    scale = (eps / norms).clamp(max=1.0)
    return delta * scale.view(-1, *([1] * (delta.dim() - 1)))


def _check_batch(model: MDEQClassifier, u: Tensor, y: Tensor) -> None:
    model.check_images(u)
    if y.shape != (u.shape[0],) or y.dtype != torch.long:
        raise DeqInputError(f"labels must be a long tensor of shape ({u.shape[0]},), got {y.dtype} {tuple(y.shape)}")


def adversarial_loss(model: MDEQClassifier, u: Tensor, delta: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Score a perturbation on a re-solved equilibrium: ``(CE per sample (B,), correct (B,) bool)`` at ``u + delta``."""
    _check_batch(model, u, y)
    with torch.no_grad():
        logits = model(u + delta)
        return F.cross_entropy(logits, y, reduction="none"), logits.argmax(1) == y


def jio_attack(model: MDEQClassifier, u: Tensor, y: Tensor, eps: float = 1.0, *, budget: int = 80,
               alpha: float = 0.6, alpha_final: float = 0.2, switch_at: int = 50, m: int = 20,
               loss_scale: float = 10.0, solver: str = "anderson") -> tuple[Tensor, Any]:
    """JIO: the adversarial perturbation ``delta*`` (``||delta*||_2 <= eps``) from one augmented JIIO solve.

    Arguments:
        model: the DEQ classifier (its parameters are not changed).
        u: images (B, 1, 28, 28) in ``[0, 1]``; y: labels (B,).
        eps: L2 radius; budget, alpha, alpha_final, switch_at, m: JIIO settings (paper: 80, 0.6, 0.2, 50, 20).
        solver: ``"anderson"`` (memory ``m``, the paper's) or any registered solver name for the augmented map
            (``"fixed-point"``: the plain damped JIIO iteration, the task's default, see :class:`AdversarialConfig`).
        loss_scale: the engine maximizes ``loss_scale * CE`` per sample (descends ``-loss_scale * CE``).

    Returns:
        ``(delta*, JIIOResult)``.

    Raises:
        DeqConfigError: ``eps <= 0`` or a bad JIIO setting.
        DeqInputError: images or labels of the wrong shape.
    """
    from .jiio import JIIOConfig, JIIOProblem, jiio_solve

    check_eps(eps)
    _check_batch(model, u, y)
    u = u.detach()

    def f(z: Tensor, delta: Tensor) -> Tensor:
        return model.f(z, u + delta)

    def objective(z: Tensor, delta: Tensor) -> Tensor:  # maximized: the engine descends -loss_scale * CE
        return loss_scale * F.cross_entropy(model.logits(z), y, reduction="none")

    problem = JIIOProblem(f=f, objective=objective, project=lambda d: project_l2(d, eps), maximize=True)
    config = JIIOConfig(budget=budget, alpha=alpha, alpha_final=alpha_final, switch_at=switch_at,
                        normalized_step=True, solver=_jio_solver(solver, m),
                        best_iterate=True)
    was_training = model.training
    model.eval()
    try:
        result = jiio_solve(problem, model.z0(u), torch.zeros_like(u), config)
    finally:
        model.train(was_training)
    # Anderson mixes iterates with possibly negative weights, which can leave the ball: project once more
    return project_l2(result.x.detach(), eps), result


def pgd_attack(model: MDEQClassifier, u: Tensor, y: Tensor, eps: float = 1.0, *, steps: int = 20,
               lr: float = 0.2) -> Tensor:
    """PGD with L2-normalized gradient steps from ``delta = 0``; each step a full DEQ solve + implicit backward.

    Returns:
        ``delta`` (B, 1, 28, 28) with ``||delta||_2 <= eps`` per sample.

    Raises:
        DeqConfigError: ``eps <= 0``, ``steps < 1`` or ``lr <= 0``.
    """
    check_eps(eps)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DeqConfigError(f"steps must be an int >= 1, got {steps!r}")
    if not lr > 0:
        raise DeqConfigError(f"lr must be > 0, got {lr!r}")
    _check_batch(model, u, y)
    was_training = model.training
    model.eval()
    delta = torch.zeros_like(u)
    try:
        for _ in range(steps):
            delta.requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(u.detach() + delta), y, reduction="sum")
                (g,) = torch.autograd.grad(loss, delta)
            gn = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta = project_l2(delta.detach() + lr * g / gn, eps)
    finally:
        model.train(was_training)
    return delta.detach()


def _attack(model: MDEQClassifier, kind: str, u: Tensor, y: Tensor, cfg: AdversarialConfig) -> Tensor:
    if kind == "clean":
        return torch.zeros_like(u)
    if kind == "pgd":
        return pgd_attack(model, u, y, cfg.eps, steps=cfg.pgd_steps, lr=cfg.pgd_lr)
    if kind == "jio":
        return jio_attack(model, u, y, cfg.eps, budget=cfg.jio_budget, alpha=cfg.jio_alpha,
                          alpha_final=cfg.jio_alpha_final, switch_at=min(cfg.jio_switch_at, cfg.jio_budget),
                          m=cfg.jio_m, loss_scale=cfg.loss_scale, solver=cfg.jio_solver)[0]
    raise DeqConfigError(f"unknown attack {kind!r}; expected one of clean, pgd, jio")


def robust_accuracy(model: MDEQClassifier, X: Tensor, Y: Tensor, attack: str, cfg: AdversarialConfig,
                    progress: bool = False) -> float:
    """Accuracy (%) on ``(X, Y)`` under ``attack`` in {clean, pgd, jio}, scored on re-solved equilibria."""
    correct, total = 0, 0
    batches = list(zip(X.split(cfg.batch_size), Y.split(cfg.batch_size)))
    if cfg.eval_batches is not None:
        batches = batches[: cfg.eval_batches]
    for u, y in progress_bar(batches, desc=f"eval {attack}", disable=not progress):
        delta = _attack(model, attack, u, y, cfg)
        _, ok = adversarial_loss(model, u, delta, y)
        correct += int(ok.sum())
        total += len(y)
    return 100.0 * correct / max(total, 1)


def build_classifier(cfg: AdversarialConfig) -> MDEQClassifier:
    return MDEQClassifier(channels=tuple(cfg.channels), solver=make_solver(cfg.solver), max_steps=cfg.max_steps,
                          rtol=cfg.rtol, backward_steps=cfg.backward_steps, jac_reg_probes=1 if cfg.jac_reg > 0 else 0)


def train_classifier(model: MDEQClassifier, X: Tensor, Y: Tensor, mode: str, cfg: AdversarialConfig, *,
                     epochs: int, progress: bool = False) -> list[float]:
    """Train ``model`` in place for ``epochs`` on ``(X, Y)``; ``mode`` in {clean, pgd, jio} picks the training
    perturbation (the attack's ``delta*`` is a constant for the parameter gradient). Returns per-batch losses."""
    if mode not in ("clean", "pgd", "jio"):
        raise DeqConfigError(f"unknown training mode {mode!r}; expected one of clean, pgd, jio")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    n_batches = epochs * math.ceil(len(X) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(n_batches, 1), eta_min=cfg.lr * 1e-2)
    losses: list[float] = []
    gen = torch.Generator().manual_seed(cfg.seed + 17)
    bar = progress_bar(total=n_batches, desc=f"train {mode}", disable=not progress)
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=gen)
        for idx in perm.split(cfg.batch_size):
            u, y = X[idx], Y[idx]
            delta = _attack(model, mode, u, y, cfg)
            model.train()
            logits = model(u + delta)
            loss = F.cross_entropy(logits, y)
            info = model.last_info
            if cfg.jac_reg > 0 and info is not None and info.jac_loss is not None:
                loss = loss + cfg.jac_reg * info.jac_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", steps=int(info.stats.steps.float().mean()) if info else -1)
    bar.close()
    return losses


def solve_iterations(model: MDEQClassifier, u: Tensor, max_steps: int = 60,
                     thresholds: tuple[float, ...] = (1e-2, 3e-3, 1e-3)) -> dict[str, Any]:
    """How many iterations the model's own forward solve (its solver, from zero) needs at ``u``: for each relative
    residual threshold, the mean over the batch of the first step that reaches it (``max_steps`` + 1 if never),
    and the fraction of samples that reach it within ``max_steps``."""
    saved = (model.deq.rtol, model.deq.max_steps, model.deq.eval_max_steps)
    model.deq.rtol, model.deq.max_steps, model.deq.eval_max_steps = min(thresholds) * 1e-3, max_steps, max_steps
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(u)
        trace = model.last_info.stats.trace  # (T + 1, B)
        out: dict[str, Any] = {"solver": model.solver.name, "max_steps": max_steps,
                               "final_rel_residual": float(trace[-1].mean())}
        for thr in thresholds:
            hit = trace <= thr
            first = torch.where(hit.any(0), hit.float().argmax(0), torch.full_like(hit[0], max_steps + 1,
                                                                                   dtype=torch.long))
            out[f"steps_to_{thr:g}"] = float(first.float().mean())
            out[f"reached_{thr:g}"] = float(hit.any(0).float().mean())
        return out
    finally:
        model.deq.rtol, model.deq.max_steps, model.deq.eval_max_steps = saved
        model.train(was_training)


def _example_grid(u: Tensor, d_pgd: Tensor, d_jio: Tensor, path: Path, preds: dict[str, Tensor]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(8, len(u))
    rows = [("clean", u), ("PGD-20", u + d_pgd), ("JIO", u + d_jio), ("JIO delta", d_jio)]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.45 * len(rows)))
    for r, (name, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            img = imgs[c, 0].detach().cpu().numpy()
            if name == "JIO delta":
                lim = float(abs(img).max()) + 1e-8
                ax.imshow(img, cmap="seismic", vmin=-lim, vmax=lim)
            else:
                ax.imshow(img.clip(0, 1), cmap="gray", vmin=0, vmax=1)
                key = {"clean": "clean", "PGD-20": "pgd", "JIO": "jio"}[name]
                ax.set_title(f"pred {int(preds[key][c])}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle("L2 eps=1 attacks on the clean-trained DEQ classifier", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(config: AdversarialConfig | dict[str, Any] | None = None, out_dir: str | Path = "runs/adversarial",
        progress: bool = True, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Train clean / PGD / JIO DEQ classifiers on MNIST-5k and fill the 3x3 accuracy table.

    The clean model is trained first (or loaded from ``checkpoint``); the PGD and JIO models start from it and are
    fine-tuned adversarially for ``adv_epochs``. Writes ``metrics.json``, ``adversarial_examples.png`` and one
    safetensors checkpoint per model (``classifier_{clean,pgd,jio}.safetensors``) into ``out_dir``.

    Arguments:
        config: an :class:`AdversarialConfig`, a dict of its fields, or ``None`` for the defaults
            (``{"quick": True, ...}`` starts from :meth:`AdversarialConfig.quick`).
        out_dir: output directory (created).
        progress: show tqdm progress bars.
        checkpoint: a ``classifier_*.safetensors`` from an earlier run to use as the clean model.

    Returns:
        the metrics dict (also in ``metrics.json``).
    """
    cfg = _as_config(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_all(cfg.seed)
    Xtr, Ytr, Xte, Yte = load_mnist(cfg.n_train, cfg.n_test, cfg.seed)
    t0 = time.perf_counter()
    base = build_classifier(cfg)
    train_seconds: dict[str, float] = {}
    if checkpoint is not None:
        load_checkpoint(base, checkpoint)
    else:
        t = time.perf_counter()
        train_classifier(base, Xtr, Ytr, "clean", cfg, epochs=cfg.clean_epochs, progress=progress)
        train_seconds["clean"] = time.perf_counter() - t
    models = {"clean": base}
    for mode in ("pgd", "jio"):
        m = build_classifier(cfg)
        m.load_state_dict(base.state_dict())
        t = time.perf_counter()
        n_adv = len(Xtr) if cfg.adv_train_samples is None else min(cfg.adv_train_samples, len(Xtr))
        train_classifier(m, Xtr[:n_adv], Ytr[:n_adv], mode, cfg, epochs=cfg.adv_epochs, progress=progress)
        train_seconds[mode] = time.perf_counter() - t
        models[mode] = m
    table: dict[str, dict[str, float]] = {}
    for name, m in models.items():
        table[name] = {a: robust_accuracy(m, Xte, Yte, a, cfg, progress=progress) for a in ("clean", "pgd", "jio")}
    iters = solve_iterations(base, Xte[:64])
    u, y = Xte[:8], Yte[:8]
    d_pgd = _attack(base, "pgd", u, y, cfg)
    d_jio = _attack(base, "jio", u, y, cfg)
    preds = {}
    with torch.no_grad():
        base.eval()
        for k, d in (("clean", torch.zeros_like(u)), ("pgd", d_pgd), ("jio", d_jio)):
            preds[k] = base(u + d).argmax(1)
    _example_grid(u, d_pgd, d_jio, out / "adversarial_examples.png", preds)
    for name, m in models.items():
        save_checkpoint(m, out / f"classifier_{name}.safetensors",
                        {"task": "adversarial", "trained_with": name, "model": m.hparams,
                         "config": jsonable(asdict(cfg))})
    metrics = {
        "task": "adversarial",
        "config": jsonable(asdict(cfg)),
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "accuracy": table,
        "rows_trained_with": ["clean", "pgd", "jio"],
        "columns_attack": ["clean", "pgd", "jio"],
        "robust_gap_pgd_points": abs(table["pgd"]["pgd"] - table["jio"]["pgd"]),
        "train_seconds": train_seconds,
        "forward_solve_iterations": iters,
        "total_seconds": time.perf_counter() - t0,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


class AdversarialTask:
    """``deq tasks run adversarial``: clean / PGD-20 / JIO adversarial training of an MDEQ-style DEQ classifier
    on MNIST-5k (L2, eps = 1) and the 3x3 clean / PGD / JIO accuracy table.

    Options: every field of :class:`AdversarialConfig` (``--eps 1.0 --n_train 4000 ...``) and ``quick``.
    """

    name = "adversarial"

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)
        self.config = _as_config(self.options)  # validates now: a typo fails before training starts

    def run(self, out: str | Path, *, checkpoint: str | Path | None = None, progress_bar: bool = True,
            progress: bool | None = None) -> dict[str, Any]:
        show = progress_bar if progress is None else progress
        return run(self.config, out, progress=show, checkpoint=checkpoint)


def _as_config(config: AdversarialConfig | dict[str, Any] | None) -> AdversarialConfig:
    return config_from(AdversarialConfig, config, "adversarial", {"epochs": ("clean_epochs", int)})
