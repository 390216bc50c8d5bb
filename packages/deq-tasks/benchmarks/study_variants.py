"""JIIO variants on cached decoders: train each set's decoder once (``--cache``), then each JIIO variant costs
seconds. Everything is scored at an equilibrium re-solved at JIIO's ``x*``, against projected Adam-40 on the same
held-out images (its result is cached with the decoder).

Per variant and budget: the objective (sum of squared errors per image), the fraction of latents on the latent
ball's boundary and the seconds; ``reach``: the first budget reaching Adam-40's objective. ``--trajectory
VARIANT``: one T = 100 solve of that variant, with the equilibrium objective at the (projected) iterate every 5
iterations and the three blocks of the augmented residual (where the solve goes wrong, not just where it ends).
``--ceiling``: what a step rule on ``x`` can reach with *exact* gradients (a full solve and implicit backward per
step): projected gradient descent at fixed steps, Nesterov momentum and Adam lr 1 after 20 / 40 / 100 steps.
``--direction VARIANT``: along one T = 100 solve of that variant, the cosine between JIIO's ``d_x`` and the exact
gradient at JIIO's ``x`` (how good the direction JIIO steps along is while ``z`` and ``mu`` lag behind ``x``).

    python packages/deq-tasks/benchmarks/study_variants.py --sets skimage-lfw-faces mnist --steps 60 \\
        --variants task alpha-0.03 [--trajectory task]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

BUDGETS = (20, 40, 60, 80, 100)


def variants() -> dict[str, Any]:
    from deq_tasks.generative import DECODER_JIIO as D

    a = dict(D.solver_options or {})
    return {
        "task": D,
        "last-iterate": D.replace(best_iterate=False),
        "alpha-0.3": D.replace(alpha=0.3, alpha_final=0.1),
        "alpha-0.05": D.replace(alpha=0.05, alpha_final=0.05 / 3),
        "alpha-0.03": D.replace(alpha=0.03, alpha_final=0.01),
        "no-drop": D.replace(alpha_final=None),
        "switch-20": D.replace(switch_at=20),
        "switch-30": D.replace(switch_at=30),
        "m-10": D.replace(solver_options={**a, "m": 10}),
        "m-40": D.replace(solver_options={**a, "m": 40}),
        "no-adaptive": D.replace(solver_options={**a, "adaptive": False}),
        "no-restart": D.replace(solver_options={**a, "restart_growth": float("inf")}),
        "x-scale-1": D.replace(x_scale=None),
        "beta-mu-1": D.replace(beta_mu=1.0),
        "warmup-0": D.replace(warmup=0),
        "warmup-10": D.replace(warmup=10),
        "max-step-0.5": D.replace(max_step=0.5),
        "max-step-2": D.replace(max_step=2.0),
        "tangent": D.replace(tangent_step=True),
        "tangent-alpha-0.03": D.replace(tangent_step=True, alpha=0.03, alpha_final=0.01),
        "fixed-point": D.replace(solver="fixed-point", solver_options=None, beta_z=0.8),
        # the map evaluated at the projected input (Anderson's mixed x can leave the ball): same fixed points
        "feasible-input": D,
        # d_x scaled per coordinate by its inverse RMS over the first 10 x-evaluations, then frozen; normalized to
        # mean 1 per sample and clamped to [1/c, c] (a diagonal preconditioner in Adam's spirit, kept stationary)
        "precond-1.5": D,
        "precond-2": D,
        "precond-3": D,
    }


def context(label: str) -> Any:
    """The patch a variant needs while it runs (``_Null`` for the configuration-only variants)."""
    if label == "feasible-input":
        return _FeasibleInput()
    if label.startswith("precond-"):
        return _Preconditioned(float(label.split("-", 1)[1]))
    return _Null()


@contextlib.contextmanager
def patched(cls: type, **methods: Any) -> Iterator[dict[str, Any]]:
    """Replace methods of ``cls`` while the block runs (yields the originals); restores them even on error."""
    saved = {name: cls.__dict__[name] for name in methods}
    try:
        for name, fn in methods.items():
            setattr(cls, name, fn)
        yield saved
    finally:
        for name, fn in saved.items():
            setattr(cls, name, fn)


class _Patch:
    """A variant's patch as a context manager: subclasses say which methods of which class to replace."""

    def methods(self) -> tuple[type, dict[str, Any]]:
        raise NotImplementedError

    def __enter__(self) -> None:
        cls, methods = self.methods()
        self._ctx = patched(cls, **methods)
        self._ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


