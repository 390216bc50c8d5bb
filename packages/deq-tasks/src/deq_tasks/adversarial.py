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

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from deq_core import DeqConfigError, DeqInputError, registry

from ._base import Progress, TaskBase, check_int, check_number, help_field, save_curves, write_metrics
from .data import load_labelled
from .jiio import JIIOConfig, JIIOProblem, jiio_solve, l2_ball
from .models.classifier import MDEQClassifier

__all__ = [
    "ADVERSARIAL_JIO", "AdversarialConfig", "AdversarialTask", "adversarial_loss", "build_classifier", "check_eps",
    "compare_attacks", "jio_attack", "pgd_attack", "project_l2", "robust_accuracy", "solve_iterations",
    "train_classifier",
]

MODEL_KIND = "mdeq-classifier"

ADVERSARIAL_JIO = JIIOConfig(budget=40, alpha=1.0, alpha_final=0.1, switch_at=25, normalized_step=True,
                             solver="fixed-point")
"""JIO's settings (measured on the clean- and PGD-trained MNIST classifiers, 32 test images): Anderson's
extrapolation weakens the attack (its normalized, projected step is not smooth at the ball's boundary); the plain
damped iteration with T = 40, 1.0 -> 0.1 at 25 reaches PGD-20's adversarial loss on both (4.29 vs 4.23, 1.137 vs
1.136), where the paper's Anderson m = 20 reaches 3.67 at T = 80."""


@dataclass(frozen=True)
class AdversarialConfig:
    """Options of ``deq tasks run adversarial`` (defaults: the paper's MNIST settings, CPU-sized training, except
    JIO's, :data:`ADVERSARIAL_JIO`)."""

    data: str = help_field("mnist", "'mnist' (MNIST-5k) or a labelled .npz with images 'x' and integer labels 'y' "
                                    "(resized to 28x28 gray)")
    eps: float = help_field(1.0, "L2 radius of the threat model on [0, 1] pixels")
    jiio: JIIOConfig = help_field(help="JIO, the attack", factory=lambda: ADVERSARIAL_JIO)
    loss_scale: float = help_field(10.0, "JIO's inner loss is -loss_scale * CE (the paper's 10; no effect on x with "
                                         "the normalized step, the default)")
    eval_budgets: tuple[int, ...] = help_field((10, 20, 40), "JIO budgets timed against PGD on one test batch")
    pgd_steps: int = help_field(20, "PGD baseline: steps")
    pgd_lr: float = help_field(0.2, "PGD baseline: L2-normalized step length")
    channels: tuple[int, int] = help_field((16, 24), "channels of the classifier's two branches")
    solver: str = help_field("anderson", "the classifier's own equilibrium solver (registered name)")
    max_steps: int = help_field(18, "forward solver iterations (papers: 18)")
    backward_steps: int = help_field(20, "backward solver iterations (papers: 20)")
    rtol: float = help_field(1e-4, "relative tolerance of the classifier's solves")
    n_train: int | None = help_field(None, "training images (none: min(4000, all but the test set))")
    n_test: int | None = help_field(None, "test images (none: min(1000, a fifth))")
    epochs: int = help_field(5, "clean (pre-)training epochs shared by the three models")
    adv_epochs: int = help_field(1, "adversarial fine-tuning epochs of the PGD and JIO models")
    adv_train_samples: int | None = help_field(2000, "training images used for adversarial fine-tuning (none: all)")
    batch: int = help_field(64, "batch size")
    lr: float = help_field(3e-3, "Adam learning rate")
    jac_reg: float = help_field(0.0, "Jacobian-regularization weight (paper's MNIST value 0.01)")
    eval_batches: int | None = help_field(None, "test batches attacked when scoring (none: all)")
    seed: int = help_field(0, "random seed")

    def __post_init__(self) -> None:
        check_eps(self.eps)
        for name in ("pgd_lr", "lr", "loss_scale", "rtol"):
            check_number(self, name, getattr(self, name))
        check_number(self, "jac_reg", self.jac_reg, allow_low=True)
        for name in ("pgd_steps", "batch", "max_steps", "backward_steps", "epochs"):
            check_int(self, name, getattr(self, name), 1)
        check_int(self, "adv_epochs", self.adv_epochs, 0)
        for name in ("n_train", "n_test", "adv_train_samples", "eval_batches"):
            check_int(self, name, getattr(self, name), 1, optional=True)
        if not isinstance(self.jiio, JIIOConfig):
            raise DeqConfigError(f"AdversarialConfig.jiio must be a JIIOConfig, got {type(self.jiio).__name__}")
        if len(tuple(self.channels)) != 2 or not all(isinstance(c, int) and c >= 2 for c in self.channels):
            raise DeqConfigError(f"AdversarialConfig.channels must be two integers >= 2, got {self.channels!r}")
        object.__setattr__(self, "channels", tuple(self.channels))
        budgets = (self.eval_budgets,) if isinstance(self.eval_budgets, int) else tuple(self.eval_budgets)
        if not budgets or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in budgets):
            raise DeqConfigError(f"AdversarialConfig.eval_budgets must be integers >= 1, got {self.eval_budgets!r}")
        object.__setattr__(self, "eval_budgets", budgets)
        registry.get_solver(self.solver)
        self.jiio.make_solver()   # an unknown solver name or option fails here, before any data is read


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
    return l2_ball(eps)(delta)


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


