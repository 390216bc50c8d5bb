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
import json
import math
import time
from collections.abc import Callable
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
from .models.meta_net import ContextDEQ

__all__ = [
    "MetaConfig", "MetaLearningTask", "sinusoid_tasks", "MnistFewShot", "inner_objective", "query_metrics",
    "adapt_jiio", "adapt_adam",
    "adapt_maml", "maml_inner_grad", "meta_train", "build_meta_model", "evaluate_adaptation", "run",
]

Sampler = Callable[[int, torch.Generator], tuple[Tensor, Tensor, Tensor, Tensor]]


DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "sinusoid": {"weight_norm": 0.99, "gain": 1.75, "context_dim": 16, "meta_steps": 200},
    "mnist": {"weight_norm": 0.97, "gain": 1.0, "context_dim": 64, "meta_steps": 1000},
}
"""Per dataset: the :class:`MetaConfig` fields left ``None`` (model shape and meta-training length)."""
_DATASET_FIELDS = frozenset(DATASET_DEFAULTS["sinusoid"])   # the fields that may be None (dataset default)


@dataclass
class MetaConfig:
    """Settings of the ``meta-learning`` task.

    Attributes:
        datasets: which benchmarks to run, a subset of ``("sinusoid", "mnist")``.
        k_support, k_query, amplitude: sinusoid tasks (10 + 10 points, amplitude 1).
        n_way, k_shot, q_per_class: MNIST few-shot episodes (5-way 1-shot, 5 queries per class).
        hidden, context_dim: model width and task-context size (``None``: the dataset's default in
            ``DATASET_DEFAULTS``: 16 for sinusoids, 64 for MNIST).
        solver, max_steps, rtol: the model's own equilibrium solve.
        weight_norm, gain: spectral-norm cap on the layer's ``W`` and the fixed factor on ``W z``
            (:class:`~deq_tasks.models.meta_net.ContextDEQ`); ``None`` = the per-dataset defaults
            ``DATASET_DEFAULTS``: sinusoid 0.99 and 1.75, MNIST 0.97 and 1. Measured after 200 meta-steps (own
            Anderson solve at rtol 1e-4, mean over tasks): sinusoid 17-21 iterations at gain 1.75, 12 at gain 1
            (where a speed-up means little); the price is accuracy: JIIO query MSE 0.11 against 0.054 at gain 1,
            and MAML's unrolled loop diverges. MNIST: 19 iterations at gain 1; at gain 1.5, 14 % of its solves
            did not converge in 200.
        context_reg: ``lambda`` of ``lambda * mean(v^2)`` in the inner objective.
        jiio_budget, jiio_alpha, jiio_alpha_final, jiio_switch_at, jiio_m: JIIO adaptation.
        adam_steps, adam_lr: the paper's inner-loop baseline (20 steps, lr 0.1).
        maml_steps, maml_lr, maml_unroll: MAML-style baseline (SGD steps, step size, unrolled layer applications).
        meta_steps, tasks_per_batch, lr: meta-training (JIIO inner loop, Adam on theta with cosine decay);
            ``meta_steps=None``: the dataset's default (sinusoid 200, MNIST 1000: 5-way 1-shot on unseen digits
            reached 28 % query accuracy with 200 steps and a 16-d context, 40 % with 1000 and 64).
        eval_tasks: tasks in the evaluation batch.
        seed: random seed.
    """

    datasets: tuple[str, ...] = ("sinusoid", "mnist")
    k_support: int = 10
    k_query: int = 10
    amplitude: float = 1.0
    n_way: int = 5
    k_shot: int = 1
    q_per_class: int = 5
    hidden: int = 64
    context_dim: int | None = None
    solver: str = "anderson"
    max_steps: int = 40
    rtol: float = 1e-4
    weight_norm: float | None = None
    gain: float | None = None
    context_reg: float = 0.01
    jiio_budget: int = 60
    jiio_alpha: float = 4.0
    jiio_alpha_final: float = 1.0
    jiio_switch_at: int = 40
    jiio_m: int = 10
    adam_steps: int = 20
    adam_lr: float = 0.1
    maml_steps: int = 5
    maml_lr: float = 0.005
    maml_unroll: int = 30
    meta_steps: int | None = None
    tasks_per_batch: int = 16
    lr: float = 2e-3
    eval_tasks: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        self.datasets = tuple(self.datasets)
        bad = [d for d in self.datasets if d not in ("sinusoid", "mnist")]
        if bad or not self.datasets:
            raise DeqConfigError(f"datasets must be a non-empty subset of ('sinusoid', 'mnist'), got {self.datasets!r}")
        for name in ("jiio_alpha", "jiio_alpha_final", "adam_lr", "maml_lr", "lr", "amplitude"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and math.isfinite(v)):
                raise DeqConfigError(f"MetaConfig.{name} must be a finite number > 0, got {v!r}")
        for name in ("weight_norm", "gain"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0)):
                raise DeqConfigError(f"MetaConfig.{name} must be None (dataset default) or a number > 0, got {v!r}")
        if not (isinstance(self.context_reg, (int, float)) and self.context_reg >= 0):
            raise DeqConfigError(f"MetaConfig.context_reg must be >= 0, got {self.context_reg!r}")
        for name in ("k_support", "k_query", "n_way", "k_shot", "q_per_class", "hidden", "context_dim", "max_steps",
                     "jiio_budget", "adam_steps", "maml_steps", "maml_unroll", "tasks_per_batch", "eval_tasks",
                     "meta_steps"):
            v = getattr(self, name)
            if v is None and name in _DATASET_FIELDS:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DeqConfigError(f"MetaConfig.{name} must be an int >= 1, got {v!r}")
        if self.n_way > 5:
            raise DeqConfigError(f"n_way must be <= 5 (5 meta-train and 5 meta-test digit classes), got {self.n_way}")

    def for_dataset(self, dataset: str) -> MetaConfig:
        """This configuration with every ``None`` (dataset default) filled in from ``DATASET_DEFAULTS``."""
        if dataset not in DATASET_DEFAULTS:
            raise DeqConfigError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASET_DEFAULTS)}")
        filled = {k: v for k, v in DATASET_DEFAULTS[dataset].items() if getattr(self, k) is None}
        return dataclasses.replace(self, **filled)

    @classmethod
    def quick(cls, **overrides: Any) -> MetaConfig:
        """A seconds-scale configuration for tests and ``--quick`` runs."""
        base = dict(meta_steps=20, tasks_per_batch=8, eval_tasks=16, jiio_budget=30, jiio_switch_at=20,
                    hidden=32)
        base.update(overrides)
        return cls(**base)


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


