"""Gradient-based meta-learning with JIIO: the task context ``v`` is the optimized input of the augmented DEQ.

Model: :class:`~deq_tasks.models.meta_net.ContextDEQ`, a DEQ whose layer is FiLM-conditioned on a per-task
context ``v`` (``z_k = f(z_k, x_k, v)``, ``y_k = h(z_k)``). For one task with support set ``S`` the inner problem
is

    v* = argmin_v  L_S(v) = mean_{k in S} loss(h(z_k*), y_k) + lambda * mean(v^2)   s.t.  z_k* = f(z_k*, x_k, v)

(``loss`` = squared error for regression, cross entropy for classification) and the outer (meta) loss is the
query loss at ``v*``. Three inner loops, all from ``v = 0`` on the same trained model:

* **JIIO** (:func:`adapt_jiio`): one augmented fixed point over ``(z, mu, v)`` (paper, Omniglot: ``T = 100``,
  ``alpha = 0.04 -> 0.01`` at 62, Anderson ``m = 10``; here ``T = 60``, ``alpha = 4 -> 1`` at 40, matched to
  the summed loss of this model), ``v`` is the ``x`` of :mod:`deq_tasks.jiio`.
* **Adam-20** (:func:`adapt_adam`, the paper's baseline): 20 Adam steps on ``v`` (lr 0.1); every step re-solves
  the DEQ and its implicit backward.
* **MAML-style** (:func:`adapt_maml`): SGD steps on ``v`` and on the head's weights with ``torch.func``
  (``functional_call`` + ``grad``, vmapped over tasks) through a fixed number of unrolled layer applications.

Meta-training ``theta`` (:func:`meta_train`) treats ``v*`` as a constant: the parameter gradient is the query
loss gradient at fixed ``v*``. This is a **first-order approximation** for meta-learning (the outer loss is on
another set than the inner one, so the envelope argument that makes it exact for the generative and adversarial
objectives does not apply; it is the analogue of first-order MAML / CAVIA).

Data: few-shot sinusoid regression (10 support + 10 query points, ``x ~ U[-5, 5]``, phase ``~ U[0, pi]``,
amplitude 1 as in the paper's sinusoid setting) and a few-shot split of the MNIST-5k digits (meta-train on
classes 0-4, meta-test on the unseen classes 5-9, N-way K-shot with labels permuted per episode, 14x14 images).

Example:
    >>> import torch
    >>> from deq_tasks.meta import MetaConfig, sinusoid_tasks
    >>> xs, ys, xq, yq = sinusoid_tasks(4, torch.Generator().manual_seed(0))
    >>> tuple(xs.shape), tuple(yq.shape)
    ((4, 10, 1), (4, 10, 1))
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from deq_core import DeqConfigError, DeqInputError, registry

from ._base import Progress, TaskBase, check_int, check_number, help_field, save_curves, write_metrics
from .data import load_labelled, read_labelled
from .jiio import JIIOConfig, JIIOProblem, jiio_solve
from .models.meta_net import ContextDEQ

__all__ = [
    "META_JIIO", "FewShotImages", "MetaConfig", "MetaLearningTask", "MnistFewShot", "adapt_adam", "adapt_jiio",
    "adapt_maml", "build_meta_model", "evaluate_adaptation", "inner_objective", "maml_inner_grad", "meta_train",
    "query_metrics", "sinusoid_tasks",
]

MODEL_KIND = "context-deq"

Sampler = Callable[[int, torch.Generator], tuple[Tensor, Tensor, Tensor, Tensor]]

META_JIIO = JIIOConfig(budget=60, alpha=4.0, alpha_final=1.0, switch_at=40, solver="anderson",
                       solver_options={"m": 10})
"""JIIO adaptation of the context (the paper's Omniglot memory m = 10; alpha matched to the summed support loss)."""

DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "sinusoid": {"weight_norm": 0.99, "gain": 1.75, "context_dim": 16, "meta_steps": 200},
    "images": {"weight_norm": 0.97, "gain": 1.0, "context_dim": 64, "meta_steps": 1000},
}
"""Per kind of dataset (sinusoid regression; few-shot image classification: ``mnist`` or a labelled ``.npz``):
the :class:`MetaConfig` fields left ``None`` (model shape and meta-training length)."""