def jio_attack(model: MDEQClassifier, u: Tensor, y: Tensor, eps: float = 1.0, config: JIIOConfig | None = None, *,
               loss_scale: float = 10.0) -> tuple[Tensor, Any]:
    """JIO: the adversarial perturbation ``delta*`` (``||delta*||_2 <= eps``) from one augmented JIIO solve.

    Arguments:
        model: the DEQ classifier (its parameters are not changed).
        u: images (B, 1, 28, 28) in ``[0, 1]``; y: labels (B,).
        eps: L2 radius; config: the JIIO settings (default :data:`ADVERSARIAL_JIO`; the paper's: T = 80,
            0.6 -> 0.2 at 50, Anderson m = 20, normalized step).
        loss_scale: the engine maximizes ``loss_scale * CE`` per sample (descends ``-loss_scale * CE``).

    Returns:
        ``(delta*, JIIOResult)``.

    Raises:
        DeqConfigError: ``eps <= 0`` or a bad JIIO setting.
        DeqInputError: images or labels of the wrong shape.
    """
    check_eps(eps)
    _check_batch(model, u, y)
    config = ADVERSARIAL_JIO if config is None else config
    u = u.detach()

    def f(z: Tensor, delta: Tensor) -> Tensor:
        return model.f(z, u + delta)

    def objective(z: Tensor, delta: Tensor) -> Tensor:  # maximized: the engine descends -loss_scale * CE
        return loss_scale * F.cross_entropy(model.logits(z), y, reduction="none")

    problem = JIIOProblem(f=f, objective=objective, project=l2_ball(eps), maximize=True)
    was_training = model.training
    model.eval()
    try:
        result = jiio_solve(problem, model.z0(u), torch.zeros_like(u), config)
    finally:
        model.train(was_training)
    # Anderson mixes iterates with possibly negative weights, which can leave the ball: project once more
    return project_l2(result.x.detach(), eps), result