class MnistFewShot:
    """N-way K-shot episodes from MNIST-5k at 14x14 (196 features in ``[0, 1]``).

    Meta-train episodes use digits 0-4, meta-test episodes the unseen digits 5-9; the N classes of an episode
    get labels ``0..N-1`` in random order, so the label of a class must be inferred from the support set.

    Example:
        >>> import torch
        >>> fs = MnistFewShot()
        >>> xs, ys, xq, yq = fs.episodes(2, torch.Generator().manual_seed(0), split="test")
        >>> tuple(xs.shape), tuple(yq.shape)
        ((2, 5, 196), (2, 25))
    """

    def __init__(self, n_way: int = 5, k_shot: int = 1, q_per_class: int = 5) -> None:
        Xtr, Ytr, Xte, Yte = load_mnist(4000, 1000, seed=0)
        X, Y = torch.cat([Xtr, Xte]), torch.cat([Ytr, Yte])
        X = F.avg_pool2d(X, 2).flatten(1)
        self.n_way, self.k_shot, self.q = n_way, k_shot, q_per_class
        self.pools = {c: X[Y == c] for c in range(10)}
        self.classes = {"train": list(range(5)), "test": list(range(5, 10))}

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
    """JIIO adaptation: ``v*`` (T, d) from one augmented solve over ``(z, mu, v)`` from zero.

    Returns:
        ``(v*, JIIOResult)`` (``v*`` detached).
    """
    from .jiio import JIIOConfig, JIIOProblem, jiio_solve

    v0 = xs.new_zeros(xs.shape[0], model.context_dim)
    model.check(xs, v0)
    T = cfg.jiio_budget if budget is None else budget
    with torch.no_grad():
        inj = model.inject(xs)

    def f(z: Tensor, v: Tensor) -> Tensor:
        return model.f(z, inj, v)

    def objective(z: Tensor, v: Tensor) -> Tensor:
        return inner_objective(model.predict(z), ys, v, cfg.context_reg)

    config = JIIOConfig(budget=T, alpha=cfg.jiio_alpha, alpha_final=cfg.jiio_alpha_final,
                        switch_at=min(cfg.jiio_switch_at, max(T - 1, 0)), solver=make_solver("anderson", m=cfg.jiio_m),
                        best_iterate=True)
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
                      solver=make_solver(cfg.solver), max_steps=cfg.max_steps, rtol=cfg.rtol,
                      weight_norm=cfg.weight_norm, gain=cfg.gain)


