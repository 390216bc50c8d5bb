"""Generative modelling with a decoder-only DEQ whose latent codes are optimized per sample by JIIO.

Model: ``y_hat = h(z*)``, ``z* = f(z*, x)`` (:class:`~deq_tasks.models.MDEQDecoder`); there is no encoder: each
image's latent ``x`` solves ``min_{||x|| <= sqrt(L)} sum_pixels (h(z) - y)^2`` s.t. ``z = f(z, x)`` (GLO-like), by

* **JIIO** (:func:`jiio_latents`): one augmented equilibrium over ``(z, mu, x)``, ``T`` iterations of about one
  ``f`` and one VJP each, or
* the **baseline** (:func:`adam_latents`): projected Adam on ``x`` from 0 (40 steps, lr 1.0, as in the release),
  each step a full DEQ forward solve plus an implicit backward solve.

Both run on the same images with the same latent ball as training. Everything reported is scored at an
equilibrium: JIIO's ``x*`` is re-decoded by a plain DEQ solve ``z = f(z, x*)`` (warm-started from JIIO's ``z``,
timed as part of JIIO), since JIIO's last iterate need not satisfy ``z = f(z, x*)`` (:func:`compare_latents`).

Training ``theta`` (:func:`train_decoder`): JIIO without autograd gives ``(z*, mu*, x*)``; ``x*`` is a constant
(exact at the optimum by the envelope theorem, as the outer loss is the inner one); ``f(z*, x*)`` is evaluated once
with autograd and its backward solves the DEQ adjoint warm-started from ``mu*`` rescaled to the outer loss
(``mu* / numel(batch)``). Outer loss: MSE(h(z*), y).

Samples: a Gaussian mixture (scikit-learn) fitted to the JIIO codes of training images, decoded. Comparison
(the paper's table 1): a VAE (small conv encoder) on the same DEQ decoder architecture, scored by test
reconstruction MSE and, on the labelled built-in sets, a Fréchet distance in the features of a digit classifier
trained here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deq_core import DeqConfigError, DeqInputError
from deq_core.nn import frozen_weights

from ._base import (
    Progress,
    TaskBase,
    check_int,
    check_number,
    frozen_params,
    help_field,
    save_curves,
    save_grid,
    write_metrics,
)
from .data import ImageData, load_images, psnr
from .jiio import JIIOConfig, JIIOProblem, JIIOResult, equilibrium_with_grad, jiio_solve, l2_ball
from .models.decoder import MDEQDecoder
from .models.features import frechet_distance, train_feature_net

__all__ = [
    "DECODER_JIIO", "DecoderConfig", "GenerativeConfig", "GenerativeTask", "VAE", "adam_latents", "build_decoder",
    "compare_latents", "decoder_gradient", "decoder_problem", "encode", "jiio_latents", "latent_radius",
    "train_decoder", "train_vae", "void_reason",
]

MODEL_KIND = "mdeq-decoder"
DEFAULT_LATENT_DIM = 32

DECODER_JIIO = JIIOConfig(budget=60, alpha=0.1, alpha_final=0.1 / 3, beta_z=1.0, beta_mu=0.6, solver="anderson",
                          solver_options={"m": 30}, warmup=5, x_scale="alpha")
"""JIIO settings for decoder latents (sum-of-squares inner loss over pixels; Anderson on the stacked state).

Anderson memory 30, an undamped ``z`` update (``beta_z = 1``; Anderson does the mixing; ``beta_mu`` stays 0.6) and
the stacked state holding ``x / alpha`` (``x_scale="alpha"``): the ``x`` residual Anderson sees is then ``d_x``
itself, on the scale of the ``z`` and ``mu`` residuals. Measured on the MNIST decoder (16 held-out digits,
objective re-solved at ``x*``): after 60 iterations 36.4 with the release's settings (``beta_z = 0.8``, raw ``x``,
``m = 20``), 29.0 with these and ``m = 40``; Adam-40 ends at 27.6. ``warmup`` (capped at ``budget // 4`` by
:meth:`~deq_tasks.jiio.JIIOConfig.with_budget`): ``z`` alone first, as from ``z = 0`` the decoder's ``df/dz`` is not
contractive and an adjoint iterated from the start throws the latent away."""


def latent_radius(model: MDEQDecoder) -> float:
    """The latents' constraint set (GLO-style): the L2 ball of radius ``sqrt(latent_dim)``."""
    return math.sqrt(model.latent_dim)