def pgd_attack(model: MDEQClassifier, u: Tensor, y: Tensor, eps: float = 1.0, *, steps: int = 20,
               lr: float = 0.2, trace: list[tuple[float, float]] | None = None) -> Tensor:
    """PGD with L2-normalized gradient steps from ``delta = 0``; each step a full DEQ solve + implicit backward.

    ``trace``: if a list is given, ``(seconds since the start, mean CE at the equilibrium)`` is appended before
    each step (the CE of that step's forward solve); the final point is the caller's to score.

    Returns:
        ``delta`` (B, 1, 28, 28) with ``||delta||_2 <= eps`` per sample.

    Raises:
        DeqConfigError: ``eps <= 0``, ``steps < 1`` or ``lr <= 0``.
    """
    check_eps(eps)
    check_int(None, "steps", steps, 1)
    check_number(None, "lr", lr)
    _check_batch(model, u, y)
    was_training = model.training
    model.eval()
    delta = torch.zeros_like(u)
    t0 = time.perf_counter()
    try:
        for _ in range(steps):
            delta.requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(u.detach() + delta), y, reduction="sum")
                (g,) = torch.autograd.grad(loss, delta)
            if trace is not None:
                trace.append((time.perf_counter() - t0, float(loss.detach()) / len(y)))
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
        return jio_attack(model, u, y, cfg.eps, cfg.jiio, loss_scale=cfg.loss_scale)[0]
    raise DeqConfigError(f"unknown attack {kind!r}; expected one of clean, pgd, jio")


def _batches(X: Tensor, Y: Tensor, cfg: AdversarialConfig) -> list[tuple[Tensor, Tensor]]:
    batches = list(zip(X.split(cfg.batch), Y.split(cfg.batch)))
    return batches if cfg.eval_batches is None else batches[: cfg.eval_batches]


def robust_accuracy(model: MDEQClassifier, X: Tensor, Y: Tensor, attack: str, cfg: AdversarialConfig,
                    progress: Progress | None = None) -> float:
    """Accuracy (%) on ``(X, Y)`` under ``attack`` in {clean, pgd, jio}, scored on re-solved equilibria."""
    correct, total = 0, 0
    for u, y in _batches(X, Y, cfg):
        delta = _attack(model, attack, u, y, cfg)
        _, ok = adversarial_loss(model, u, delta, y)
        correct += int(ok.sum())
        total += len(y)
        if progress is not None:
            progress.update()
    return 100.0 * correct / max(total, 1)


def compare_attacks(model: MDEQClassifier, u: Tensor, y: Tensor, cfg: AdversarialConfig) -> dict[str, Any]:
    """JIO at each of ``cfg.eval_budgets`` (and ``cfg.jiio.budget``) against PGD on the same batch, both scored by
    the mean CE at an equilibrium re-solved from zero at ``u + delta``; wall times of the whole attacks.

    Returns:
        ``{"pgd": {loss per step, seconds per step, final loss, seconds}, "jio": [per budget: loss, seconds],
        "speedup": {"pgd_time_to_jio_loss_over_jio_time" (at ``cfg.jiio.budget``; null if PGD never reaches it),
        "jio_reaches_pgd_loss": first budget whose loss >= PGD's final one, its seconds and PGD's time / its time}}``.
    """
    pgd_attack(model, u[:2], y[:2], cfg.eps, steps=1)             # first-call costs paid by neither attack
    jio_attack(model, u[:2], y[:2], cfg.eps, cfg.jiio.with_budget(2), loss_scale=cfg.loss_scale)
    trace: list[tuple[float, float]] = []
    t = time.perf_counter()
    d = pgd_attack(model, u, y, cfg.eps, steps=cfg.pgd_steps, lr=cfg.pgd_lr, trace=trace)
    loss, _ = adversarial_loss(model, u, d, y)
    t_pgd = time.perf_counter() - t
    times = [p[0] for p in trace] + [t_pgd]
    losses = [p[1] for p in trace] + [float(loss.mean())]
    rows = []
    for b in sorted(set(cfg.eval_budgets) | {cfg.jiio.budget}):
        t = time.perf_counter()
        d, res = jio_attack(model, u, y, cfg.eps, cfg.jiio.with_budget(b), loss_scale=cfg.loss_scale)
        jl, ok = adversarial_loss(model, u, d, y)
        secs = time.perf_counter() - t
        hit = [i for i, v in enumerate(losses) if v >= float(jl.mean())]
        rows.append({"budget": b, "seconds": secs, "loss": float(jl.mean()),
                     "robust_acc": 100 * float(ok.float().mean()),
                     "pgd_steps_to_reach": hit[0] if hit else None,
                     "speedup_at_equal_loss": times[hit[0]] / secs if hit else None,
                     "on_boundary": res.stats.get("boundary")})
    main = next(r for r in rows if r["budget"] == cfg.jiio.budget)
    reach = next((r for r in rows if r["loss"] >= losses[-1]), None)
    return {"n": len(y), "loss": "mean cross entropy at the re-solved equilibrium",
            "pgd": {"steps": cfg.pgd_steps, "lr": cfg.pgd_lr, "seconds": t_pgd, "loss": losses[-1],
                    "loss_per_step": losses, "seconds_per_step": times},
            "jio": {"budget": cfg.jiio.budget, "loss": main["loss"], "seconds": main["seconds"], "per_budget": rows},
            "speedup": {"pgd_time_to_jio_loss_over_jio_time": main["speedup_at_equal_loss"],
                        "jio_reaches_pgd_loss": None if reach is None else {
                            "budget": reach["budget"], "seconds": reach["seconds"],
                            "speedup": t_pgd / reach["seconds"]}}}