def _sampler(cfg: MetaConfig, dataset: str, split: str) -> Sampler:
    if dataset == "sinusoid":
        return lambda n, g: sinusoid_tasks(n, g, cfg.k_support, cfg.k_query, cfg.amplitude)
    fs = MnistFewShot(cfg.n_way, cfg.k_shot, cfg.q_per_class)
    return lambda n, g: fs.episodes(n, g, split)


def meta_train(model: ContextDEQ, sample: Sampler, cfg: MetaConfig, *, progress: bool = False) -> list[float]:
    """Meta-train ``theta``: JIIO adapts ``v*`` on the support sets, ``v*`` is then held constant (first-order
    approximation) and the query loss at the re-solved equilibrium ``z_q* = f(z_q*, x_q, v*)`` is backpropagated
    implicitly into ``theta``. Returns the per-step query losses."""
    if cfg.meta_steps is None:
        raise DeqConfigError("meta_train needs cfg.meta_steps; use cfg.for_dataset(name) to fill the dataset default")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.meta_steps, eta_min=cfg.lr * 1e-2)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    losses: list[float] = []
    bar = progress_bar(total=cfg.meta_steps, desc="meta-train", disable=not progress)
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
    bar.close()
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
                       **query_metrics(model(xq, v), yq), "seconds": dt, "budget": cfg.jiio_budget,
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
    fig, axes = plt.subplots(1, len(xs), figsize=(3.2 * len(xs), 2.8), sharey=True)
    for i, ax in enumerate(axes):
        gx = grid[i, :, 0].numpy()
        ax.scatter(xs[i, :, 0].numpy(), ys[i, :, 0].numpy(), c="k", s=14, label="support", zorder=3)
        ax.plot(gx, p0[i, :, 0].numpy(), c="0.6", ls=":", label="v = 0")
        ax.plot(gx, pa[i, :, 0].numpy(), c="tab:orange", label=f"Adam-{cfg.adam_steps}")
        ax.plot(gx, pj[i, :, 0].numpy(), c="tab:blue", ls="--", label=f"JIIO-{cfg.jiio_budget}")
        ax.set_xlabel("x")
        ax.set_title(f"task {i}", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle("few-shot sinusoid fits after adaptation of the context v (10 support points)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_curve(losses: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(losses), figsize=(4 * len(losses), 2.8))
    axes = [axes] if len(losses) == 1 else list(axes)
    for ax, (name, ls) in zip(axes, losses.items()):
        ax.plot(ls)
        ax.set_yscale("log")
        ax.set_title(f"{name}: meta-train query loss", fontsize=9)
        ax.set_xlabel("meta-step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(config: MetaConfig | dict[str, Any] | None = None, out_dir: str | Path = "runs/meta-learning",
        progress: bool = True, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Meta-train a :class:`ContextDEQ` with JIIO adaptation on each dataset and compare inner loops.

    Writes ``metrics.json``, ``sinusoid_fits.png``, ``meta_training.png`` and ``meta_{dataset}.safetensors``.

    Arguments:
        config: :class:`MetaConfig`, a dict of its fields (``{"quick": True}`` starts from :meth:`MetaConfig.quick`)
            or ``None`` for the defaults.
        out_dir: output directory; progress: tqdm bars.
        checkpoint: a ``meta_{dataset}.safetensors`` of an earlier run: that dataset's model is loaded instead of
            meta-trained (only that dataset is run).

    Returns:
        the metrics dict.
    """
    cfg = _as_config(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_all(cfg.seed)
    loaded: dict[str, Any] | None = None
    datasets = cfg.datasets
    if checkpoint is not None:
        from deq_core import load

        _, loaded = load(checkpoint)
        if not loaded or loaded.get("task") != "meta-learning":
            raise DeqInputError(f"{checkpoint} is not a meta-learning checkpoint (config {loaded!r})")
        datasets = (loaded["dataset"],)
    metrics: dict[str, Any] = {"task": "meta-learning", "config": jsonable(asdict(cfg)), "results": {},
                               "checkpoint": None if checkpoint is None else str(checkpoint)}
    curves: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    base_cfg = cfg
    metrics["dataset_config"] = {}
    for ds in datasets:
        cfg = base_cfg.for_dataset(ds)
        metrics["dataset_config"][ds] = {k: getattr(cfg, k) for k in DATASET_DEFAULTS[ds]}
        model = build_meta_model(cfg, ds)
        t = time.perf_counter()
        if loaded is not None:
            load_checkpoint(model, checkpoint)  # type: ignore[arg-type]
        else:
            curves[ds] = meta_train(model, _sampler(cfg, ds, "train"), cfg, progress=progress)
        train_s = time.perf_counter() - t
        batch = _sampler(cfg, ds, "test")(cfg.eval_tasks, torch.Generator().manual_seed(cfg.seed + 1000))
        res = evaluate_adaptation(model, batch, cfg)
        v_j, _ = adapt_jiio(model, batch[0], batch[1], cfg)
        res["forward_solve_iterations"] = solve_iterations(model, batch[2], v_j)
        res["meta_train_seconds"] = train_s
        if ds in curves:
            res["final_train_query_loss"] = float(sum(curves[ds][-10:]) / len(curves[ds][-10:]))
        metrics["results"][ds] = res
        if ds == "sinusoid":
            _plot_sinusoids(model, batch, cfg, out / "sinusoid_fits.png")
        save_checkpoint(model, out / f"meta_{ds}.safetensors",
                        {"task": "meta-learning", "dataset": ds, "model": model.hparams,
                         "config": jsonable(asdict(cfg))})
    if curves:
        _plot_curve(curves, out / "meta_training.png")
    metrics["total_seconds"] = time.perf_counter() - t0
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


class MetaLearningTask:
    """``deq tasks run meta-learning``: meta-train a FiLM-conditioned DEQ with JIIO adaptation of the task context
    (few-shot sinusoids and a 5-way MNIST split) and compare JIIO, Adam-20 and MAML-style inner loops.

    Options: every field of :class:`MetaConfig` and ``quick``.
    """

    name = "meta-learning"

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)
        self.config = _as_config(self.options)

    def run(self, out: str | Path, *, checkpoint: str | Path | None = None, progress_bar: bool = True,
            progress: bool | None = None) -> dict[str, Any]:
        show = progress_bar if progress is None else progress
        return run(self.config, out, progress=show, checkpoint=checkpoint)


def _as_config(config: MetaConfig | dict[str, Any] | None) -> MetaConfig:
    return config_from(MetaConfig, config, "meta-learning", {"steps": ("meta_steps", int)})