def build_decoder(size: int = 28, latent_dim: int = DEFAULT_LATENT_DIM, channels: tuple[int, int] = (8, 16), *,
                  gain: float = 3.0, seed: int = 0, head_bias: float | None = None, **kw: Any) -> MDEQDecoder:
    """The task's decoder: :class:`MDEQDecoder` with an Anderson (m = 5) plain-DEQ solver.

    ``gain`` 3 (not the layer's default 4): trained at gain 4 the layer is not a contraction at its equilibrium
    (spectral radius of ``df/dz`` about 1.1, the plain solve stalls at its cap), so neither the forward nor the
    adjoint iteration converges; at gain 3 the plain solve still takes ~20-25 Anderson iterations. After the
    tasks' 200 training steps (``jac_reg`` 0.1) it takes 6-16 inside Adam's steps, depending on the data
    (digits ~6, MNIST and photo patches ~10, LFW faces ~15; benchmarks/results/RESULTS.md, 2026-12-02).

    ``head_bias``: initial bias of the output conv before the ``tanh`` (None: PyTorch's default, ~0, i.e. grey
    images). MNIST is mostly background (-1): -1.5 starts the decoder near black, so 200 steps go to the strokes
    instead of to the background level (inverse task: first loss 1.07 -> 0.41, final 0.11 -> 0.055)."""
    torch.manual_seed(seed)
    kw.setdefault("solver", "anderson")
    kw.setdefault("solver_options", {"m": 5})
    model = MDEQDecoder(latent_dim=latent_dim, size=size, channels=channels, gain=gain, **kw)
    if head_bias is not None:
        with torch.no_grad():
            model.head_out.bias.fill_(float(head_bias))
    return model


MIN_CONVERGED = 0.95
"""Below this fraction of converged forward solves in Adam's steps, :func:`compare_latents` flags its result void."""


def decoder_problem(model: MDEQDecoder, target: Tensor, mask: Tensor | None = None,
                    radius: float | None = None) -> JIIOProblem:
    """``min_{||x|| <= radius} sum M (h(z) - target)^2`` per sample, ``z = f(z, x)`` (``M`` = visible-pixel mask,
    default all; ``radius`` = GLO-style L2-ball constraint on the latent, ``None`` = unconstrained)."""
    def objective(z: Any, x: Tensor) -> Tensor:
        err = (model.head(z) - target) ** 2
        if mask is not None:
            err = err * mask
        return err.flatten(1).sum(1)

    return JIIOProblem(f=model.layer, objective=objective, project=None if radius is None else l2_ball(radius))


def jiio_latents(model: MDEQDecoder, target: Tensor, mask: Tensor | None = None,
                 config: JIIOConfig | None = None, radius: float | None = None) -> JIIOResult:
    """JIIO latent codes for ``target`` images, starting from ``z = mu = x = 0``."""
    config = DECODER_JIIO if config is None else config
    x0 = target.new_zeros(target.shape[0], model.latent_dim)
    with torch.no_grad(), frozen_weights(model):
        return jiio_solve(decoder_problem(model, target, mask, radius), model.init_state(x0), x0, config)


def adam_latents(model: MDEQDecoder, target: Tensor, mask: Tensor | None = None, *, steps: int = 40,
                 lr: float = 1.0, radius: float | None = None) -> dict[str, Any]:
    """Baseline: Adam on the latents from 0; each step solves the DEQ and its implicit backward (projected Adam:
    with ``radius`` the latent is projected onto the L2 ball after every step, the same constraint as JIIO's).

    Returns ``{"x", "objective" (B,) at the final x, "trace" (steps + 1,) batch-mean objective before each step and
    at the end, "time_trace" (steps + 1,) seconds since the start, "forward_steps" (mean solver steps),
    "converged_fraction" (of the forward solves, over steps and samples)}``.
    """
    if steps < 1 or not lr > 0:
        raise DeqConfigError(f"adam_latents needs steps >= 1 and lr > 0, got steps={steps}, lr={lr}")
    t0 = time.perf_counter()
    x = target.new_zeros(target.shape[0], model.latent_dim, requires_grad=True)
    opt = torch.optim.Adam([x], lr=lr)
    trace, times, fsteps, conv = [], [], [], []
    proj = None if radius is None else l2_ball(radius)

    def loss_of(img: Tensor) -> Tensor:
        err = (img - target) ** 2
        return (err if mask is None else err * mask).flatten(1).sum(1)

    with frozen_params(model):
        for _ in range(steps):
            img, info = model(x)
            per = loss_of(img)
            trace.append(float(per.detach().mean()))
            times.append(time.perf_counter() - t0)
            fsteps.append(float(info.stats.steps.float().mean()))
            conv.append(float(info.stats.converged.float().mean()))
            opt.zero_grad()
            per.sum().backward()
            opt.step()
            if radius is not None:
                with torch.no_grad():
                    x.copy_(proj(x))
        with torch.no_grad():
            img, info = model(x)
            per = loss_of(img)
    trace.append(float(per.mean()))
    times.append(time.perf_counter() - t0)
    return {"x": x.detach(), "objective": per.detach(), "trace": trace, "time_trace": times,
            "forward_steps": sum(fsteps) / len(fsteps), "converged_fraction": sum(conv) / len(conv),
            "image": img.detach()}


def decode(model: MDEQDecoder, x: Tensor, batch: int = 256) -> Tensor:
    """Plain DEQ decode (no gradients) in chunks."""
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(model(x[i:i + batch])[0])
    return torch.cat(outs)


def encode(model: MDEQDecoder, images: Tensor, config: JIIOConfig | None = None, batch: int = 128,
           mask: Tensor | None = None, radius: float | None = None) -> tuple[Tensor, Tensor]:
    """JIIO latents ``x*`` of ``images`` and their reconstructions at an equilibrium: ``h(z)`` with ``z = f(z, x*)``
    re-solved (warm-started from JIIO's ``z``, which need not be an equilibrium at ``x*``), in chunks."""
    xs, recs = [], []
    for i in range(0, len(images), batch):
        y = images[i:i + batch]
        m = None if mask is None else mask[i:i + batch]
        res = jiio_latents(model, y, m, config, radius)
        xs.append(res.x)
        with torch.no_grad():
            recs.append(model(res.x, res.z)[0])
    return torch.cat(xs), torch.cat(recs)