def build_classifier(cfg: AdversarialConfig, num_classes: int = 10) -> MDEQClassifier:
    return MDEQClassifier(channels=tuple(cfg.channels), num_classes=num_classes, solver=registry.get_solver(cfg.solver),
                          max_steps=cfg.max_steps, rtol=cfg.rtol, backward_steps=cfg.backward_steps,
                          jac_reg_probes=1 if cfg.jac_reg > 0 else 0)


def train_classifier(model: MDEQClassifier, X: Tensor, Y: Tensor, mode: str, cfg: AdversarialConfig, *,
                     epochs: int, progress: Progress | None = None) -> list[float]:
    """Train ``model`` in place for ``epochs`` on ``(X, Y)``; ``mode`` in {clean, pgd, jio} picks the training
    perturbation (the attack's ``delta*`` is a constant for the parameter gradient). Returns per-batch losses."""
    if mode not in ("clean", "pgd", "jio"):
        raise DeqConfigError(f"unknown training mode {mode!r}; expected one of clean, pgd, jio")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    n_batches = epochs * math.ceil(len(X) / cfg.batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(n_batches, 1), eta_min=cfg.lr * 1e-2)
    losses: list[float] = []
    gen = torch.Generator().manual_seed(cfg.seed + 17)
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=gen)
        for idx in perm.split(cfg.batch):
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
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{losses[-1]:.3f}")
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
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.45 * len(rows)), squeeze=False)
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


