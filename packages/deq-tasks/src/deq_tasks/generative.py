"""Generative modelling with a decoder-only DEQ whose latent codes are optimized per sample by JIIO.

Model: ``y_hat = h(z*)``, ``z* = f(z*, x)`` (:class:`~deq_tasks.models.MDEQDecoder`); there is no encoder: each
image's latent ``x`` solves ``min_x sum_pixels (h(z) - y)^2`` s.t. ``z = f(z, x)`` (GLO-like), found by

* **JIIO** (:func:`jiio_latents`): one augmented equilibrium over ``(z, mu, x)``, ``T`` iterations of about one
  ``f`` and one VJP each, or
* the **baseline** (:func:`adam_latents`): Adam on ``x`` from 0 (40 steps, lr 1.0, as in the release), each step a
  full DEQ forward solve plus an implicit backward solve.

Training ``theta`` (:func:`train_decoder`): JIIO without autograd gives ``(z*, mu*, x*)``; ``x*`` is a constant
(exact at the optimum by the envelope theorem, as the outer loss is the inner one); ``f(z*, x*)`` is evaluated once
with autograd and its backward solves the DEQ adjoint warm-started from ``mu*`` rescaled to the outer loss
(``mu* / numel(batch)``). Outer loss: MSE(h(z*), y).

Samples: a Gaussian mixture (scikit-learn) fitted to the JIIO codes of training images, decoded. Comparison
(the paper's table 1): a VAE (small conv encoder) on the same DEQ decoder architecture, scored by test
reconstruction MSE and a Fréchet distance in the features of a digit classifier trained here.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deq_core import DeqConfigError, load, save
from deq_core.nn import frozen_weights

from ._common import frozen_params, progress, save_grid, seed_all, write_metrics
from .data import DigitData, load_digits, psnr
from .jiio import JIIOConfig, JIIOProblem, JIIOResult, equilibrium_with_grad, jiio_solve, l2_ball
from .models.decoder import MDEQDecoder
from .models.features import frechet_distance, train_feature_net

__all__ = [
    "DecoderTaskOptions", "GenerativeTask", "VAE", "adam_latents", "build_decoder", "decoder_gradient",
    "decoder_problem", "default_jiio_config", "encode", "jiio_latents", "latent_radius", "load_decoder",
    "train_decoder", "train_vae",
]


def default_jiio_config(budget: int = 100, *, alpha: float = 0.1, alpha_final: float | None = 0.1 / 3,
                        m: int = 30, warmup: int = 5) -> JIIOConfig:
    """JIIO settings for decoder latents (sum-of-squares inner loss over pixels; Anderson on the stacked state).

    Anderson memory 30, an undamped ``z`` update (``beta_z = 1``; Anderson does the mixing; ``beta_mu`` stays
    0.6) and the stacked state holding ``x / alpha`` (``x_scale="alpha"``): the ``x`` residual Anderson sees is
    then ``d_x`` itself, on the scale of the ``z`` and ``mu`` residuals. Measured on the MNIST decoder (16 held-out
    digits, objective re-solved at ``x*``): after 60 iterations 36.4 with the release's settings (``beta_z = 0.8``,
    raw ``x``, ``m = 20``), 29.0 with these and ``m = 40``; Adam-40 ends at 27.6. Memory 30 rather than the
    release's 40: Anderson's two passes over its ``(B, m, N)`` history are memory-bound and cost as much as the
    reverse pass of ``f`` at ``m = 40`` (batch 32: 4.4 ms against 4.0 ms per iteration). On the benchmark's decoder
    each memory reached Adam-40's objective within 100 iterations on 2 of 3 problems (30: generative at T = 80,
    inpainting; 40: generative at T = 80, denoising), 30 at about 10 % less time per iteration.

    ``warmup`` (capped at ``budget // 4``) iterations of ``z`` alone come first: from ``z = 0`` the decoder's
    ``df/dz`` is not contractive (its ``tanh`` are unsaturated there), an adjoint iterated from the start overshoots
    its fixed point hundreds of times and throws the latent away (:class:`~deq_tasks.jiio.JIIOConfig`).
    """
    return JIIOConfig(budget=budget, alpha=alpha, alpha_final=alpha_final, beta_z=1.0, beta_mu=0.6,
                      solver="anderson", solver_options={"m": m}, warmup=min(warmup, budget // 4), x_scale="alpha")


def latent_radius(model: MDEQDecoder) -> float:
    """The latents' constraint set (GLO-style): the L2 ball of radius ``sqrt(latent_dim)``."""
    return math.sqrt(model.latent_dim)


def build_decoder(size: int = 28, latent_dim: int = 32, channels: tuple[int, int] = (8, 16), *, gain: float = 3.0,
                  seed: int = 0, head_bias: float | None = None, **kw: Any) -> MDEQDecoder:
    """The task's decoder: :class:`MDEQDecoder` with an Anderson (m = 5) plain-DEQ solver.

    ``gain`` 3 (not the layer's default 4): trained at gain 4 the layer is not a contraction at its equilibrium
    (spectral radius of ``df/dz`` about 1.1, the plain solve stalls at its cap), so neither the forward nor the
    adjoint iteration converges; at gain 3 the plain solve still takes ~20-25 Anderson iterations.

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
    config = default_jiio_config() if config is None else config
    x0 = target.new_zeros(target.shape[0], model.latent_dim)
    with torch.no_grad(), frozen_weights(model):
        return jiio_solve(decoder_problem(model, target, mask, radius), model.init_state(x0), x0, config)


def adam_latents(model: MDEQDecoder, target: Tensor, mask: Tensor | None = None, *, steps: int = 40,
                 lr: float = 1.0, radius: float | None = None) -> dict[str, Any]:
    """Baseline: Adam on the latents from 0; each step solves the DEQ and its implicit backward (projected Adam:
    with ``radius`` the latent is projected onto the L2 ball after every step, the same constraint as JIIO's).

    Returns ``{"x", "objective" (B,) at the final x, "trace" (steps + 1,) batch-mean objective before each step and
    at the end, "time_trace" (steps + 1,) seconds since the start, "forward_steps" (mean solver steps)}``.
    """
    if steps < 1 or not lr > 0:
        raise DeqConfigError(f"adam_latents needs steps >= 1 and lr > 0, got steps={steps}, lr={lr}")
    t0 = time.perf_counter()
    x = target.new_zeros(target.shape[0], model.latent_dim, requires_grad=True)
    opt = torch.optim.Adam([x], lr=lr)
    trace, times, fsteps = [], [], []
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
            "forward_steps": sum(fsteps) / len(fsteps), "image": img.detach()}


def decode(model: MDEQDecoder, x: Tensor, batch: int = 256) -> Tensor:
    """Plain DEQ decode (no gradients) in chunks."""
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(model(x[i:i + batch])[0])
    return torch.cat(outs)


def encode(model: MDEQDecoder, images: Tensor, config: JIIOConfig | None = None, batch: int = 128,
           mask: Tensor | None = None, radius: float | None = None) -> tuple[Tensor, Tensor]:
    """JIIO latents and reconstructions ``h(z*)`` of ``images`` (chunked)."""
    xs, recs = [], []
    for i in range(0, len(images), batch):
        y = images[i:i + batch]
        m = None if mask is None else mask[i:i + batch]
        res = jiio_latents(model, y, m, config, radius)
        xs.append(res.x)
        with torch.no_grad():
            recs.append(model.head(res.z))
    return torch.cat(xs), torch.cat(recs)


def _jacobian_penalty(model: MDEQDecoder, z: Any, x: Tensor) -> Tensor:
    """Hutchinson estimate (1 probe) of ``||df/dz||_F^2 / numel`` at ``(z, x)``, differentiable in the weights."""
    from deq_core import StateLayout, jacobian_frobenius

    layout = StateLayout.of(z)
    x = x.detach()

    def flat(v: Tensor) -> Tensor:
        return layout.pack(model.layer(layout.unpack(v), x))

    return jacobian_frobenius(flat, layout.pack(tuple(t.detach() for t in z)), probes=1)


def decoder_gradient(model: MDEQDecoder, y: Tensor, obs: Tensor, mask: Tensor | None, config: JIIOConfig, *,
                     radius: float | None = None, jac_reg: float = 0.0) -> tuple[Tensor, JIIOResult]:
    """One training gradient (accumulated into ``.grad``) of the outer loss MSE(h(z*), y) for clean images ``y``
    ``(B, 1, S, S)`` observed as ``obs`` (with visible-pixel ``mask`` or ``None``): JIIO latents ``x*`` held
    constant, the DEQ backward warm-started from ``mu*`` (module docstring), plus ``jac_reg`` times the Jacobian
    penalty. Returns ``(outer loss, JIIOResult)``; the caller steps the optimizer."""
    res = jiio_latents(model, obs, mask, config, radius)
    with frozen_weights(model.layer):
        mu0 = tuple(m / y.numel() for m in res.mu)
        z = equilibrium_with_grad(model.layer, res.z, res.x, adjoint_init=mu0, solver=model.solver,
                                  backward_steps=model.backward_steps, rtol=model.rtol, atol=model.atol)
        jl = _jacobian_penalty(model, res.z, res.x) if jac_reg > 0 else None
    loss = F.mse_loss(model.head(z), y)
    (loss if jl is None else loss + jac_reg * jl).backward()
    return loss.detach(), res


def train_decoder(model: MDEQDecoder, images: Tensor, *, steps: int, batch: int = 32, lr: float = 1e-3,
                  config: JIIOConfig | None = None, corrupt: Any = None, seed: int = 0, jac_reg: float = 0.1,
                  show_progress: bool = False, desc: str = "train",
                  radius: float | None = None) -> list[dict[str, float]]:
    """Train ``theta`` through JIIO (module docstring). ``corrupt(y, generator) -> (observed, mask or None)`` turns
    the clean batch into the inner problem's observation (inverse tasks); the outer loss is always vs clean ``y``.
    ``radius``: the latents' L2-ball constraint (use the same one at test time).
    ``jac_reg``: weight of the Hutchinson estimate of ``||df/dz||_F^2 / numel`` at ``(z*, x*)`` (papers.md 1.4).
    Without it the decoder drifts to a non-contractive layer: trained 200 steps at ``jac_reg = 0`` its plain solve
    hits the 40-step cap at every latent; at 0.1 it takes ~35 Anderson steps (a slow but converging DEQ, like
    MDEQ); at 1.0 about 6.
    Under ``torch.distributed`` (e.g. ``torchrun``, one process per rank) every rank draws the same global batch
    of ``batch`` images (same ``seed``), corrupts it identically, runs JIIO and the loss on its own equal shard
    (:func:`deq_core.distributed.rank_shard`) and averages the gradients before the step
    (:func:`deq_core.distributed.average_gradients`), so the parameters stay identical on every rank and follow
    the one-process full-batch run (JIIO is per sample; use a non-adaptive Anderson in ``config`` for exact
    agreement, as the adaptive CPU mode switches on a whole-batch test).
    Returns per-step logs (outer loss, inner objective per pixel, KKT residuals; this rank's shard)."""
    from deq_core.distributed import average_gradients, rank_shard

    config = default_jiio_config(40) if config is None else config
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=1e-6)
    logs = []
    bar = progress(steps, desc, show_progress)
    model.train()
    shard = rank_shard(batch)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=g)
        y = images[idx]
        obs, mask = corrupt(y, g) if corrupt is not None else (y, None)
        y, obs, mask = y[shard], obs[shard], None if mask is None else mask[shard]
        opt.zero_grad()
        loss, res = decoder_gradient(model, y, obs, mask, config, radius=radius, jac_reg=jac_reg)
        average_gradients(model.parameters())
        opt.step()
        sched.step()
        log = {"loss": float(loss.detach()), "inner_per_pixel": float(res.objective.mean()) / y[0].numel(),
               "kkt_z": float(res.kkt["z"].mean()), "kkt_x": float(res.kkt["x"].mean())}
        logs.append(log)
        bar.set_postfix(loss=f"{log['loss']:.4f}")
        bar.update()
    bar.close()
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
              jac_reg: float = 0.1, show_progress: bool = False) -> list[dict[str, float]]:
    """ELBO with a KL warm-up ``min(step / (steps / 2), 1)`` and the KL divided by the pixel count (as the release);
    ``jac_reg`` as in :func:`train_decoder` (the same decoder needs the same guard against becoming
    non-contractive)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=1e-6)
    logs = []
    bar = progress(steps, "train vae", show_progress)
    vae.train()
    for k in range(steps):
        y = images[torch.randint(0, len(images), (batch,), generator=g)]
        m, logvar = vae.encode(y)
        x = m + torch.randn(m.shape, generator=g) * (0.5 * logvar).exp()
        with frozen_weights(vae.decoder.layer):   # normalized weights computed once for the solve and the penalty
            z, _ = vae.decoder.deq(x)
            jl = _jacobian_penalty(vae.decoder, z, x) if jac_reg > 0 else None
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
    bar.close()
    vae.eval()
    return logs


# --------------------------------------------------------------------------------------------------- the task
def load_decoder(path: str | Path) -> tuple[MDEQDecoder, dict[str, Any]]:
    """Rebuild a decoder saved by a task run (``model.safetensors``) and load its weights."""
    state, config = load(path)
    hp = dict(config["decoder"])
    model = build_decoder(size=hp.pop("size"), latent_dim=hp.pop("latent_dim"), channels=tuple(hp.pop("channels")),
                          gain=hp.pop("gain"), expansion=hp.pop("expansion"))
    model.load_state_dict(state)
    return model.eval(), config


def _decoder_config(model: MDEQDecoder) -> dict[str, Any]:
    hp = model.hparams
    return {"size": hp["size"], "latent_dim": hp["latent_dim"], "channels": list(hp["channels"]),
            "expansion": hp["expansion"], "gain": model.layer.gain}


def _steps(steps: int, epochs: float | None, n: int, batch: int) -> int:
    return max(1, math.ceil(epochs * n / batch)) if epochs is not None else steps


@dataclass
class DecoderTaskOptions:
    """Options and training shared by the decoder tasks (:class:`GenerativeTask` and
    :class:`~deq_tasks.inverse.InverseTask`; each documents them for its command line)."""

    data: str = "mnist"
    n_train: int = 2000
    n_test: int = 200
    latent_dim: int = 32
    steps: int = 200
    epochs: float | None = None
    batch: int = 32
    lr: float = 1e-2
    head_bias: float | None = -1.5
    jac_reg: float = 0.1
    train_budget: int = 20
    budget: int = 20
    alpha: float = 0.1
    adam_steps: int = 40
    adam_lr: float = 1.0
    latent_ball: bool = True
    seed: int = 0

    def jiio_config(self, budget: int) -> JIIOConfig:
        return default_jiio_config(budget, alpha=self.alpha, alpha_final=self.alpha / 3)

    def radius(self, model: MDEQDecoder) -> float | None:
        return latent_radius(model) if self.latent_ball else None

    def train_new_decoder(self, data: DigitData, *, corrupt: Any = None, show: bool = False,
                          desc: str = "train") -> tuple[MDEQDecoder, dict[str, Any]]:
        """Build a decoder for ``data`` and train it through JIIO; returns it and a training summary."""
        model = build_decoder(size=data.size, latent_dim=self.latent_dim, seed=self.seed, head_bias=self.head_bias)
        steps = _steps(self.steps, self.epochs, len(data.train_x), self.batch)
        t = time.perf_counter()
        logs = train_decoder(model, data.train_x, steps=steps, batch=self.batch, lr=self.lr,
                             config=self.jiio_config(self.train_budget), corrupt=corrupt, seed=self.seed,
                             jac_reg=self.jac_reg, show_progress=show, desc=desc, radius=self.radius(model))
        return model, {"steps": steps, "seconds": time.perf_counter() - t, "first_loss": logs[0]["loss"],
                       "final_loss": logs[-1]["loss"]}


@dataclass
class GenerativeTask(DecoderTaskOptions):
    """``deq tasks run generative``: train a JIIO decoder, compare JIIO with Adam-40, sample, compare with a VAE.

    Options (``--name value`` on the command line): ``data`` (mnist | digits), ``n_train``, ``n_test``, ``latent_dim``,
    ``steps`` / ``epochs`` (training), ``batch``, ``lr``, ``train_budget`` (JIIO iterations while training),
    ``budget`` (JIIO iterations at test), ``alpha``, ``head_bias`` (initial output bias, -1.5 = near-black start),
    ``jac_reg`` (Jacobian regularization weight, :func:`train_decoder`), ``adam_steps``, ``adam_lr``, ``vae``
    (train the VAE comparison), ``vae_lr`` (its learning rate: 2e-3 reached test MSE 0.087 in 200 steps, 1e-2 0.11),
    ``latent_ball`` (constrain latents to the ball of radius ``sqrt(latent_dim)``, in training, JIIO and Adam),
    ``seed``.
    """

    vae: bool = True
    vae_lr: float = 2e-3
    name: str = field(default="generative", init=False)

    def run(self, out: str | Path, *, checkpoint: str | Path | None = None,
            progress_bar: bool = True) -> dict[str, Any]:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        seed_all(self.seed)
        data = load_digits(self.data, n_train=self.n_train, n_test=self.n_test, seed=self.seed)
        model, trained = self._model(data, checkpoint, progress_bar)
        save(out / "model.safetensors", model, {"task": self.name, "decoder": _decoder_config(model),
                                                "options": asdict(self)})
        return self.evaluate(model, data, out, trained, progress_bar)

    def _model(self, data: DigitData, checkpoint: Any, show: bool) -> tuple[MDEQDecoder, dict[str, Any]]:
        if checkpoint is not None:
            model, _ = load_decoder(checkpoint)
            return model, {"loaded": str(checkpoint)}
        return self.train_new_decoder(data, show=show)

    def evaluate(self, model: MDEQDecoder, data: DigitData, out: Path, trained: dict[str, Any],
                 show: bool) -> dict[str, Any]:
        from sklearn.mixture import GaussianMixture

        cfg = self.jiio_config(self.budget)
        bar = progress(5 if self.vae else 4, "evaluate", show)
        test = data.test_x
        # JIIO vs Adam on one test batch (same model, same batch)
        yb = test[:32]
        t = time.perf_counter()
        r = self.radius(model)
        res = jiio_latents(model, yb, None, cfg, r)
        t_jiio = time.perf_counter() - t
        base = adam_latents(model, yb, steps=self.adam_steps, lr=self.adam_lr, radius=r)
        bar.update()
        # reconstructions of the whole test set, latents of the training set, GMM samples
        _, rec = encode(model, test, cfg, radius=r)
        mse_rec = float(F.mse_loss(rec, test))
        codes, _ = encode(model, data.train_x[: min(len(data.train_x), 1000)], self.jiio_config(40), radius=r)
        bar.update()
        gmm = GaussianMixture(n_components=10, covariance_type="full", random_state=self.seed, reg_covar=1e-4)
        gmm.fit(codes.double().numpy())
        samples_x = torch.from_numpy(gmm.sample(len(test))[0]).float()
        samples = decode(model, samples_x)
        feat = train_feature_net(data.train_x, data.train_y, seed=self.seed)
        bar.update()
        with torch.no_grad():
            f_real, f_rec, f_gen = feat.features(test), feat.features(rec), feat.features(samples)
            acc = float((feat(test).argmax(1) == data.test_y).float().mean())
        with torch.no_grad():
            img_jiio = model.head(res.z)
        save_grid(out / "reconstructions.png",
                  [("truth", test[:12]), ("JIIO", rec[:12]), ("Adam-40", base["image"][:12])],
                  title=f"test reconstructions (JIIO T={self.budget}, Adam {self.adam_steps} steps)")
        save_grid(out / "samples.png", [("", samples[i * 12:(i + 1) * 12]) for i in range(4)],
                  title="samples: GMM (10 comp.) on JIIO codes, decoded by the DEQ")
        metrics: dict[str, Any] = {
            "task": self.name, "data": self.data, "options": asdict(self), "training": trained,
            "jiio": {"budget": self.budget, "alpha": self.alpha, "seconds": t_jiio,
                     "objective_per_pixel": float(res.objective.mean()) / yb[0].numel(),
                     "kkt": {k: float(v.mean()) for k, v in res.kkt.items()},
                     "psnr": psnr(img_jiio, yb)},
            "adam": {"steps": self.adam_steps, "lr": self.adam_lr, "seconds": base["time_trace"][-1],
                     "objective_per_pixel": float(base["objective"].mean()) / yb[0].numel(),
                     "forward_steps_mean": base["forward_steps"], "psnr": psnr(base["image"], yb)},
            "jiio_model": {"recon_mse": mse_rec, "recon_psnr": psnr(rec, test),
                           "recon_frechet": frechet_distance(f_real, f_rec),
                           "sample_frechet": frechet_distance(f_real, f_gen)},
            "feature_net_test_accuracy": acc,
        }
        if self.vae:
            metrics["vae_model"] = self._vae(model, data, f_real, feat, out, show)
            bar.update()
        bar.update()
        bar.close()
        write_metrics(out, metrics)
        return metrics

    def _vae(self, model: MDEQDecoder, data: DigitData, f_real: Tensor, feat: Any, out: Path,
             show: bool) -> dict[str, Any]:
        # the same decoder, initialization and Jacobian regularization as the JIIO model; its own learning rate
        dec = build_decoder(size=data.size, latent_dim=self.latent_dim, seed=self.seed + 1, head_bias=self.head_bias)
        vae = VAE(dec)
        steps = _steps(self.steps, self.epochs, len(data.train_x), self.batch)
        train_vae(vae, data.train_x, steps=steps, batch=self.batch, lr=self.vae_lr, seed=self.seed,
                  jac_reg=self.jac_reg, show_progress=show)
        test = data.test_x
        with torch.no_grad():
            m, _ = vae.encode(test)
            rec = decode(dec, m)
            gen = decode(dec, torch.randn(len(test), self.latent_dim, generator=torch.Generator().manual_seed(1)))
            f_rec, f_gen = feat.features(rec), feat.features(gen)
        # the paper's "MDEQ-VAE (w/ JIIO)": the VAE's decoder with JIIO-optimized latents
        _, rec_jiio = encode(dec, test, self.jiio_config(self.budget))
        with torch.no_grad():
            f_rj = feat.features(rec_jiio)
        save_grid(out / "vae.png", [("truth", test[:12]), ("VAE rec", rec[:12]), ("VAE gen", gen[:12])],
                  title="VAE on the same DEQ decoder architecture")
        return {"steps": steps, "recon_mse": float(F.mse_loss(rec, test)),
                "recon_frechet": frechet_distance(f_real, f_rec),
                "sample_frechet": frechet_distance(f_real, f_gen), "jiio_recon_mse": float(F.mse_loss(rec_jiio, test)),
                "jiio_recon_frechet": frechet_distance(f_real, f_rj)}