def _jacobian_penalty(model: MDEQDecoder, z: Any, x: Tensor, target: float | None = None) -> Tensor:
    """The decoder's Jacobian penalty at ``(z, x)``, differentiable in the weights.

    ``target`` None: the Hutchinson estimate (1 probe) of ``||df/dz||_F^2 / numel`` (papers.md 1.4), which pushes
    every direction of ``df/dz`` towards 0. A number: the hinge ``mean_i relu(rho_i - target)^2`` on a 5-VJP
    power-iteration estimate ``rho_i`` of each sample's largest growth
    (:func:`~deq_core.jacobian_spectral`), which only acts on samples less contractive than ``target``."""
    from deq_core import StateLayout, jacobian_frobenius, jacobian_spectral

    layout = StateLayout.of(z)
    x = x.detach()

    def flat(v: Tensor) -> Tensor:
        return layout.pack(model.layer(layout.unpack(v), x))

    start = layout.pack(tuple(t.detach() for t in z))
    if target is None:
        return jacobian_frobenius(flat, start, probes=1)
    return torch.relu(jacobian_spectral(flat, start, iters=5) - target).pow(2).mean()


def _sphere_penalty(model: MDEQDecoder, n: int, target: float | None, generator: torch.Generator | None) -> Tensor:
    """The Jacobian penalty at ``n`` latents drawn uniformly on the latent sphere ``||x|| = sqrt(L)`` (at their
    equilibria, solved without a graph): where projected optimizers put their latents."""
    p = next(model.parameters())
    x = torch.randn(n, model.latent_dim, generator=generator).to(device=p.device, dtype=p.dtype)
    x = latent_radius(model) * x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)
    with torch.no_grad():
        z, _ = model.deq(x)
    return _jacobian_penalty(model, z, x, target)


def decoder_gradient(model: MDEQDecoder, y: Tensor, obs: Tensor, mask: Tensor | None, config: JIIOConfig, *,
                     radius: float | None = None, jac_reg: float = 0.0, jac_target: float | None = None,
                     jac_sphere: float = 0.0, generator: torch.Generator | None = None) -> tuple[Tensor, JIIOResult]:
    """One training gradient (accumulated into ``.grad``) of the outer loss MSE(h(z*), y) for clean images ``y``
    ``(B, 1, S, S)`` observed as ``obs`` (with visible-pixel ``mask`` or ``None``): JIIO latents ``x*`` held
    constant, the DEQ backward warm-started from ``mu*`` (module docstring), plus ``jac_reg`` times the Jacobian
    penalty (with ``jac_target``: its hinge form). ``jac_sphere > 0``: plus the penalty at ``ceil(jac_sphere * B)``
    random latents on the latent sphere (drawn from ``generator``), added to the one at the training latents so
    that the latter keeps its full weight. Returns ``(outer loss, JIIOResult)``; the caller steps the optimizer."""
    res = jiio_latents(model, obs, mask, config, radius)
    with frozen_weights(model.layer):
        mu0 = tuple(m / y.numel() for m in res.mu)
        z = equilibrium_with_grad(model.layer, res.z, res.x, adjoint_init=mu0, solver=model.solver,
                                  backward_steps=model.backward_steps, rtol=model.rtol, atol=model.atol)
        jl = _jacobian_penalty(model, res.z, res.x, jac_target) if jac_reg > 0 else None
        if jl is not None and jac_sphere > 0:
            n = math.ceil(jac_sphere * y.shape[0])
            jl = jl + _sphere_penalty(model, n, jac_target, generator)
    loss = F.mse_loss(model.head(z), y)
    (loss if jl is None else loss + jac_reg * jl).backward()
    return loss.detach(), res


