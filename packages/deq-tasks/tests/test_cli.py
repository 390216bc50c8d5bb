"""``deq tasks``: per-task --help generated from the Config, and every bad input is one ``error:`` line, exit 1.

All error paths fail before any training starts, so these tests are fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deq_core import DeqConfigError, save
from deq_tasks import AdversarialTask, GenerativeTask, InverseTask, MetaLearningTask
from deq_tasks.cli import parse_value

TASKS = ("generative", "inverse", "adversarial", "meta-learning")


def _cli(args: list[str]) -> int:
    from deq_core.cli import main

    return main(args)


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("task", TASKS)
def test_help_lists_the_config_options_with_help_and_defaults(task: str, capsys) -> None:
    assert _cli(["tasks", "run", task, "--help"]) == 0
    text = capsys.readouterr().out
    cls = {"generative": GenerativeTask, "inverse": InverseTask, "adversarial": AdversarialTask,
           "meta-learning": MetaLearningTask}[task]
    for opt in cls.options():
        flag = "--" + opt.name.replace("_", "-")
        assert flag in text, flag
        assert opt.help, opt.name          # every option has help text
    assert "--jiio-budget" in text and "[default:" in text and "--checkpoint" in text


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("args, expect", [
    (["--epochs", "-1"], "epochs"),
    (["--steps", "0"], "steps"),
    (["--batch", "0"], "batch"),
    (["--lr", "-1"], "lr"),
    (["--no-such-option", "3"], "no-such-option"),
    (["--jiio-budget", "0"], "budget"),
    (["--jiio-alpha", "nan"], "alpha"),
    (["--seed", "abc"], "integer"),
    (["--jiio-solver", "andersen"], "andersen"),         # checked before any data is read, for every task
    (["--jiio-solver-options", "bogus=1"], "bogus"),
    (["--jiio-x-scale", "inf"], "x_scale"),
])
def test_bad_options_are_one_error_line(task: str, args: list[str], expect: str, tmp_path: Path, capsys) -> None:
    if task == "meta-learning" and args[0] in ("--steps", "--batch", "--epochs"):
        args = [{"--steps": "--meta-steps", "--batch": "--tasks-per-batch", "--epochs": "--meta-steps"}[args[0]],
                args[1]]
        expect = args[0][2:].replace("-", "_")
    if task == "adversarial" and args[0] == "--steps":
        args, expect = ["--pgd-steps", "0"], "pgd_steps"
    assert _cli(["tasks", "run", task, "--out", str(tmp_path / "x"), *args]) == 1
    line = _one_error_line(capsys)
    assert expect in line, line
    assert not (tmp_path / "x").exists()      # nothing ran


def test_unknown_task_and_stray_argument(tmp_path: Path, capsys) -> None:
    assert _cli(["tasks", "run", "generativ"]) == 1
    assert "generative" in _one_error_line(capsys)
    assert _cli(["tasks", "run", "generative", "stray"]) == 1
    _one_error_line(capsys)
    assert _cli(["tasks", "run", "inverse", "--mask", "triangle", "--out", str(tmp_path)]) == 1
    assert "unknown mask 'triangle'" in _one_error_line(capsys)


def test_checkpoint_of_another_model_or_missing_file(tmp_path: Path, capsys) -> None:
    other = tmp_path / "other.safetensors"
    save(other, {"w": torch.zeros(2)}, {"task": "adversarial", "model": "mdeq-classifier"})
    assert _cli(["tasks", "run", "generative", "--checkpoint", str(other), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 1
    line = _one_error_line(capsys)
    assert "mdeq-classifier" in line and "mdeq-decoder" in line
    assert _cli(["tasks", "run", "adversarial", "--checkpoint", str(tmp_path / "none.safetensors")]) == 1
    _one_error_line(capsys)
    not_ckpt = tmp_path / "junk.safetensors"
    not_ckpt.write_bytes(b"not a checkpoint")
    assert _cli(["tasks", "run", "meta-learning", "--checkpoint", str(not_ckpt), "--out", str(tmp_path / "m"),
                 "--no-progress"]) == 1
    _one_error_line(capsys)


def test_bad_data_paths_are_one_error_line(tmp_path: Path, capsys) -> None:
    assert _cli(["tasks", "run", "generative", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 1
    assert "no such file" in _one_error_line(capsys)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 3, 4, 5, 6)))
    assert _cli(["tasks", "run", "inverse", "--data", str(bad), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    assert "shape" in _one_error_line(capsys)
    unlabelled = tmp_path / "x.npz"
    np.savez(unlabelled, x=np.zeros((20, 8, 8)))
    assert _cli(["tasks", "run", "adversarial", "--data", str(unlabelled), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 1
    assert "'y'" in _one_error_line(capsys)
    assert _cli(["tasks", "run", "meta-learning", "--datasets", str(tmp_path / "missing.npz"), "--out",
                 str(tmp_path / "m"), "--no-progress"]) == 1
    line = _one_error_line(capsys)
    assert "missing.npz" in line and "--data " not in line
    assert not (tmp_path / "m").exists()


def test_a_labelled_npz_larger_than_the_default_split_runs_to_its_first_training_step(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    """2 500 labelled images crashed both labelled tasks with a shape-mismatch traceback before any training."""
    import deq_tasks.adversarial as adv

    rng = np.random.default_rng(0)
    big = tmp_path / "big.npz"
    np.savez(big, x=rng.integers(0, 255, (2500, 10, 10), dtype=np.uint8), y=rng.integers(0, 3, 2500))

    class Reached(Exception):
        pass

    def stop(model, X, Y, mode, cfg, **kw):
        assert len(X) + 500 == 2500 and int(Y.max()) == 2      # every image read, split 2 000 / 500
        raise Reached

    monkeypatch.setattr(adv, "train_classifier", stop)
    with pytest.raises(Reached):
        AdversarialTask(data=str(big)).run(tmp_path / "o", progress=False)


def test_a_checkpoint_keeps_its_latent_size_and_refuses_another(tmp_path: Path) -> None:
    from deq_core import DeqInputError
    from deq_tasks.generative import MODEL_KIND, _decoder_hparams, build_decoder

    model = build_decoder(size=8, latent_dim=16, channels=(4, 8))
    path = tmp_path / "d.safetensors"
    GenerativeTask(data="digits").save_checkpoint(path, model, MODEL_KIND, _decoder_hparams(model))
    assert GenerativeTask(data="digits").load_decoder(path).latent_dim == 16
    with pytest.raises(DeqInputError, match="16 latent dimensions, --latent-dim is 8"):
        GenerativeTask(data="digits", latent_dim=8).load_decoder(path)


def test_parse_value_types() -> None:
    from collections.abc import Mapping

    assert parse_value("3", int) == 3 and parse_value("0.5", float) == 0.5 and parse_value("none", float | None) is None
    assert parse_value("16,24", tuple[int, int]) == (16, 24) and parse_value("20,40", tuple[int, ...]) == (20, 40)
    assert parse_value("m=30,adaptive=false", Mapping) == {"m": 30, "adaptive": False}
    assert parse_value("alpha", float | str | None) == "alpha"
    for text, tp in (("x", int), ("1,2,3", tuple[int, int]), ("maybe", bool), ("m30", Mapping)):
        with pytest.raises(DeqConfigError):
            parse_value(text, tp)


def test_task_objects_validate_options_before_running() -> None:
    with pytest.raises(DeqConfigError, match="did you mean 'steps'"):
        GenerativeTask(stepz=3)
    with pytest.raises(DeqConfigError):
        InverseTask(jiio_warmup=50, jiio_budget=10)
    assert GenerativeTask(jiio_alpha=0.05).config.jiio.alpha == 0.05
    from deq_tasks.generative import DECODER_JIIO

    nested = GenerativeTask(jiio=DECODER_JIIO.replace(tangent_step=True), jiio_budget=30).config.jiio
    assert nested.tangent_step and nested.budget == 30            # a nested config object, then field overrides
    assert AdversarialTask(jiio_solver="anderson", jiio_solver_options={"m": 5}).config.jiio.make_solver().m == 5
    with pytest.raises(Exception, match="andersen"):
        AdversarialTask(jiio_solver="andersen")


def test_headline_of_a_third_party_task_is_its_top_level_scalars() -> None:
    """``deq tasks run`` printed ``{}`` for a plugin's task: the headline only knew deq-tasks' own keys."""
    from deq_tasks.cli import _headline

    plugin = {"loss": 0.004, "steps": 60, "from_checkpoint": False, "note": None, "curve": [1.0, 0.5], "extra": {}}
    assert _headline(plugin) == {"loss": 0.004, "steps": 60, "from_checkpoint": False, "note": None}
    own = {"task": "inverse", "psnr_jiio": 20.0, "steps": 60, "curve": [1.0]}
    assert _headline(own) == {"task": "inverse", "psnr_jiio": 20.0}   # deq-tasks' own keys only, as before