class AdversarialTask(TaskBase):
    """``deq tasks run adversarial``: clean / PGD-20 / JIO adversarial training of an MDEQ-style DEQ classifier
    (L2 ball, eps 1 on [0, 1] pixels), the 3x3 clean / PGD / JIO accuracy table, and JIO against PGD-20 at equal
    attack loss on one test batch (``compare_attacks``).

    The clean model is trained first (or loaded from ``--checkpoint``, a ``classifier_*.safetensors``); the PGD and
    JIO models start from it and are fine-tuned adversarially for ``adv_epochs``. Writes ``metrics.json``,
    ``adversarial_examples.png``, ``training.png`` (the loss curves) and ``classifier_{clean,pgd,jio}.safetensors``.

    Example:
        >>> AdversarialTask(jiio_budget=30).config.jiio.budget
        30
    """

    name = "adversarial"
    Config = AdversarialConfig

    def run(self, out: str | Path, *, checkpoint: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
        c = self.config
        out, _ = self.prepare(out)
        Xtr, Ytr, Xte, Yte, info = load_labelled(c.data, size=28, n_train=c.n_train, n_test=c.n_test, seed=c.seed)
        n_classes = int(info["n_classes"])
        t0 = time.perf_counter()
        base = build_classifier(c, n_classes)
        if checkpoint is not None:
            state, meta = self.read_checkpoint(checkpoint, [MODEL_KIND])
            hp = meta.get("hparams", {})
            if hp.get("num_classes", n_classes) != n_classes:
                raise DeqInputError(f"checkpoint {str(checkpoint)!r} classifies {hp.get('num_classes')} classes, "
                                    f"the data has {n_classes}")
            self.load_state(base, state, checkpoint)
        n_adv = len(Xtr) if c.adv_train_samples is None else min(c.adv_train_samples, len(Xtr))
        per_epoch = math.ceil(len(Xtr) / c.batch)
        n_eval = len(_batches(Xte, Yte, c))
        total = (0 if checkpoint is not None else c.epochs * per_epoch) + 2 * c.adv_epochs * math.ceil(n_adv / c.batch)
        bar = self.progress(total + 9 * n_eval + 2, progress)
        curves: dict[str, list[float]] = {}
        seconds: dict[str, float] = {}
        try:
            if checkpoint is None:
                bar.stage("train clean")
                t = time.perf_counter()
                curves["clean"] = train_classifier(base, Xtr, Ytr, "clean", c, epochs=c.epochs, progress=bar)
                seconds["clean"] = time.perf_counter() - t
            models = {"clean": base}
            for mode in ("pgd", "jio"):
                m = build_classifier(c, n_classes)
                m.load_state_dict(base.state_dict())
                bar.stage(f"train {mode}")
                t = time.perf_counter()
                curves[mode] = train_classifier(m, Xtr[:n_adv], Ytr[:n_adv], mode, c, epochs=c.adv_epochs,
                                                progress=bar)
                seconds[mode] = time.perf_counter() - t
                models[mode] = m
            for name, m in models.items():   # saved before the evaluation: a failure there loses no training
                self.save_checkpoint(out / f"classifier_{name}.safetensors", m, MODEL_KIND,
                                     {**m.hparams, "num_classes": n_classes}, trained_with=name)
            table: dict[str, dict[str, float]] = {}
            for name, m in models.items():
                table[name] = {}
                for a in ("clean", "pgd", "jio"):
                    bar.stage(f"evaluate {name} model under {a}")
                    table[name][a] = robust_accuracy(m, Xte, Yte, a, c, progress=bar)
            bar.stage("JIO vs PGD")
            u, y = Xte[: c.batch], Yte[: c.batch]
            comparison = compare_attacks(base, u, y, c)
            iters = solve_iterations(base, Xte[:64])
            bar.update()
            d_pgd, d_jio = _attack(base, "pgd", u[:8], y[:8], c), _attack(base, "jio", u[:8], y[:8], c)
            preds = {}
            with torch.no_grad():
                base.eval()
                for k, d in (("clean", torch.zeros_like(u[:8])), ("pgd", d_pgd), ("jio", d_jio)):
                    preds[k] = base(u[:8] + d).argmax(1)
            _example_grid(u[:8], d_pgd, d_jio, out / "adversarial_examples.png", preds)
            bar.update()
        finally:
            bar.close()
        if curves:
            save_curves(out / "training.png", {f"{k} training loss": v for k, v in curves.items()}, xlabel="batch")
        metrics = {
            "task": self.name, "config": c, "data": info,
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "accuracy": table, "rows_trained_with": ["clean", "pgd", "jio"], "columns_attack": ["clean", "pgd", "jio"],
            "robust_gap_pgd_points": abs(table["pgd"]["pgd"] - table["jio"]["pgd"]),
            "comparison": comparison, "training": {"seconds": seconds, "loss_curves": curves},
            "forward_solve_iterations": iters, "total_seconds": time.perf_counter() - t0,
        }
        write_metrics(out, metrics)
        return metrics