def train_decoder(model: MDEQDecoder, images: Tensor, *, steps: int, batch: int = 32, lr: float = 1e-3,
                  config: JIIOConfig | None = None, corrupt: Any = None, seed: int = 0, jac_reg: float = 0.1,
                  jac_target: float | None = None, jac_sphere: float = 0.0, progress: Progress | None = None,
                  desc: str = "train",
                  radius: float | None = None) -> list[dict[str, float]]:
    """Train ``theta`` through JIIO (module docstring). ``corrupt(y, generator) -> (observed, mask or None)`` turns
    the clean batch into the inner problem's observation (inverse tasks); the outer loss is always vs clean ``y``.
    ``radius``: the latents' L2-ball constraint (use the same one at test time).
    ``jac_reg``: weight of the Hutchinson estimate of ``||df/dz||_F^2 / numel`` at ``(z*, x*)`` (papers.md 1.4).
    Without it the decoder drifts to a non-contractive layer: trained 200 steps at ``jac_reg = 0`` its plain solve
    hits the 40-step cap at every latent. At 0.1 (the tasks' default) the MNIST decoder's Anderson solve inside
    Adam's steps took 9.7 iterations after 200 steps in the 2026-12-02 measurement (an earlier decoder took ~35);
    at 0.05, 0.03 and 0.01 it ran to the 40-step cap again (benchmarks/results/RESULTS.md).
    ``jac_target``: penalize, with weight ``jac_reg``, only the part of each sample's estimated largest growth of
    ``df/dz`` above this rate (:func:`_jacobian_penalty`), so the decoder keeps a long solve instead of being pushed
    towards a trivial contraction: with ``jac_reg=1, jac_target=0.8`` the MNIST decoder's solve inside Adam's
    steps took 15.9-17.6 Anderson iterations after 200 steps over three seeds (9.7-10.7 with the default penalty,
    which on the third seed let the solve run to its cap; benchmarks/results/RESULTS.md, §4 third round). JIIO
    then reached Adam-40's objective on none of them, so the default stays the Frobenius penalty.
    ``jac_sphere``: also take the penalty at this fraction of the batch of random latents on the latent sphere
    (:func:`decoder_gradient`). JIIO's training latents stay inside the ball, while projected Adam's (lr 1) end on
    its boundary, where a decoder regularized only at the former need not converge (RESULTS.md).
    Under ``torch.distributed`` (e.g. ``torchrun``, one process per rank) every rank draws the same global batch
    of ``batch`` images (same ``seed``), corrupts it identically, runs JIIO and the loss on its own equal shard
    (:func:`deq_core.distributed.rank_shard`) and averages the gradients before the step
    (:func:`deq_core.distributed.average_gradients`), so the parameters stay identical on every rank and follow
    the one-process full-batch run (JIIO is per sample; use a non-adaptive Anderson in ``config`` for exact
    agreement, as the adaptive CPU mode switches on a whole-batch test).
    Returns per-step logs (outer loss, inner objective per pixel, KKT residuals; this rank's shard)."""
    from deq_core.distributed import average_gradients, rank_shard

    config = DECODER_JIIO.with_budget(20) if config is None else config
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=1e-6)
    logs = []
    bar = progress if progress is not None else Progress(steps, desc, False)
    model.train()
    shard = rank_shard(batch)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=g)
        y = images[idx]
        obs, mask = corrupt(y, g) if corrupt is not None else (y, None)
        y, obs, mask = y[shard], obs[shard], None if mask is None else mask[shard]
        opt.zero_grad()
        loss, res = decoder_gradient(model, y, obs, mask, config, radius=radius, jac_reg=jac_reg,
                                     jac_target=jac_target, jac_sphere=jac_sphere, generator=g)
        average_gradients(model.parameters())
        opt.step()
        sched.step()
        log = {"loss": float(loss.detach()), "inner_per_pixel": float(res.objective.mean()) / y[0].numel(),
               "kkt_z": float(res.kkt["z"].mean()), "kkt_x": float(res.kkt["x"].mean())}
        logs.append(log)
        bar.set_postfix(loss=f"{log['loss']:.4f}")
        bar.update()
    model.eval()
    return logs


