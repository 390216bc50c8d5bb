"""The diagnostics of ``benchmarks/study_variants.py`` that RESULTS.md quotes: exact-gradient step rules on the
latents (``--ceiling``) and JIIO's ``d_x`` against the exact gradient (``--direction``)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from deq_tasks.generative import DECODER_JIIO, build_decoder

STEPS = (2, 5, 10)
BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "study_variants.py"


@pytest.fixture(scope="module")
def sv():
    spec = importlib.util.spec_from_file_location("study_variants", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["study_variants"] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("study_variants", None)


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = build_decoder(size=8, latent_dim=4, channels=(4, 8), seed=seed, max_steps=8, backward_steps=8).eval()
    with torch.no_grad():
        y, _ = model(torch.randn(3, 4))        # targets the decoder can represent: the optimum is 0
    task = SimpleNamespace(radius=lambda m: 2.0 * math.sqrt(m.latent_dim))
    return task, model, y


@pytest.mark.slow
def test_ceiling_descends_from_the_zero_latent_and_restores_the_weights(sv):
    task, model, y = _setup()
    with torch.no_grad():
        img, _ = model(torch.zeros(3, 4))
        start = float(((img - y) ** 2).flatten(1).sum(1).mean())
    rows = dict(sv.ceiling(task, model, y, alpha=0.1, steps=STEPS))
    assert set(rows) == {"adam lr 1", "gd 0.0333333", "gd 0.1", "gd 0.3", "nesterov 0.9, 0.0333333",
                         "nesterov 0.9, 0.1"}
    for label, out in rows.items():
        assert list(out) == list(STEPS) and all(math.isfinite(v) for v in out.values()), label
    # exact projected gradient descent at a small step and Adam both improve on the start point
    assert rows["gd 0.0333333"][10] < start and rows["adam lr 1"][10] < start
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.slow
def test_ceiling_projects_onto_the_tasks_ball(sv):
    """With a tiny radius every rule ends on the ball: Adam and GD end at the same constrained objective."""
    task, model, y = _setup(1)
    task = SimpleNamespace(radius=lambda m: 1e-3)
    rows = dict(sv.ceiling(task, model, y, alpha=0.1, steps=STEPS))
    vals = [out[10] for out in rows.values()]
    assert max(vals) - min(vals) < 1e-2 * max(vals)


def test_direction_is_the_exact_gradient_where_z_and_mu_are_exact(sv):
    """The first full evaluation after a long z-only warm-up of a contractive decoder has z at its equilibrium and
    mu = grad_z l (one adjoint step from 0): d_x there is the truncated adjoint's gradient, close to the exact one;
    every cosine is a cosine."""
    task, model, y = _setup(2)
    cfg = DECODER_JIIO.replace(warmup=20, solver="fixed-point", solver_options=None)
    rows = sv.direction(task, model, y, cfg, at=(1, 2, 5))
    assert [r["evaluation"] for r in rows] == [1, 2, 5]
    assert all(-1 - 1e-6 <= r["cos_min"] <= r["cos_median"] <= 1 + 1e-6 for r in rows)
    assert rows[0]["cos_median"] > 0.5


def test_preconditioned_variant_changes_only_the_step_and_unpatches(sv):
    """``precond-c`` clamps the scale to [1/c, c]: at c = 1 it is the default JIIO exactly, at c = 2 another solve;
    both finite, and the map's methods are the originals afterwards."""
    from deq_tasks.generative import jiio_latents
    from deq_tasks.jiio import _map

    task, model, y = _setup(3)
    cfg, r = DECODER_JIIO.with_budget(30), task.radius(model)
    orig = (_map.AugmentedMap.__call__, _map.AugmentedMap.pieces)
    base = jiio_latents(model, y, None, cfg, r).x
    with sv.context("precond-1"):
        same = jiio_latents(model, y, None, cfg, r).x
    with sv.context("precond-2"):
        other = jiio_latents(model, y, None, cfg, r).x
    assert (_map.AugmentedMap.__call__, _map.AugmentedMap.pieces) == orig
    torch.testing.assert_close(same, base)
    assert torch.isfinite(other).all() and not torch.allclose(other, base)


def test_every_patched_variant_has_its_context(sv):
    """main() wraps budgets, --trajectory and --direction in ``context(label)``: the patched variants map to their
    patch (before, ``--direction feasible-input`` ran unpatched), the configuration-only ones to no patch."""
    assert isinstance(sv.context("feasible-input"), sv._FeasibleInput)
    assert isinstance(sv.context("precond-2"), sv._Preconditioned) and sv.context("precond-2").clamp == 2.0
    assert all(isinstance(sv.context(v), sv._Null) for v in sv.variants()
               if v != "feasible-input" and not v.startswith("precond-"))


def test_a_decoder_whose_own_solve_does_not_converge_is_called_void(sv) -> None:
    """The fifth round's MNIST seed-0 row came from a decoder whose solve ran to its cap (39.9 of 40) in Adam's
    steps; the script printed it like any other. It now says the comparison is void, from the converged fraction
    or, for caches written before it was kept, from the mean solve length."""
    assert sv.void_reason({"forward_steps": 12.0, "converged_fraction": 1.0}, 40) is None
    assert "void" in sv.void_reason({"forward_steps": 30.0, "converged_fraction": 0.8}, 40)
    assert "void" in sv.void_reason({"forward_steps": 39.9}, 40)
    assert sv.void_reason({"forward_steps": 20.0}, 40) is None


def test_bench_table_does_not_round_a_void_fraction_up_to_the_threshold() -> None:
    """LFW seed 2 converged in 94.8 % of Adam's solves (void, < 95 %) and the table said '95%'."""
    spec = importlib.util.spec_from_file_location("bench_tasks", BENCH.parent / "bench_tasks.py")
    bt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bt)
    rec = {"summary": True, "bench": "datasets", "set": "skimage-lfw-faces", "seed": 2, "decoder_solve_steps": 14.6,
           "adam_objective": 34.77, "adam_seconds": 17.9, "jiio_budget_reaching_adam": 60, "jiio_seconds": 1.9,
           "speedup": 9.44, "best_jiio_objective": 27.65, "void": True, "decoder_converged_fraction": 0.94765625}
    assert "converged in 94.8% of Adam's solves" in bt.markdown([rec])