def _kind(dataset: str) -> str:
    return "sinusoid" if dataset == "sinusoid" else "images"


@dataclass(frozen=True)
class MetaConfig:
    """Options of ``deq tasks run meta-learning``.

    ``None`` model fields take per-dataset defaults (``DATASET_DEFAULTS``; measured after 200 meta-steps: sinusoid
    17-21 own-solve iterations at gain 1.75, 12 at gain 1; MNIST 19 at gain 1, 5-way 1-shot on unseen digits 28 %
    query accuracy with 200 steps and a 16-d context, 40 % with 1000 and 64).
    """

    datasets: tuple[str, ...] = help_field(("sinusoid", "mnist"), "benchmarks: 'sinusoid', 'mnist', or a labelled "
                                           ".npz (x, y: few-shot classes; first half meta-train, rest meta-test)")
    k_support: int = help_field(10, "sinusoid: support points per task")
    k_query: int = help_field(10, "sinusoid: query points per task")
    amplitude: float = help_field(1.0, "sinusoid amplitude")
    n_way: int = help_field(5, "few-shot images: classes per episode")
    k_shot: int = help_field(1, "few-shot images: support images per class")
    q_per_class: int = help_field(5, "few-shot images: query images per class")
    hidden: int = help_field(64, "width of the context DEQ")
    context_dim: int | None = help_field(None, "task-context size (none: 16 sinusoid, 64 images)")
    solver: str = help_field("anderson", "the model's own equilibrium solver (registered name)")
    max_steps: int = help_field(40, "the model's forward solver iterations")
    rtol: float = help_field(1e-4, "relative tolerance of the model's solves")
    weight_norm: float | None = help_field(None, "spectral cap on the layer's W (none: 0.99 sinusoid, 0.97 images)")
    gain: float | None = help_field(None, "fixed factor on W z (none: 1.75 sinusoid, 1 images)")
    context_reg: float = help_field(0.01, "lambda of lambda * mean(v^2) in the inner objective")
    jiio: JIIOConfig = help_field(help="JIIO adaptation of the context", factory=lambda: META_JIIO)
    adam_steps: int = help_field(20, "baseline: Adam steps on the context (the paper's 20)")
    adam_lr: float = help_field(0.1, "baseline: Adam learning rate")
    maml_steps: int = help_field(5, "MAML-style baseline: SGD steps")
    maml_lr: float = help_field(0.005, "MAML-style baseline: step size")
    maml_unroll: int = help_field(30, "MAML-style baseline: unrolled layer applications")
    meta_steps: int | None = help_field(None, "meta-training steps (none: 200 sinusoid, 1000 images)")
    tasks_per_batch: int = help_field(16, "tasks per meta-training step")
    lr: float = help_field(2e-3, "meta-training Adam learning rate (cosine decay)")
    eval_tasks: int = help_field(64, "tasks in the evaluation batch")
    seed: int = help_field(0, "random seed")

    def __post_init__(self) -> None:
        ds = (self.datasets,) if isinstance(self.datasets, str) else tuple(self.datasets)
        object.__setattr__(self, "datasets", ds)
        bad = [d for d in ds if d not in ("sinusoid", "mnist") and not str(d).lower().endswith(".npz")]
        if bad or not ds:
            raise DeqConfigError(f"datasets must be a non-empty list of 'sinusoid', 'mnist' or labelled .npz files, "
                                 f"got {ds!r}")
        for name in ("adam_lr", "maml_lr", "lr", "amplitude", "rtol"):
            check_number(self, name, getattr(self, name))
        for name in ("weight_norm", "gain"):
            check_number(self, name, getattr(self, name), optional=True)
        check_number(self, "context_reg", self.context_reg, allow_low=True)
        for name in ("k_support", "k_query", "n_way", "k_shot", "q_per_class", "hidden", "max_steps", "adam_steps",
                     "maml_steps", "maml_unroll", "tasks_per_batch", "eval_tasks"):
            check_int(self, name, getattr(self, name), 1)
        for name in ("context_dim", "meta_steps"):
            check_int(self, name, getattr(self, name), 1, optional=True)
        if not isinstance(self.jiio, JIIOConfig):
            raise DeqConfigError(f"MetaConfig.jiio must be a JIIOConfig, got {type(self.jiio).__name__}")
        self.jiio.make_solver()   # an unknown solver name or option fails here, before any data is read
        missing = [d for d in ds if d not in ("sinusoid", "mnist") and not Path(d).is_file()]
        if missing:
            raise DeqInputError(f"datasets: no such labelled .npz file {missing[0]!r}")
        if "mnist" in ds and self.n_way > 5:
            raise DeqConfigError(f"n_way must be <= 5 (5 meta-train and 5 meta-test digit classes), got {self.n_way}")
        registry.get_solver(self.solver)

    def for_dataset(self, dataset: str) -> MetaConfig:
        """This configuration with every ``None`` (dataset default) filled in from ``DATASET_DEFAULTS``."""
        filled = {k: v for k, v in DATASET_DEFAULTS[_kind(dataset)].items() if getattr(self, k) is None}
        return dataclasses.replace(self, **filled)