# --------------------------------------------------------------------------------------------------- VAE
class VAE(nn.Module):
    """A small conv encoder ``q(x | y) = N(m, diag(exp(logvar)))`` on the same DEQ decoder architecture."""

    def __init__(self, decoder: MDEQDecoder) -> None:
        super().__init__()
        L, S = decoder.latent_dim, decoder.layer.size
        self.decoder = decoder
        self.enc = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
                                 nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.GroupNorm(4, 32), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(32 * (S // 4) ** 2, 2 * L))

    def encode(self, y: Tensor) -> tuple[Tensor, Tensor]:
        m, logvar = self.enc(y).chunk(2, dim=1)
        return m, logvar.clamp(-8, 4)


def train_vae(vae: VAE, images: Tensor, *, steps: int, batch: int = 32, lr: float = 1e-3, seed: int = 0,
              jac_reg: float = 0.1, jac_target: float | None = None,
              progress: Progress | None = None) -> list[dict[str, float]]:
    """ELBO with a KL warm-up ``min(step / (steps / 2), 1)`` and the KL divided by the pixel count (as the release);
    ``jac_reg`` and ``jac_target`` as in :func:`train_decoder` (the same decoder needs the same guard against becoming
    non-contractive)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=1e-6)
    logs = []
    bar = progress if progress is not None else Progress(steps, "train vae", False)
    vae.train()
    for k in range(steps):
        y = images[torch.randint(0, len(images), (batch,), generator=g)]
        m, logvar = vae.encode(y)
        x = m + torch.randn(m.shape, generator=g) * (0.5 * logvar).exp()
        with frozen_weights(vae.decoder.layer):   # normalized weights computed once for the solve and the penalty
            z, _ = vae.decoder.deq(x)
            jl = _jacobian_penalty(vae.decoder, z, x, jac_target) if jac_reg > 0 else None
        rec = vae.decoder.head(z)
        mse = F.mse_loss(rec, y)
        kl = 0.5 * (m ** 2 + logvar.exp() - 1 - logvar).sum(1).mean() / y[0].numel()
        loss = mse + min(k / max(steps / 2, 1), 1.0) * kl
        if jl is not None:
            loss = loss + jac_reg * jl
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        logs.append({"mse": float(mse.detach()), "kl": float(kl.detach())})
        bar.set_postfix(mse=f"{float(mse.detach()):.4f}")
        bar.update()
    vae.eval()
    return logs


# --------------------------------------------------------------------------------------------------- comparison
def _objective(img: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    err = (img - target) ** 2
    return (err if mask is None else err * mask).flatten(1).sum(1)


def _first_reach(trace: Sequence[float], times: Sequence[float], objective: float) -> tuple[int | None, float | None]:
    hit = [i for i, v in enumerate(trace) if v <= objective]
    return (hit[0], times[hit[0]]) if hit else (None, None)


def void_reason(converged_fraction: float, forward_steps: float, cap: int) -> str | None:
    """Why a latent comparison is void, or ``None``: the decoder's own solve converged in fewer than
    :data:`MIN_CONVERGED` of Adam's forward solves (``forward_steps``: their mean length; ``cap``: the decoder's
    ``max_steps``), so Adam's gradients and both objectives are not taken at equilibria.

    Example:
        >>> void_reason(1.0, 8.0, 40) is None, "void" in void_reason(0.9, 39.0, 40)
        (True, True)
    """
    if converged_fraction >= MIN_CONVERGED:
        return None
    return (f"the decoder's own solve converged in only {converged_fraction:.1%} of Adam's forward solves "
            f"(a valid comparison needs {MIN_CONVERGED:.0%}; mean {forward_steps:.1f} steps, cap {cap}): Adam's "
            "gradients and both objectives are not taken at equilibria, so this comparison is void; retrain with "
            "the penalty also on the latent sphere (jac_sphere, e.g. 0.5), a stronger jac_reg or a jac_target")


def compare_latents(model: MDEQDecoder, target: Tensor, clean: Tensor, mask: Tensor | None, *, jiio: JIIOConfig,
                    budgets: Sequence[int], adam_steps: int = 40, adam_lr: float = 1.0, radius: float | None = None,
                    progress: Progress | None = None) -> dict[str, Any]:
    """JIIO (at each budget) against Adam on the same images and constraint, everything scored at an equilibrium.

    JIIO's ``x*`` is re-decoded by a plain DEQ solve at ``x*`` (warm-started from JIIO's ``z``; timed with JIIO).
    Objective: sum of squared errors per image (on the visible / observed pixels), mean over the images.

    Returns:
        ``{"n", "void" (the speed-ups below mean nothing), "warnings" (why, e.g. the decoder's own solve does not
        converge),
        "adam": {objective / seconds per step, decoder solve length and converged fraction},
        "jiio": [per budget: objective, seconds, PSNR vs ``clean``, boundary fraction],
        "speedup": {"adam_time_to_jiio_objective": per budget (Adam's time to first reach JIIO's objective / JIIO's
        time, null if Adam never does), "jiio_reaches_adam": first budget reaching Adam's final objective, its
        seconds and Adam's time / its time (nulls if none)},
        "images": {"jiio": at ``jiio.budget``, "adam": final}}``.
    """
    r = radius
    # first-call kernel selection paid by neither method
    jiio_latents(model, target[:2], None if mask is None else mask[:2], jiio.with_budget(3), r)
    adam_latents(model, target[:2], None if mask is None else mask[:2], steps=1, lr=adam_lr, radius=r)
    base = adam_latents(model, target, mask, steps=adam_steps, lr=adam_lr, radius=r)
    if progress is not None:
        progress.update()
    adam_final, adam_time = base["trace"][-1], base["time_trace"][-1]
    rows, images = [], {}
    for b in sorted(set(budgets) | {jiio.budget}):
        t = time.perf_counter()
        res = jiio_latents(model, target, mask, jiio.with_budget(b), r)
        with torch.no_grad():
            img, info = model(res.x, res.z)
        secs = time.perf_counter() - t
        obj = float(_objective(img, target, mask).mean())
        n_reach, t_reach = _first_reach(base["trace"], base["time_trace"], obj)
        rows.append({"budget": b, "seconds": secs, "objective": obj, "psnr": psnr(img, clean),
                     "adam_steps_to_reach": n_reach,
                     "speedup_at_equal_objective": None if t_reach is None else t_reach / secs,
                     "jiio_iterate_objective": float(res.objective.mean()),
                     "resolve_steps_mean": float(info.stats.steps.float().mean()),
                     "latents_on_boundary": res.stats.get("boundary"),
                     "kkt": {k: float(v.mean()) for k, v in res.kkt.items()}})
        if b == jiio.budget:
            images["jiio"] = img
        if progress is not None:
            progress.update()
    reach = next((row for row in rows if row["objective"] <= adam_final), None)
    main = next(row for row in rows if row["budget"] == jiio.budget)
    images["adam"] = base["image"]
    void = void_reason(base["converged_fraction"], base["forward_steps"], model.max_steps)
    warnings = [] if void is None else [void]
    return {
        "n": len(target),
        "void": bool(warnings),
        "warnings": warnings,
        "objective": "sum of squared errors per image" + (" on the visible pixels" if mask is not None else ""),
        "adam": {"steps": adam_steps, "lr": adam_lr, "seconds": adam_time, "objective": adam_final,
                 "psnr": psnr(base["image"], clean), "objective_per_step": base["trace"],
                 "seconds_per_step": base["time_trace"], "decoder_solve_steps_mean": base["forward_steps"],
                 "decoder_converged_fraction": base["converged_fraction"]},
        "jiio": {"budget": jiio.budget, "objective": main["objective"], "seconds": main["seconds"],
                 "psnr": main["psnr"], "per_budget": rows},
        "speedup": {
            "adam_time_to_jiio_objective_over_jiio_time": main["speedup_at_equal_objective"],
            "per_budget": {str(row["budget"]): row["speedup_at_equal_objective"] for row in rows},
            "jiio_reaches_adam_objective": None if reach is None else {
                "budget": reach["budget"], "seconds": reach["seconds"], "speedup": adam_time / reach["seconds"]},
        },
        "images": images,
    }


# --------------------------------------------------------------------------------------------------- configs
def _decoder_hparams(model: MDEQDecoder) -> dict[str, Any]:
    hp = model.hparams
    return {"size": hp["size"], "latent_dim": hp["latent_dim"], "channels": list(hp["channels"]),
            "expansion": hp["expansion"], "gain": model.layer.gain}


def _steps(steps: int, epochs: float | None, n: int, batch: int) -> int:
    return max(1, math.ceil(epochs * n / batch)) if epochs is not None else steps


@dataclass(frozen=True)
class DecoderConfig:
    """Options shared by the decoder tasks (``generative`` and ``inverse``)."""

    data: str = help_field("mnist", "'mnist', 'digits', or a path: a folder of images, an image file (cut into "
                                    "patches), a .npy/.npz array of images")
    image_size: int | None = help_field(None, "decoder image side (multiple of 4, >= 8); none: the data's side, "
                                              "rounded up to a multiple of 4, at most 32")
    n_train: int | None = help_field(None, "training images (none: min(2000, all but the test set))")
    n_test: int | None = help_field(None, "held-out images (none: min(200, a fifth))")
    n_eval: int = help_field(64, "held-out images on which JIIO and Adam are compared")
    latent_dim: int | None = help_field(None, "latent size L (latents live in the ball of radius sqrt(L)); none: 32, "
                                              "or a checkpoint's")
    steps: int = help_field(200, "training steps")
    epochs: float | None = help_field(None, "training epochs (overrides steps)")
    batch: int = help_field(32, "training batch size")
    lr: float = help_field(1e-2, "Adam learning rate of the decoder (cosine decay)")
    head_bias: float | None = help_field(-1.5, "initial output bias before tanh (-1.5: near-black start)")
    jac_reg: float = help_field(0.1, "weight of the Jacobian regularization (keeps the decoder a converging DEQ)")
    jac_target: float | None = help_field(None, "hinge the Jacobian penalty at this contraction rate (per-sample "
                                                "spectral estimate; none: the Frobenius penalty)")
    jac_sphere: float = help_field(0.0, "also take the Jacobian penalty at this fraction of the batch of "
                                        "random latents on the latent sphere (0: only at the training latents)")
    train_budget: int = help_field(20, "JIIO iterations per training step")
    jiio: JIIOConfig = help_field(help="JIIO at test time", factory=lambda: DECODER_JIIO)
    eval_budgets: tuple[int, ...] = help_field((20, 40, 60, 80, 100), "JIIO budgets timed against Adam")
    adam_steps: int = help_field(40, "baseline: projected Adam steps on the latent")
    adam_lr: float = help_field(1.0, "baseline: Adam learning rate")
    latent_ball: bool = help_field(True, "latents constrained to the ball of radius sqrt(L) (training, JIIO, Adam)")
    seed: int = help_field(0, "random seed")

    @property
    def latent_size(self) -> int:
        """``latent_dim``, or its default (32) when none was given."""
        return DEFAULT_LATENT_DIM if self.latent_dim is None else self.latent_dim

    def __post_init__(self) -> None:
        for name, low in (("n_eval", 1), ("steps", 1), ("batch", 1), ("train_budget", 1),
                          ("adam_steps", 1)):
            check_int(self, name, getattr(self, name), low)
        for name in ("n_train", "n_test", "latent_dim"):
            check_int(self, name, getattr(self, name), 1, optional=True)
        check_int(self, "image_size", self.image_size, 8, optional=True)
        if self.image_size is not None and self.image_size % 4:
            raise DeqConfigError(f"{type(self).__name__}.image_size must be a multiple of 4, got {self.image_size}")
        check_number(self, "epochs", self.epochs, optional=True)
        check_number(self, "lr", self.lr)
        check_number(self, "adam_lr", self.adam_lr)
        check_number(self, "jac_reg", self.jac_reg, allow_low=True)
        check_number(self, "jac_target", self.jac_target, optional=True)
        check_number(self, "jac_sphere", self.jac_sphere, allow_low=True)
        check_number(self, "head_bias", self.head_bias, low=-math.inf, optional=True)
        if not isinstance(self.jiio, JIIOConfig):
            raise DeqConfigError(f"{type(self).__name__}.jiio must be a JIIOConfig, got {type(self.jiio).__name__}")
        self.jiio.make_solver()   # an unknown solver name or option fails here, before any data is read
        budgets = (self.eval_budgets,) if isinstance(self.eval_budgets, int) else self.eval_budgets
        if not budgets or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in budgets):
            raise DeqConfigError(f"{type(self).__name__}.eval_budgets must be integers >= 1, got {self.eval_budgets!r}")
        object.__setattr__(self, "eval_budgets", tuple(budgets))
        if not isinstance(self.data, str) or not self.data:
            raise DeqConfigError(f"{type(self).__name__}.data must be 'mnist', 'digits' or a path, got {self.data!r}")


class _DecoderTask(TaskBase):
    """Data, decoder (trained or from a checkpoint) and the training curve, shared by the decoder tasks."""

    def radius(self, model: MDEQDecoder) -> float | None:
        return latent_radius(model) if self.config.latent_ball else None

    def train_jiio(self) -> JIIOConfig:
        return self.config.jiio.with_budget(self.config.train_budget)

    def load_decoder(self, path: str | Path) -> MDEQDecoder:
        state, meta = self.read_checkpoint(path, [MODEL_KIND])
        hp = dict(meta["hparams"])
        size = self.config.image_size
        if size is not None and size != hp["size"]:
            raise DeqInputError(f"checkpoint {str(path)!r} decodes {hp['size']}px images, --image-size is {size}")
        latent = self.config.latent_dim
        if latent is not None and latent != hp["latent_dim"]:
            raise DeqInputError(f"checkpoint {str(path)!r} has {hp['latent_dim']} latent dimensions, --latent-dim is "
                                f"{latent}")
        model = build_decoder(size=hp["size"], latent_dim=hp["latent_dim"], channels=tuple(hp["channels"]),
                              gain=hp["gain"], expansion=hp["expansion"])
        return self.load_state(model, state, path).eval()

    def data_and_model(self, checkpoint: Any) -> tuple[ImageData, MDEQDecoder | None]:
        c = self.config
        model = self.load_decoder(checkpoint) if checkpoint is not None else None
        size = model.layer.size if model is not None else c.image_size
        data = load_images(c.data, size=size, n_train=c.n_train, n_test=c.n_test, seed=c.seed)
        return data, model

    def train_steps(self, data: ImageData) -> int:
        c = self.config
        return _steps(c.steps, c.epochs, len(data.train_x), c.batch)

    def train(self, data: ImageData, bar: Progress, *, corrupt: Any = None) -> tuple[MDEQDecoder, dict[str, Any]]:
        c = self.config
        model = build_decoder(size=data.size, latent_dim=c.latent_size, seed=c.seed, head_bias=c.head_bias)
        steps = self.train_steps(data)
        bar.stage("train decoder")
        t = time.perf_counter()
        logs = train_decoder(model, data.train_x, steps=steps, batch=c.batch, lr=c.lr, config=self.train_jiio(),
                             corrupt=corrupt, seed=c.seed, jac_reg=c.jac_reg, jac_target=c.jac_target,
                             jac_sphere=c.jac_sphere, progress=bar,
                             radius=self.radius(model))
        return model, {"steps": steps, "seconds": time.perf_counter() - t, "first_loss": logs[0]["loss"],
                       "final_loss": logs[-1]["loss"], "loss_curve": [x["loss"] for x in logs],
                       "inner_per_pixel_curve": [x["inner_per_pixel"] for x in logs]}

    def save_model(self, out: Path, model: MDEQDecoder) -> None:
        self.save_checkpoint(out / "model.safetensors", model, MODEL_KIND, _decoder_hparams(model))

    @staticmethod
    def save_training(out: Path, trained: dict[str, Any]) -> None:
        if "loss_curve" in trained:
            save_curves(out / "training.png", {"outer loss (MSE)": trained["loss_curve"],
                                               "inner objective per pixel": trained["inner_per_pixel_curve"]})

    def common_metrics(self, data: ImageData, model: MDEQDecoder, trained: dict[str, Any]) -> dict[str, Any]:
        return {"task": self.name, "config": self.config, "data": data.preprocessing, "training": trained,
                "psnr_convention": "[-1, 1] images: -10 log10(MSE)",
                "decoder": {**_decoder_hparams(model), "latent_ball_radius": self.radius(model)}}


@dataclass(frozen=True)
class GenerativeConfig(DecoderConfig):
    """Options of ``deq tasks run generative`` (:class:`DecoderConfig` plus the VAE comparison)."""

    vae: bool = help_field(True, "also train a VAE on the same decoder architecture (the paper's table 1)")
    vae_lr: float = help_field(2e-3, "the VAE's learning rate")
    n_samples_fit: int = help_field(1000, "training images whose JIIO codes fit the sampling GMM")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self, "vae_lr", self.vae_lr)
        check_int(self, "n_samples_fit", self.n_samples_fit, 10)


class GenerativeTask(_DecoderTask):
    """``deq tasks run generative``: train a JIIO decoder (or load ``--checkpoint``), compare JIIO with Adam-40 on
    held-out images at equal objective, sample from a GMM on the codes, compare with a VAE.

    Writes ``metrics.json``, ``reconstructions.png``, ``samples.png``, ``training.png`` (the training curve),
    ``vae.png`` and ``model.safetensors`` into ``out``.

    Example:
        >>> [o.name for o in GenerativeTask.options()][:3]
        ['data', 'image_size', 'n_train']
    """

    name = "generative"
    Config = GenerativeConfig

    def run(self, out: str | Path, *, checkpoint: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
        c = self.config
        out, _ = self.prepare(out)
        data, model = self.data_and_model(checkpoint)
        n_train_steps = 0 if model is not None else self.train_steps(data)
        vae_steps = self.train_steps(data) if c.vae else 0
        n_budgets = len(set(c.eval_budgets) | {c.jiio.budget})
        bar = self.progress(n_train_steps + vae_steps + n_budgets + 4, progress)
        try:
            if model is None:
                model, trained = self.train(data, bar)
            else:
                trained = {"loaded": str(checkpoint)}
            self.save_model(out, model)
            self.save_training(out, trained)
            metrics = self.common_metrics(data, model, trained)
            metrics.update(self.evaluate(model, data, out, bar))
        finally:
            bar.close()
        write_metrics(out, metrics)
        return metrics

    def evaluate(self, model: MDEQDecoder, data: ImageData, out: Path, bar: Progress) -> dict[str, Any]:
        from sklearn.mixture import GaussianMixture

        c, r = self.config, self.radius(model)
        test = data.test_x
        ev = test[: c.n_eval]
        bar.stage("JIIO vs Adam")
        cmp = compare_latents(model, ev, ev, None, jiio=c.jiio, budgets=c.eval_budgets, adam_steps=c.adam_steps,
                              adam_lr=c.adam_lr, radius=r, progress=bar)
        imgs = cmp.pop("images")
        bar.stage("reconstruct, fit GMM")
        _, rec = encode(model, test, c.jiio, radius=r)
        codes, _ = encode(model, data.train_x[: min(len(data.train_x), c.n_samples_fit)], c.jiio.with_budget(40),
                          radius=r)
        bar.update()
        gmm = GaussianMixture(n_components=min(10, len(codes)), covariance_type="full", random_state=c.seed,
                              reg_covar=1e-4)
        gmm.fit(codes.double().numpy())
        samples_x = torch.from_numpy(gmm.sample(len(test))[0]).float()
        if r is not None:
            samples_x = l2_ball(r)(samples_x)
        samples = decode(model, samples_x)
        bar.update()
        save_grid(out / "reconstructions.png",
                  [("truth", ev[:12]), (f"JIIO-{c.jiio.budget}", imgs["jiio"][:12]),
                   (f"Adam-{c.adam_steps}", imgs["adam"][:12])],
                  title=f"held-out reconstructions, re-solved at x* (JIIO T={c.jiio.budget}, Adam {c.adam_steps})")
        save_grid(out / "samples.png", [("", samples[i * 12:(i + 1) * 12]) for i in range(4)],
                  title="samples: GMM (10 comp.) on JIIO codes, decoded by the DEQ")
        metrics: dict[str, Any] = {"comparison": cmp,
                                   "jiio_model": {"recon_mse": float(F.mse_loss(rec, test)),
                                                  "recon_psnr": psnr(rec, test)}}
        feat = None
        if data.train_y is not None and data.size in (8, 28):   # a Fréchet distance needs labels for its features
            feat = train_feature_net(data.train_x, data.train_y, seed=c.seed)
            with torch.no_grad():
                f_real, f_rec, f_gen = feat.features(test), feat.features(rec), feat.features(samples)
                metrics["feature_net_test_accuracy"] = float((feat(test).argmax(1) == data.test_y).float().mean())
            metrics["jiio_model"].update(recon_frechet=frechet_distance(f_real, f_rec),
                                         sample_frechet=frechet_distance(f_real, f_gen))
        bar.update()
        if c.vae:
            bar.stage("VAE")
            metrics["vae_model"] = self._vae(model, data, feat, out, bar)
        bar.update()
        return metrics

    def _vae(self, model: MDEQDecoder, data: ImageData, feat: Any, out: Path, bar: Progress) -> dict[str, Any]:
        c = self.config
        dec = build_decoder(size=data.size, latent_dim=model.latent_dim, seed=c.seed + 1, head_bias=c.head_bias)
        vae = VAE(dec)
        steps = self.train_steps(data)
        train_vae(vae, data.train_x, steps=steps, batch=c.batch, lr=c.vae_lr, seed=c.seed, jac_reg=c.jac_reg,
                  jac_target=c.jac_target, progress=bar)
        test = data.test_x
        with torch.no_grad():
            m, _ = vae.encode(test)
            rec = decode(dec, m)
            gen = decode(dec, torch.randn(len(test), model.latent_dim, generator=torch.Generator().manual_seed(1)))
        # the paper's "MDEQ-VAE (w/ JIIO)": the VAE's decoder with JIIO-optimized latents (unconstrained)
        _, rec_jiio = encode(dec, test, c.jiio)
        save_grid(out / "vae.png", [("truth", test[:12]), ("VAE rec", rec[:12]), ("VAE gen", gen[:12])],
                  title="VAE on the same DEQ decoder architecture")
        res = {"steps": steps, "recon_mse": float(F.mse_loss(rec, test)),
               "jiio_recon_mse": float(F.mse_loss(rec_jiio, test))}
        if feat is not None:
            with torch.no_grad():
                f_real = feat.features(test)
                res.update(recon_frechet=frechet_distance(f_real, feat.features(rec)),
                           sample_frechet=frechet_distance(f_real, feat.features(gen)),
                           jiio_recon_frechet=frechet_distance(f_real, feat.features(rec_jiio)))
        return res
