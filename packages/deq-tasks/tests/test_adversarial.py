"""Adversarial task: L2 projection, PGD-20 baseline, JIO attack, error cases, a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from deq_core import DeqConfigError, DeqInputError
from deq_tasks.adversarial import (
    AdversarialConfig,
    AdversarialTask,
    adversarial_loss,
    jio_attack,
    pgd_attack,
    project_l2,
    run,
)
from deq_tasks.models.classifier import MDEQClassifier


@pytest.fixture(scope="module")
def trained():
    """A tiny MDEQ classifier fitted for a few steps on 64 real digits (so that attacks have something to break)."""
    from deq_tasks._adv_meta_utils import load_mnist, make_solver

    torch.manual_seed(0)
    Xtr, Ytr, _, _ = load_mnist(64, 16, seed=0)
    model = MDEQClassifier(channels=(4, 6), groups=2, solver=make_solver("anderson", m=5), max_steps=10,
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
    delta, res = jio_attack(model, u, y, eps=1.0, budget=25, switch_at=15, m=10)
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
                 lambda: jio_attack(model, u, y, eps=eps, budget=2), lambda: AdversarialConfig(eps=eps)):
        with pytest.raises(DeqConfigError, match="eps"):
            call()


def test_bad_inputs_are_clear_errors(trained):
    model, u, y = trained
    with pytest.raises(DeqInputError, match="labels"):
        pgd_attack(model, u, y[:3], eps=1.0, steps=1)
    with pytest.raises(DeqInputError, match=r"\(B, 1, 28, 28\)"):
        jio_attack(model, u[:, :, :14], y, eps=1.0, budget=2)
    with pytest.raises(DeqConfigError, match="step size"):
        jio_attack(model, u, y, eps=1.0, budget=2, alpha=-0.1)
    with pytest.raises(DeqConfigError, match="lr"):
        pgd_attack(model, u, y, eps=1.0, steps=1, lr=0.0)
    with pytest.raises(DeqConfigError, match="unknown adversarial options"):
        AdversarialTask(epsilon=1.0)


def test_tiny_run_writes_metrics_png_and_loadable_checkpoints(tmp_path):
    cfg = dict(quick=True, n_train=16, n_test=8, batch_size=16, channels=(4, 6), jio_budget=6, jio_switch_at=4,
               pgd_steps=2, max_steps=6, backward_steps=6, jac_reg=0.0)
    metrics = run(cfg, tmp_path, progress=False)
    table = metrics["accuracy"]
    assert set(table) == {"clean", "pgd", "jio"} and all(set(r) == {"clean", "pgd", "jio"} for r in table.values())
    assert json.loads((tmp_path / "metrics.json").read_text())["accuracy"] == table
    assert (tmp_path / "adversarial_examples.png").stat().st_size > 1000
    # a later run can start from the saved clean model
    again = AdversarialTask(**cfg).run(tmp_path / "again", checkpoint=tmp_path / "classifier_clean.safetensors",
                                       progress_bar=False)
    assert again["checkpoint"].endswith("classifier_clean.safetensors")
    assert again["accuracy"]["clean"]["clean"] == table["clean"]["clean"]


def test_config_rejects_unknown_jio_solver() -> None:
    from deq_core import UnknownNameError

    with pytest.raises(UnknownNameError, match="andersen"):
        AdversarialConfig(jio_solver="andersen")


def test_jio_plain_iteration_attack_stays_in_ball_and_raises_loss(trained) -> None:
    """The task's default JIO (plain damped iteration, no Anderson) is a valid attack: inside the eps-ball and
    at least as strong as no perturbation, on every sample."""
    model, u, y = trained
    delta, res = jio_attack(model, u, y, eps=1.0, budget=25, alpha=1.0, alpha_final=0.1, switch_at=15,
                            solver="fixed-point")
    assert float(delta.flatten(1).norm(dim=1).max()) <= 1.0 + 1e-5
    clean, _ = adversarial_loss(model, u, torch.zeros_like(u), y)
    adv, _ = adversarial_loss(model, u, delta, y)
    assert bool((adv >= clean - 1e-6).all()), (adv, clean)