# --------------------------------------------------------------------------------------------- data
def sinusoid_tasks(n_tasks: int, gen: torch.Generator, k_support: int = 10, k_query: int = 10,
                   amplitude: float = 1.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``n_tasks`` sinusoid tasks ``y = A sin(x - phase)``, ``x ~ U[-5, 5]``, ``phase ~ U[0, pi]``.

    Returns:
        ``(x_support, y_support, x_query, y_query)`` of shapes ``(T, K, 1)``.
    """
    phase = torch.rand(n_tasks, 1, 1, generator=gen) * math.pi
    x = torch.rand(n_tasks, k_support + k_query, 1, generator=gen) * 10 - 5
    y = amplitude * torch.sin(x - phase)
    return x[:, :k_support], y[:, :k_support], x[:, k_support:], y[:, k_support:]


class FewShotImages:
    """N-way K-shot episodes from labelled images at 14x14 (196 features in ``[0, 1]``).

    The classes are split in two: meta-train episodes use the first half (in label order), meta-test episodes the
    unseen rest (MNIST: digits 0-4 / 5-9). The N classes of an episode get labels ``0..N-1`` in random order, so
    the label of a class must be inferred from the support set.

    Arguments:
        images: ``(N, 1, H, W)`` in ``[0, 1]`` (pooled / resized to 14x14); labels: ``(N,)`` int64.

    Raises:
        DeqInputError: fewer than ``n_way`` classes on either side, or a class with fewer than ``k_shot +
            q_per_class`` images.

    Example:
        >>> import torch
        >>> fs = MnistFewShot()
        >>> xs, ys, xq, yq = fs.episodes(2, torch.Generator().manual_seed(0), split="test")
        >>> tuple(xs.shape), tuple(yq.shape)
        ((2, 5, 196), (2, 25))
    """

    def __init__(self, images: Tensor, labels: Tensor, n_way: int = 5, k_shot: int = 1, q_per_class: int = 5,
                 name: str = "images") -> None:
        X = images if images.shape[-1] == 14 else F.interpolate(images, size=(14, 14), mode="area")
        X = X.flatten(1)
        self.n_way, self.k_shot, self.q = n_way, k_shot, q_per_class
        classes = sorted(int(c) for c in labels.unique())
        self.pools = {c: X[labels == c] for c in classes}
        half = (len(classes) + 1) // 2
        self.classes = {"train": classes[:half], "test": classes[half:]}
        for split, cs in self.classes.items():
            if len(cs) < n_way:
                raise DeqInputError(f"{name}: {len(classes)} classes give {len(cs)} meta-{split} classes, fewer than "
                                    f"n_way={n_way}; lower --n-way")
        need = k_shot + q_per_class
        small = [c for c in classes if len(self.pools[c]) < need]
        if small:
            raise DeqInputError(f"{name}: classes {small[:10]} have fewer than k_shot + q_per_class = {need} images")

    def episodes(self, n_tasks: int, gen: torch.Generator,
                 split: str = "train") -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if split not in self.classes:
            raise DeqConfigError(f"split must be 'train' or 'test', got {split!r}")
        pool = self.classes[split]
        xs, ys, xq, yq = [], [], [], []
        for _ in range(n_tasks):
            chosen = [pool[i] for i in torch.randperm(len(pool), generator=gen)[: self.n_way].tolist()]
            sx, sy, qx, qy = [], [], [], []
            for label, c in enumerate(chosen):
                imgs = self.pools[c]
                idx = torch.randperm(len(imgs), generator=gen)[: self.k_shot + self.q]
                sx.append(imgs[idx[: self.k_shot]])
                qx.append(imgs[idx[self.k_shot:]])
                sy += [label] * self.k_shot
                qy += [label] * self.q
            xs.append(torch.cat(sx))
            xq.append(torch.cat(qx))
            ys.append(torch.tensor(sy))
            yq.append(torch.tensor(qy))
        return torch.stack(xs), torch.stack(ys), torch.stack(xq), torch.stack(yq)


def MnistFewShot(n_way: int = 5, k_shot: int = 1, q_per_class: int = 5) -> FewShotImages:  # noqa: N802
    """:class:`FewShotImages` on all of MNIST-5k (meta-train digits 0-4, meta-test 5-9)."""
    Xtr, Ytr, Xte, Yte, _ = load_labelled("mnist", size=28, n_train=4000, n_test=1000, seed=0)
    return FewShotImages(F.avg_pool2d(torch.cat([Xtr, Xte]), 2), torch.cat([Ytr, Yte]), n_way, k_shot, q_per_class,
                         "mnist")


# --------------------------------------------------------------------------------------------- losses
def _per_task_loss(pred: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """Per-point loss of each task reduced over its points (``mean`` or ``sum``), ``(T,)``: squared error (float
    targets) or cross entropy (long labels)."""
    if y.dtype == torch.long:
        T, K, C = pred.shape
        per = F.cross_entropy(pred.reshape(T * K, C), y.reshape(T * K), reduction="none").reshape(T, K)
    else:
        if pred.shape != y.shape:
            raise DeqInputError(f"targets must match predictions {tuple(pred.shape)}, got {tuple(y.shape)}")
        per = (pred - y).pow(2).flatten(1)
    return per.sum(1) if reduction == "sum" else per.mean(1)


def inner_objective(pred: Tensor, y: Tensor, v: Tensor, context_reg: float) -> Tensor:
    """Per-task inner objective ``sum_k loss(pred_k, y_k) + context_reg * mean(v^2)``, shape ``(T,)``.

    The **sum** over support points is the declared reduction that the JIIO step size ``alpha`` is matched to
    (papers gotcha 1); Adam is invariant to it, the MAML step size is not."""
    return _per_task_loss(pred, y, "sum") + context_reg * v.pow(2).mean(1)


def query_metrics(pred: Tensor, y: Tensor) -> dict[str, float]:
    """Query loss (MSE or CE) and, for labels, accuracy (%)."""
    out = {"query_loss": float(_per_task_loss(pred, y).mean())}
    if y.dtype == torch.long:
        out["query_accuracy"] = 100.0 * float((pred.argmax(-1) == y).float().mean())
    return out


def _score(model: ContextDEQ, xs: Tensor, ys: Tensor, v: Tensor, cfg: MetaConfig) -> Tensor:
    """Support objective on a re-solved equilibrium at ``v`` (no grad), ``(T,)``."""
    with torch.no_grad():
        return inner_objective(model(xs, v), ys, v, cfg.context_reg)


# --------------------------------------------------------------------------------------------- inner loops
def adapt_jiio(model: ContextDEQ, xs: Tensor, ys: Tensor, cfg: MetaConfig, *,
               budget: int | None = None) -> tuple[Tensor, Any]:
    """JIIO adaptation: ``v*`` (T, d) from one augmented solve over ``(z, mu, v)`` from zero (``cfg.jiio``; at
    ``budget`` iterations if given, the drop iteration capped below it).

    Returns:
        ``(v*, JIIOResult)`` (``v*`` detached).
    """
    v0 = xs.new_zeros(xs.shape[0], model.context_dim)
    model.check(xs, v0)
    config = cfg.jiio if budget is None else cfg.jiio.with_budget(budget)
    if config.switch_at is not None and config.switch_at >= config.budget:
        config = config.replace(switch_at=max(config.budget - 1, 0))
    with torch.no_grad():
        inj = model.inject(xs)

    def f(z: Tensor, v: Tensor) -> Tensor:
        return model.f(z, inj, v)

    def objective(z: Tensor, v: Tensor) -> Tensor:
        return inner_objective(model.predict(z), ys, v, cfg.context_reg)

    result = jiio_solve(JIIOProblem(f=f, objective=objective), model.z0(xs), v0, config)
    return result.x.detach(), result


def adapt_adam(model: ContextDEQ, xs: Tensor, ys: Tensor, cfg: MetaConfig, *, steps: int | None = None,
               lr: float | None = None) -> Tensor:
    """The paper's inner loop: Adam on ``v`` from zero; every step a full DEQ solve + implicit backward."""
    steps = cfg.adam_steps if steps is None else steps
    lr = cfg.adam_lr if lr is None else lr
    if not lr > 0:
        raise DeqConfigError(f"lr must be > 0, got {lr!r}")
    v = xs.new_zeros(xs.shape[0], model.context_dim, requires_grad=True)
    opt = torch.optim.Adam([v], lr=lr)
    for _ in range(steps):
        with torch.enable_grad():
            loss = inner_objective(model(xs, v), ys, v, cfg.context_reg).sum()
            (g,) = torch.autograd.grad(loss, v)
        v.grad = g
        opt.step()
    return v.detach()


_FAST = ("head.weight", "head.bias")


def _maml_loss(model: ContextDEQ, params: dict[str, Tensor], fast: dict[str, Tensor], v: Tensor, x: Tensor,
               y: Tensor, context_reg: float, unroll: int) -> Tensor:
    from torch.func import functional_call

    pred = functional_call(model, {**params, **fast}, (x.unsqueeze(0), v.unsqueeze(0)), {"unroll": unroll})
    return inner_objective(pred, y.unsqueeze(0), v.unsqueeze(0), context_reg).sum()


def maml_inner_grad(model: ContextDEQ, fast: dict[str, Tensor], v: Tensor, x: Tensor, y: Tensor, *,
                    context_reg: float = 0.0, unroll: int = 30) -> tuple[dict[str, Tensor], Tensor]:
    """``torch.func.grad`` of one task's inner objective w.r.t. the fast weights (head) and the context ``v``.

    Arguments:
        fast: ``{"head.weight": (out, H), "head.bias": (out,)}``; v: (d,); x: (K, in); y: (K, out) or (K,) labels.

    Returns:
        ``(grads of fast, grad of v)``.
    """
    from torch.func import grad

    params = {k: p.detach() for k, p in model.named_parameters()}

    def loss(fast_: dict[str, Tensor], v_: Tensor) -> Tensor:
        return _maml_loss(model, params, fast_, v_, x, y, context_reg, unroll)

    return grad(loss, argnums=(0, 1))(fast, v)


def adapt_maml(model: ContextDEQ, xs: Tensor, ys: Tensor, cfg: MetaConfig, *, steps: int | None = None,
               lr: float | None = None) -> tuple[dict[str, Tensor], Tensor]:
    """MAML-style inner loop (torch.func, vmapped over tasks): ``steps`` SGD steps of size ``lr`` on the head's
    weights and on ``v``, through ``cfg.maml_unroll`` unrolled layer applications.

    Returns:
        ``(fast weights with a leading task dim, v (T, d))``.
    """
    from torch.func import grad, vmap

    steps = cfg.maml_steps if steps is None else steps
    lr = cfg.maml_lr if lr is None else lr
    if not lr > 0:
        raise DeqConfigError(f"lr must be > 0, got {lr!r}")
    params = {k: p.detach() for k, p in model.named_parameters()}
    fast0 = {k: params[k] for k in _FAST}

    def one_task(x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        def loss(fast_: dict[str, Tensor], v_: Tensor) -> Tensor:
            return _maml_loss(model, params, fast_, v_, x, y, cfg.context_reg, cfg.maml_unroll)

        fast, v = dict(fast0), x.new_zeros(model.context_dim)
        for _ in range(steps):
            gf, gv = grad(loss, argnums=(0, 1))(fast, v)
            fast = {k: fast[k] - lr * gf[k] for k in fast}
            v = v - lr * gv
        return fast, v

    was_training = model.training
    model.eval()   # frozen weights: no in-place power-iteration update of a spectral norm inside torch.func
    try:
        return vmap(one_task)(xs, ys)
    finally:
        model.train(was_training)


def _predict_with_fast(model: ContextDEQ, x: Tensor, v: Tensor, fast: dict[str, Tensor]) -> Tensor:
    """Predictions on a re-solved equilibrium with per-task head weights (T, out, H), (T, out)."""
    with torch.no_grad():
        z = model.equilibrium(x, v).reshape(x.shape[0], x.shape[1], model.hidden)
        return torch.einsum("tkh,toh->tko", z, fast["head.weight"]) + fast["head.bias"].unsqueeze(1)


# --------------------------------------------------------------------------------------------- training
def build_meta_model(cfg: MetaConfig, dataset: str) -> ContextDEQ:
    cfg = cfg.for_dataset(dataset)
    in_dim, out_dim = (1, 1) if dataset == "sinusoid" else (196, cfg.n_way)
    return ContextDEQ(in_dim, out_dim, hidden=cfg.hidden, context_dim=cfg.context_dim,
                      solver=registry.get_solver(cfg.solver), max_steps=cfg.max_steps, rtol=cfg.rtol,
                      weight_norm=cfg.weight_norm, gain=cfg.gain)


def _few_shot(cfg: MetaConfig, dataset: str) -> FewShotImages:
    if dataset == "mnist":
        return MnistFewShot(cfg.n_way, cfg.k_shot, cfg.q_per_class)
    x, y, _ = read_labelled(dataset, size=28)
    return FewShotImages(x, y, cfg.n_way, cfg.k_shot, cfg.q_per_class, dataset)


def _sampler(cfg: MetaConfig, dataset: str, split: str, few: FewShotImages | None = None) -> Sampler:
    if dataset == "sinusoid":
        return lambda n, g: sinusoid_tasks(n, g, cfg.k_support, cfg.k_query, cfg.amplitude)
    fs = few if few is not None else _few_shot(cfg, dataset)
    return lambda n, g: fs.episodes(n, g, split)


def meta_train(model: ContextDEQ, sample: Sampler, cfg: MetaConfig, *,
               progress: Progress | None = None) -> list[float]:
    """Meta-train ``theta``: JIIO adapts ``v*`` on the support sets, ``v*`` is then held constant (first-order
    approximation) and the query loss at the re-solved equilibrium ``z_q* = f(z_q*, x_q, v*)`` is backpropagated
    implicitly into ``theta``. Returns the per-step query losses."""
    if cfg.meta_steps is None:
        raise DeqConfigError("meta_train needs cfg.meta_steps; use cfg.for_dataset(name) to fill the dataset default")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.meta_steps, eta_min=cfg.lr * 1e-2)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    losses: list[float] = []
    bar = progress if progress is not None else Progress(cfg.meta_steps, "meta-train", False)
    for _ in range(cfg.meta_steps):
        xs, ys, xq, yq = sample(cfg.tasks_per_batch, gen)
        v, _ = adapt_jiio(model, xs, ys, cfg)
        loss = _per_task_loss(model(xq, v), yq).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(query=f"{losses[-1]:.3f}")
    return losses


def evaluate_adaptation(model: ContextDEQ, batch: tuple[Tensor, Tensor, Tensor, Tensor],
                        cfg: MetaConfig) -> dict[str, Any]:
    """Adapt with no adaptation / JIIO / Adam-20 / MAML on the same tasks; support objective, query metrics, time."""
    xs, ys, xq, yq = batch
    out: dict[str, Any] = {}
    v0 = xs.new_zeros(xs.shape[0], model.context_dim)
    with torch.no_grad():
        out["none"] = {"support_objective": float(_score(model, xs, ys, v0, cfg).mean()),
                       **query_metrics(model(xq, v0), yq), "seconds": 0.0}
    t = time.perf_counter()
    v, res = adapt_jiio(model, xs, ys, cfg)
    dt = time.perf_counter() - t
    with torch.no_grad():
        out["jiio"] = {"support_objective": float(_score(model, xs, ys, v, cfg).mean()),
                       **query_metrics(model(xq, v), yq), "seconds": dt, "budget": cfg.jiio.budget,
                       "kkt": {k: float(t_.mean()) for k, t_ in res.kkt.items()}}
    t = time.perf_counter()
    v = adapt_adam(model, xs, ys, cfg)
    dt = time.perf_counter() - t
    with torch.no_grad():
        out["adam"] = {"support_objective": float(_score(model, xs, ys, v, cfg).mean()),
                       **query_metrics(model(xq, v), yq), "seconds": dt, "steps": cfg.adam_steps}
    t = time.perf_counter()
    fast, v = adapt_maml(model, xs, ys, cfg)
    dt = time.perf_counter() - t
    sup = inner_objective(_predict_with_fast(model, xs, v, fast), ys, v, cfg.context_reg)
    out["maml"] = {"support_objective": float(sup.mean()), **query_metrics(_predict_with_fast(model, xq, v, fast), yq),
                   "seconds": dt, "steps": cfg.maml_steps, "unroll": cfg.maml_unroll}
    j, a = out["jiio"], out["adam"]
    out["speedup"] = {"adam_time_over_jiio_time": a["seconds"] / j["seconds"],
                      "jiio_reaches_adam_support_objective": j["support_objective"] <= a["support_objective"]}
    return out


def solve_iterations(model: ContextDEQ, x: Tensor, v: Tensor, rtol: float = 1e-4,
                     max_steps: int = 200) -> dict[str, float]:
    """Iterations of the model's own forward solve at ``(x, v)`` (mean / max over tasks)."""
    saved = (model.deq.rtol, model.deq.max_steps, model.deq.eval_max_steps)
    model.deq.rtol, model.deq.max_steps, model.deq.eval_max_steps = rtol, max_steps, max_steps
    try:
        with torch.no_grad():
            model(x, v)
        st = model.last_info.stats
        return {"mean": float(st.steps.float().mean()), "max": float(st.steps.max()),
                "converged": float(st.converged.float().mean()), "rtol": rtol, "solver": model.solver.name}
    finally:
        model.deq.rtol, model.deq.max_steps, model.deq.eval_max_steps = saved


def _plot_sinusoids(model: ContextDEQ, batch: tuple[Tensor, Tensor, Tensor, Tensor], cfg: MetaConfig,
                    path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys, _, _ = (t[:4] for t in batch)
    grid = torch.linspace(-5, 5, 200).view(1, -1, 1).expand(len(xs), -1, -1).contiguous()
    v_j, _ = adapt_jiio(model, xs, ys, cfg)
    v_a = adapt_adam(model, xs, ys, cfg)
    with torch.no_grad():
        pj, pa = model(grid, v_j), model(grid, v_a)
        p0 = model(grid, torch.zeros_like(v_j))
    fig, axes = plt.subplots(1, len(xs), figsize=(3.2 * len(xs), 2.8), sharey=True, squeeze=False)
    axes = axes[0]
    for i, ax in enumerate(axes):
        gx = grid[i, :, 0].numpy()
        ax.scatter(xs[i, :, 0].numpy(), ys[i, :, 0].numpy(), c="k", s=14, label="support", zorder=3)
        ax.plot(gx, p0[i, :, 0].numpy(), c="0.6", ls=":", label="v = 0")
        ax.plot(gx, pa[i, :, 0].numpy(), c="tab:orange", label=f"Adam-{cfg.adam_steps}")
        ax.plot(gx, pj[i, :, 0].numpy(), c="tab:blue", ls="--", label=f"JIIO-{cfg.jiio.budget}")
        ax.set_xlabel("x")
        ax.set_title(f"task {i}", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle("few-shot sinusoid fits after adaptation of the context v (10 support points)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class MetaLearningTask(TaskBase):
    """``deq tasks run meta-learning``: meta-train a FiLM-conditioned DEQ with JIIO adaptation of the task context on
    each dataset (few-shot sinusoids, 5-way MNIST, or the user's labelled ``.npz``) and compare JIIO, Adam-20 and
    MAML-style inner loops on the same tasks, everything scored at re-solved equilibria.

    Writes ``metrics.json``, ``sinusoid_fits.png``, ``training.png`` (meta-training curves) and
    ``meta_{dataset}.safetensors``. ``--checkpoint`` (a ``meta_*.safetensors``) evaluates that dataset's model.

    Example:
        >>> MetaLearningTask(jiio_budget=30, datasets=("sinusoid",)).config.jiio.budget
        30
    """

    name = "meta-learning"
    Config = MetaConfig

    def run(self, out: str | Path, *, checkpoint: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
        base_cfg = self.config
        out, _ = self.prepare(out)
        datasets = base_cfg.datasets
        state = meta = None
        if checkpoint is not None:
            state, meta = self.read_checkpoint(checkpoint, [MODEL_KIND])
            datasets = (meta["dataset"],)
        cfgs = {ds: base_cfg.for_dataset(ds) for ds in datasets}
        total = sum((0 if state is not None else int(c.meta_steps or 0)) + 3 for c in cfgs.values())
        bar = self.progress(total, progress)
        metrics: dict[str, Any] = {"task": self.name, "config": base_cfg, "results": {}, "dataset_config": {},
                                   "checkpoint": None if checkpoint is None else str(checkpoint)}
        curves: dict[str, list[float]] = {}
        t0 = time.perf_counter()
        try:
            for ds, cfg in cfgs.items():
                metrics["dataset_config"][ds] = {k: getattr(cfg, k) for k in DATASET_DEFAULTS[_kind(ds)]}
                model = build_meta_model(cfg, ds)
                few = None if ds == "sinusoid" else _few_shot(cfg, ds)
                t = time.perf_counter()
                if state is not None:
                    self.load_state(model, state, checkpoint)  # type: ignore[arg-type]
                else:
                    bar.stage(f"meta-train {Path(ds).name}")
                    curves[ds] = meta_train(model, _sampler(cfg, ds, "train", few), cfg, progress=bar)
                train_s = time.perf_counter() - t
                bar.stage(f"evaluate {Path(ds).name}")
                batch = _sampler(cfg, ds, "test", few)(cfg.eval_tasks, torch.Generator().manual_seed(cfg.seed + 1000))
                res = evaluate_adaptation(model, batch, cfg)
                bar.update()
                v_j, _ = adapt_jiio(model, batch[0], batch[1], cfg)
                res["forward_solve_iterations"] = solve_iterations(model, batch[2], v_j)
                res["meta_train_seconds"] = train_s
                if ds in curves:
                    res["final_train_query_loss"] = float(sum(curves[ds][-10:]) / len(curves[ds][-10:]))
                metrics["results"][ds] = res
                bar.update()
                self.save_checkpoint(out / f"meta_{Path(ds).stem}.safetensors", model, MODEL_KIND, model.hparams,
                                     dataset=ds)
                if ds == "sinusoid":
                    _plot_sinusoids(model, batch, cfg, out / "sinusoid_fits.png")
                bar.update()
        finally:
            bar.close()
        if curves:
            save_curves(out / "training.png", {f"{Path(k).name}: query loss": v for k, v in curves.items()},
                        xlabel="meta-step")
        metrics["training"] = {"query_loss_curves": curves}
        metrics["total_seconds"] = time.perf_counter() - t0
        write_metrics(out, metrics)
        return metrics