class _FeasibleInput(_Patch):
    """While active, the augmented map evaluates ``G(v)`` at ``v`` with its ``x`` block projected onto the set."""

    def methods(self) -> tuple[type, dict[str, Any]]:
        from deq_tasks.jiio import _map
        from deq_tasks.jiio._constraints import project_checked

        orig = _map.AugmentedMap.__call__

        def call(G: Any, v: torch.Tensor) -> torch.Tensor:
            if G.problem.project is not None:
                zf, muf, x = G.split(v)
                v = G.stack(zf, muf, project_checked(G.problem.project, x))
            return orig(G, v)

        return _map.AugmentedMap, {"__call__": call}


class _Preconditioned(_Patch):
    """While active, the augmented map steps along ``P * d_x`` instead of ``d_x``. ``P = 1 / rms(d_x)`` per sample
    and coordinate, with ``rms`` taken over the map's first ``freeze`` x-evaluations that have a nonzero ``d_x``
    (then frozen, so Anderson sees a stationary map), normalized to mean 1 per sample and clamped to
    ``[1/clamp, clamp]``. Interior fixed points are unchanged (``d_x = 0``); on the ball's boundary the Euclidean
    projection of a preconditioned step moves them slightly."""

    def __init__(self, clamp: float, freeze: int = 10) -> None:
        self.clamp, self.freeze = clamp, freeze

    def methods(self) -> tuple[type, dict[str, Any]]:
        from deq_tasks.jiio import _map

        orig_call, orig_pieces = _map.AugmentedMap.__call__, _map.AugmentedMap.pieces
        clamp, freeze = self.clamp, self.freeze

        def call(G: Any, v: torch.Tensor) -> torch.Tensor:
            G._pc_step = not G.z_only
            try:
                return orig_call(G, v)
            finally:
                G._pc_step = False

        def pieces(G: Any, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
            fz, gz, dx, cost = orig_pieces(G, v)
            if not getattr(G, "_pc_step", False):
                return fz, gz, dx, cost
            sq, n = dx.detach() ** 2, getattr(G, "_pc_n", 0)
            if n == 0 and float(sq.max()) == 0.0:       # mu = 0 and no direct x term: nothing to measure yet
                return fz, gz, dx, cost
            if n < freeze:
                G._pc_sum = sq if n == 0 else G._pc_sum + sq
            G._pc_n = n + 1
            rms = G._pc_sum.sqrt()
            scale = 1.0 / (rms + 1e-3 * rms.mean(1, keepdim=True) + 1e-30)
            scale = (scale / scale.mean(1, keepdim=True)).clamp(1 / clamp, clamp)
            return fz, gz, dx * scale, cost

        return _map.AugmentedMap, {"__call__": call, "pieces": pieces}


def decoder(name: str, path: str, steps: int, seed: int, n_eval: int, cache: Path,
            jac_reg: float = 0.1, jac_target: float | None = None, jac_sphere: float = 0.0
            ) -> tuple[Any, Any, Any, dict]:
    from deq_tasks._base import Progress
    from deq_tasks.generative import GenerativeTask, adam_latents, build_decoder

    task = GenerativeTask(data=path, steps=steps, seed=seed, vae=False, jac_reg=jac_reg, jac_target=jac_target,
                          jac_sphere=jac_sphere)
    data, _ = task.data_and_model(None)
    y = data.test_x[:n_eval]
    f = cache / (f"{name}_{steps}_{seed}_{n_eval}" + ("" if jac_reg == 0.1 else f"_jac_reg{jac_reg}")
                 + ("" if jac_target is None else f"_jac_target{jac_target}")
                 + ("" if not jac_sphere else f"_jac_sphere{jac_sphere}") + ".pt")
    if f.exists():
        d = torch.load(f, weights_only=False)
        model = build_decoder(size=data.size, latent_dim=task.config.latent_size, seed=seed,
                              head_bias=task.config.head_bias)
        model.load_state_dict(d["state"])
        return task, model.eval(), y, d["base"]
    t = time.perf_counter()
    model, tr = task.train(data, Progress(0, "", False))
    r = task.radius(model)
    adam_latents(model, y[:2], steps=1, radius=r)           # first-call kernel selection
    base = adam_latents(model, y, steps=40, radius=r)
    base = {k: base[k] for k in ("trace", "time_trace", "forward_steps", "converged_fraction", "x")}
    base["train_seconds"], base["train_loss"] = time.perf_counter() - t, tr["final_loss"]
    torch.save({"state": model.state_dict(), "base": base}, f)
    return task, model.eval(), y, base


def void_reason(base: dict, cap: int) -> str | None:
    """Why a cached decoder's comparison is void (its own solve does not converge in Adam's steps, as
    ``compare_latents`` judges it), or ``None``. Caches written before the fraction was kept are judged by the
    mean solve length: within half an iteration of the decoder's ``cap`` (its ``max_steps``) it cannot have
    converged."""
    from deq_tasks.generative import void_reason as task_void_reason

    frac = base.get("converged_fraction")
    if frac is not None:
        return task_void_reason(frac, base["forward_steps"], cap)
    if base["forward_steps"] >= cap - 0.5:
        return (f"the decoder's own solve takes {base['forward_steps']:.1f} of at most {cap} iterations in Adam's "
                f"steps (this cache predates the converged fraction): this comparison is void")
    return None


def _task_map(task: Any, model: Any, y: torch.Tensor, cfg: Any) -> Any:
    """The augmented map of the task's latent problem for targets ``y`` (to evaluate recorded states)."""
    from deq_tasks.generative import decoder_problem
    from deq_tasks.jiio import augmented_map

    x0 = y.new_zeros(len(y), model.latent_dim)
    return augmented_map(decoder_problem(model, y, None, task.radius(model)), cfg, model.init_state(x0), x0)


def trajectory(task: Any, model: Any, y: torch.Tensor, cfg: Any) -> list[dict[str, float]]:
    from deq_tasks.generative import jiio_latents
    from deq_tasks.jiio import _solve

    store: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    orig = _solve.JIIORecorder.record

    def record(rec: Any, k: int, v: torch.Tensor, gv: torch.Tensor, cost: torch.Tensor, sign: float) -> None:
        if k % 5 == 1:
            store.append((k, v.clone(), gv.clone()))
        orig(rec, k, v, gv, cost, sign)

    cfg = cfg.with_budget(100)
    with patched(_solve.JIIORecorder, record=record):
        jiio_latents(model, y, None, cfg, task.radius(model))
    G = _task_map(task, model, y, cfg)
    rows = []
    for k, v, gv in store:
        (zf, muf, x), (gz, gm, gx) = G.split(v), G.split(gv)
        xp = x if G.problem.project is None else G.problem.project(x)
        with torch.no_grad():
            img, _ = model(xp)
        rows.append({"k": k, "equilibrium_objective": float(((img - y) ** 2).flatten(1).sum(1).mean()),
                     "residual_z": float((gz - zf).norm(dim=1).mean()),
                     "residual_mu": float((gm - muf).norm(dim=1).mean()),
                     "residual_x": float((gx - x).reshape(len(y), -1).norm(dim=1).mean()),
                     "mean_norm_x": float(x.reshape(len(y), -1).norm(dim=1).mean())})
    return rows


CEILING_STEPS = (20, 40, 100)


def ceiling(task: Any, model: Any, y: torch.Tensor, alpha: float, steps: tuple[int, ...] = CEILING_STEPS
            ) -> list[tuple[str, dict[int, float]]]:
    """Exact-gradient step rules on the latents (projected onto the task's ball after each step): the objective
    (sum of squared errors per image, at an equilibrium) after each of ``steps`` steps."""
    from deq_tasks.jiio import l2_ball

    r = task.radius(model)
    proj = (lambda x: x) if r is None else l2_ball(r)
    rules = [("adam lr 1", "adam", 1.0), *((f"gd {a:g}", "gd", a) for a in (alpha / 3, alpha, 3 * alpha)),
             *((f"nesterov 0.9, {a:g}", "nesterov", a) for a in (alpha / 3, alpha))]
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    rows = []
    try:
        for label, kind, lr in rules:
            x = y.new_zeros(len(y), model.latent_dim).requires_grad_()
            opt = (torch.optim.Adam([x], lr=lr) if kind == "adam"
                   else torch.optim.SGD([x], lr=lr, momentum=0.9 if kind == "nesterov" else 0.0,
                                        nesterov=kind == "nesterov"))
            out: dict[int, float] = {}
            for k in range(1, max(steps) + 1):
                opt.zero_grad()
                img, _ = model(x)
                ((img - y) ** 2).flatten(1).sum(1).sum().backward()
                opt.step()
                with torch.no_grad():
                    x.copy_(proj(x))
                    if k in steps:
                        img, _ = model(x)
                        out[k] = float(((img - y) ** 2).flatten(1).sum(1).mean())
            rows.append((label, out))
    finally:
        for p in params:
            p.requires_grad_(True)
    return rows


def direction(task: Any, model: Any, y: torch.Tensor, cfg: Any, at: tuple[int, ...] = (1, 2, 5, 10, 20, 40, 70, 99)
              ) -> list[dict[str, float]]:
    """Cosine between JIIO's ``d_x`` and the exact gradient of the objective at JIIO's ``x``, at the map's
    evaluations number ``at`` (after the warm-up), over one T = 100 solve: median and minimum over the images."""
    from deq_tasks.generative import jiio_latents
    from deq_tasks.jiio import _map

    seen: list[torch.Tensor] = []
    orig = _map.AugmentedMap.__call__

    def call(G: Any, v: torch.Tensor) -> torch.Tensor:
        if not G.z_only:
            seen.append(v.clone())
        return orig(G, v)

    with patched(_map.AugmentedMap, __call__=call):
        jiio_latents(model, y, None, cfg.with_budget(100), task.radius(model))
    G = _task_map(task, model, y, cfg)
    rows = []
    for k in at:
        if k >= len(seen):
            break
        _, _, x = G.split(seen[k])
        _, _, dx, _ = G.pieces(seen[k])
        xe = x.detach().clone().requires_grad_()
        img, _ = model(xe)
        g, = torch.autograd.grad(((img - y) ** 2).flatten(1).sum(1).sum(), xe)
        cos = torch.nn.functional.cosine_similarity(dx.flatten(1), g.flatten(1), dim=1)
        rows.append({"evaluation": k, "cos_median": float(cos.median()), "cos_min": float(cos.min()),
                     "norm_ratio_median": float((dx.flatten(1).norm(dim=1) / g.flatten(1).norm(dim=1)).median())})
    return rows


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_tasks import write_datasets

    from deq_tasks.generative import jiio_latents

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", default=["skimage-lfw-faces"], help="set names (prefixes)")
    p.add_argument("--steps", type=int, default=200, help="decoder training steps")
    p.add_argument("--n-eval", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jac-reg", type=float, default=0.1, help="the decoder's Jacobian regularization weight")
    p.add_argument("--jac-target", type=float, default=None, help="hinge the Jacobian penalty at this rate")
    p.add_argument("--jac-sphere", type=float, default=0.0, help="penalty also at this fraction of sphere latents")
    p.add_argument("--variants", nargs="+", default=["task"], help=f"of: {', '.join(variants())}")
    p.add_argument("--trajectory", default=None, help="also print one T = 100 trajectory of this variant")
    p.add_argument("--ceiling", action="store_true", help="also the exact-gradient step rules (gd, nesterov, adam)")
    p.add_argument("--direction", default=None, help="also JIIO's d_x against the exact gradient, for this variant")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "deq_study_variants"),
                   help="folder of the cached decoders and data (default: in the system's temp folder)")
    a = p.parse_args(argv)
    known = variants()
    bad = [v for v in a.variants + [t for t in (a.trajectory, a.direction) if t] if v not in known]
    if bad:
        p.error(f"unknown variants {bad}; known: {', '.join(known)}")
    cache = Path(a.cache)
    (cache / "data").mkdir(parents=True, exist_ok=True)
    index = cache / "data" / "sets.json"
    if not index.exists():
        index.write_text(json.dumps(write_datasets(cache / "data")))
    sets = json.loads(index.read_text())
    for want in a.sets:
        name = next((s for s in sets if s.startswith(want)), None)
        if name is None:
            p.error(f"unknown set {want!r}; known: {', '.join(sets)}")
        task, model, y, base = decoder(name.split()[0], sets[name], a.steps, a.seed, a.n_eval, cache, a.jac_reg,
                                         a.jac_target, a.jac_sphere)
        r = task.radius(model)
        adam = base["trace"][-1]
        on = float((base["x"].norm(dim=1) >= r * (1 - 1e-4)).float().mean()) if r is not None else 0.0
        secs = base["time_trace"][-1]
        print(f"== {name}: decoder {a.steps} steps (seed {a.seed}), Adam-40 {adam:.2f} in {secs:.1f} s "
              f"({on:.0%} of its latents on the boundary), decoder solve {base['forward_steps']:.1f} Anderson its",
              flush=True)
        void = void_reason(base, model.max_steps)
        if void:
            print(f"  VOID: {void}", flush=True)
        for label in a.variants:
            objs, cells = [], []
            for b in BUDGETS:
                with context(label):
                    t = time.perf_counter()
                    res = jiio_latents(model, y, None, known[label].with_budget(b), r)
                    with torch.no_grad():
                        img, _ = model(res.x, res.z)
                    secs = time.perf_counter() - t
                obj = float(((img - y) ** 2).flatten(1).sum(1).mean())
                objs.append(obj)
                cells.append(f"{b}: {obj:.2f} ({res.stats.get('boundary', 0):.0%}, {secs:.1f}s)")
            reach = next((b for b, o in zip(BUDGETS, objs) if o <= adam), None)
            print(f"  {label:20s} reach {str(reach):4s} " + "  ".join(cells), flush=True)
        if a.ceiling:
            print(f"  exact gradients (objective after {' / '.join(map(str, CEILING_STEPS))} steps):")
            for label, out in ceiling(task, model, y, known["task"].alpha):
                print(f"    {label:20s} " + " / ".join(f"{out[k]:.3f}" for k in CEILING_STEPS), flush=True)
        if a.direction:
            print(f"  JIIO's d_x against the exact gradient ({a.direction}, T = 100):")
            with context(a.direction):
                rows = direction(task, model, y, known[a.direction])
            for row in rows:
                print("   ", json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
        if a.trajectory:
            print(f"  trajectory of {a.trajectory} (T = 100):")
            with context(a.trajectory):
                rows = trajectory(task, model, y, known[a.trajectory])
            for row in rows:
                print("   ", json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
    return 0


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main())
