"""Adversarial task: L2 projection, PGD-20 baseline, JIO attack, error cases, a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from deq_core import DeqConfigError, DeqInputError
from deq_tasks.adversarial import (
    ADVERSARIAL_JIO,
    AdversarialConfig,
    AdversarialTask,
    adversarial_loss,
    jio_attack,
    pgd_attack,
    project_l2,
)
from deq_tasks.jiio import JIIOConfig
from deq_tasks.models.classifier import MDEQClassifier


@pytest.fixture(scope="module")
def trained():
    """A tiny MDEQ classifier fitted for a few steps on 64 real digits (so that attacks have something to break)."""
    from deq_core import registry
    from deq_tasks.data import load_labelled

    torch.manual_seed(0)
    Xtr, Ytr, _, _, _ = load_labelled("mnist", size=28, n_train=64, n_test=16, seed=0)
    model = MDEQClassifier(channels=(4, 6), groups=2, solver=registry.get_solver("anderson", m=5), max_steps=10,
                           backward_steps=10)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(8):
        loss = F.cross_entropy(model(Xtr), Ytr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, Xtr[:8], Ytr[:8]


@pytest.mark.parametrize("eps", [0.1, 1.0, 3.0])
def test_project_l2_stays_in_ball_and_keeps_inside_points(eps):
    g = torch.Generator().manual_seed(1)
    d = torch.randn(16, 1, 28, 28, generator=g) * torch.logspace(-3, 1, 16).view(-1, 1, 1, 1)
    p = project_l2(d, eps)
    norms, orig = p.flatten(1).norm(dim=1), d.flatten(1).norm(dim=1)
    assert bool((norms <= eps * (1 + 1e-6)).all())
    inside = orig <= eps
    assert bool(inside.any()) and bool((~inside).any())
    torch.testing.assert_close(p[inside], d[inside])  # points inside are unchanged
    torch.testing.assert_close(norms[~inside], torch.full_like(norms[~inside], eps))  # others land on the sphere
    # direction preserved
    cos = F.cosine_similarity(p.flatten(1), d.flatten(1), dim=1)
    torch.testing.assert_close(cos, torch.ones_like(cos))


def test_pgd_stays_in_ball_and_increases_loss(trained):
    model, u, y = trained
    delta = pgd_attack(model, u, y, eps=1.0, steps=4, lr=0.2)
    assert bool((delta.flatten(1).norm(dim=1) <= 1.0 + 1e-5).all())
    clean, _ = adversarial_loss(model, u, torch.zeros_like(u), y)
    adv, _ = adversarial_loss(model, u, delta, y)
    assert float(adv.mean()) > float(clean.mean()) + 0.05


def test_jio_feasible_and_increases_loss(trained):
    model, u, y = trained
    delta, res = jio_attack(model, u, y, 1.0, JIIOConfig(budget=25, alpha=0.6, alpha_final=0.2, switch_at=15,
                                                     normalized_step=True, solver_options={"m": 10}))
    assert bool((delta.flatten(1).norm(dim=1) <= 1.0 + 1e-5).all())
    assert set(res.kkt) == {"z", "mu", "x"} and res.kkt["z"].shape == (8,)
    clean, _ = adversarial_loss(model, u, torch.zeros_like(u), y)
    adv, _ = adversarial_loss(model, u, delta, y)  # scored on a re-solved equilibrium at u + delta*
    assert float(adv.mean()) > float(clean.mean()) + 0.05
    # the attack used most of the budget of the ball
    assert float(delta.flatten(1).norm(dim=1).mean()) > 0.5


@pytest.mark.parametrize("eps", [0.0, -1.0, float("nan"), float("inf")])
def test_nonpositive_eps_is_a_clear_error(trained, eps):
    model, u, y = trained
    for call in (lambda: project_l2(u, eps), lambda: pgd_attack(model, u, y, eps=eps, steps=1),
                 lambda: jio_attack(model, u, y, eps, ADVERSARIAL_JIO.with_budget(2)),
                 lambda: AdversarialConfig(eps=eps)):
        with pytest.raises(DeqConfigError, match="eps"):
            call()


def test_bad_inputs_are_clear_errors(trained):
    model, u, y = trained
    with pytest.raises(DeqInputError, match="labels"):
        pgd_attack(model, u, y[:3], eps=1.0, steps=1)
    with pytest.raises(DeqInputError, match=r"\(B, 1, 28, 28\)"):
        jio_attack(model, u[:, :, :14], y, 1.0, ADVERSARIAL_JIO.with_budget(2))
    with pytest.raises(DeqConfigError, match="step size"):
        jio_attack(model, u, y, 1.0, ADVERSARIAL_JIO.replace(alpha=-0.1))
    with pytest.raises(DeqConfigError, match="lr"):
        pgd_attack(model, u, y, eps=1.0, steps=1, lr=0.0)
    with pytest.raises(DeqConfigError, match="no option 'epsilon'"):
        AdversarialTask(epsilon=1.0)


TINY = dict(n_train=16, n_test=8, batch=16, channels=(4, 6), jiio_budget=6, jiio_switch_at=4, eval_budgets=(3,),
            pgd_steps=2, max_steps=6, backward_steps=6, epochs=1)


def test_tiny_run_writes_metrics_png_and_loadable_checkpoints(tmp_path):
    metrics = AdversarialTask(**TINY).run(tmp_path, progress=False)
    table = metrics["accuracy"]
    assert set(table) == {"clean", "pgd", "jio"} and all(set(r) == {"clean", "pgd", "jio"} for r in table.values())
    assert json.loads((tmp_path / "metrics.json").read_text())["accuracy"] == table
    assert (tmp_path / "adversarial_examples.png").stat().st_size > 1000 and (tmp_path / "training.png").is_file()
    cmp = metrics["comparison"]
    assert [r["budget"] for r in cmp["jio"]["per_budget"]] == [3, 6] and len(cmp["pgd"]["loss_per_step"]) == 3
    assert "jio_reaches_pgd_loss" in cmp["speedup"]
    # a later run can start from the saved clean model
    again = AdversarialTask(**TINY).run(tmp_path / "again", checkpoint=tmp_path / "classifier_clean.safetensors",
                                        progress=False)
    assert again["checkpoint"].endswith("classifier_clean.safetensors")
    assert again["accuracy"]["clean"]["clean"] == table["clean"]["clean"]


def test_labelled_npz_data(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path / "xy.npz"
    np.savez(path, x=rng.integers(0, 255, (30, 16, 16), dtype=np.uint8), y=rng.integers(0, 3, 30))
    metrics = AdversarialTask(**{**TINY, "n_test": 6, "n_train": 24}, data=str(path)).run(tmp_path / "o",
                                                                                          progress=False)
    assert metrics["data"]["n_classes"] == 3 and metrics["data"]["decoder_size"] == 28


def test_config_rejects_unknown_jio_solver() -> None:
    from deq_core import UnknownNameError

    with pytest.raises(UnknownNameError, match="andersen"):
        AdversarialConfig(jiio=ADVERSARIAL_JIO.replace(solver="andersen"))


def test_jio_plain_iteration_attack_stays_in_ball_and_raises_loss(trained) -> None:
    """The task's default JIO (plain damped iteration, no Anderson) is a valid attack: inside the eps-ball and
    at least as strong as no perturbation, on every sample."""
    model, u, y = trained
    delta, res = jio_attack(model, u, y, 1.0, ADVERSARIAL_JIO.replace(budget=25, switch_at=15))
    assert float(delta.flatten(1).norm(dim=1).max()) <= 1.0 + 1e-5
    clean, _ = adversarial_loss(model, u, torch.zeros_like(u), y)
    adv, _ = adversarial_loss(model, u, delta, y)
    assert bool((adv >= clean - 1e-6).all()), (adv, clean)


def test_scoring_and_training_run_the_attack_they_are_given(trained, monkeypatch) -> None:
    """``robust_accuracy`` and ``train_classifier`` dispatch to PGD / JIO (either could score clean accuracy with
    every test green)."""
    import deq_tasks.adversarial as adv

    model, u, y = trained
    calls: list[str] = []
    monkeypatch.setattr(adv, "pgd_attack", lambda m, u, y, eps, **kw: calls.append("pgd") or torch.zeros_like(u))
    monkeypatch.setattr(adv, "jio_attack",
                        lambda m, u, y, eps, cfg, **kw: calls.append("jio") or (torch.zeros_like(u), None))
    cfg = AdversarialConfig(batch=4, channels=(4, 6))
    for attack in ("clean", "pgd", "jio"):
        calls.clear()
        adv.robust_accuracy(model, u, y, attack, cfg)
        assert calls == ([] if attack == "clean" else [attack, attack]), (attack, calls)   # two batches of 4
    import copy

    for mode in ("pgd", "jio"):
        calls.clear()
        adv.train_classifier(copy.deepcopy(model), u, y, mode, cfg, epochs=1)
        assert calls == [mode, mode], (mode, calls)


def test_jio_reports_the_boundary_and_takes_the_tangent_step(trained) -> None:
    """JIO's projection is the engine's L2 ball, so its boundary statistics and ``tangent_step`` act (a plain
    lambda projection made them None and a no-op)."""
    model, u, y = trained
    cfg = ADVERSARIAL_JIO.replace(budget=8, switch_at=5)
    delta, res = jio_attack(model, u, y, 1.0, cfg)
    assert res.stats["boundary"] is not None and 0.0 <= res.stats["boundary"] <= 1.0
    assert res.stats["boundary"] == float((delta.flatten(1).norm(dim=1) >= 1.0 - 1e-4).float().mean())
    assert res.stats["boundary"] > 0           # the normalized step at alpha 1 reaches the sphere
    d_tangent, _ = jio_attack(model, u, y, 1.0, cfg.replace(tangent_step=True))
    assert float((d_tangent - delta).abs().max()) > 1e-3


def test_loss_scale_acts_without_the_normalized_step(trained) -> None:
    """With the normalized step (the default) the step direction is scale-free; without it ``loss_scale`` scales
    the input gradient, so the attack changes."""
    model, u, y = trained
    cfg = ADVERSARIAL_JIO.replace(budget=3, normalized_step=False, alpha=0.01)
    d1, _ = jio_attack(model, u, y, 1.0, cfg, loss_scale=1.0)
    d10, _ = jio_attack(model, u, y, 1.0, cfg, loss_scale=10.0)
    assert float((d1 - d10).abs().max()) > 1e-4


def test_example_grid_draws_a_single_example(tmp_path) -> None:
    """``--batch 1`` / ``--n-test 1``: the grid of one column used to raise IndexError after all the training."""
    from deq_tasks.adversarial import _example_grid

    u = torch.rand(1, 1, 28, 28)
    preds = {k: torch.zeros(1, dtype=torch.long) for k in ("clean", "pgd", "jio")}
    _example_grid(u, 0.1 * u, -0.1 * u, tmp_path / "one.png", preds)
    assert (tmp_path / "one.png").stat().st_size > 500
