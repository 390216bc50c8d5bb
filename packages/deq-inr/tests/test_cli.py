"""``deq inr fit`` / ``deq inr render`` end to end on tiny data, and bad input (one line, non-zero exit)."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from deq_inr._cli import inr

TINY = ["--steps", "3", "--width", "16", "--size", "16", "--no-progress"]
TINY_MEDIA = ["--steps", "3", "--width", "16", "--no-progress"]   # --size is for images only


def _run(args):
    res = CliRunner().invoke(inr, args, catch_exceptions=False)
    return res


def _one_line_error(res, match):
    assert res.exit_code != 0
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert match in lines[0], lines[0]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    res = _run(["fit", "--model", "imfn-gabor", "--image", "camera", "--out", str(out), *TINY])
    assert res.exit_code == 0, res.output
    assert "(linear interpolation of the training points: " in res.output   # the floor, beside held-out
    return out


def test_fit_writes_metrics_pngs_checkpoint(fitted):
    m = json.loads((fitted / "metrics.json").read_text())
    assert {"psnr", "heldout_psnr", "ms_per_step", "peak_mem_mb", "train_psnr", "history",
            "interp_heldout_psnr"} <= set(m)
    assert 10 < m["interp_heldout_psnr"] < 60          # the bilinear-interpolation floor, on the same pixels
    assert m["model"] == "imfn-gabor" and m["input_scale"] == 4.0 and m["data"]["shape"] == [16, 16]
    for f in ("reconstruction.png", "psnr_curve.png", "model.safetensors"):
        assert (fitted / f).stat().st_size > 1000


def test_render_loads_checkpoint(fitted, tmp_path):
    res = _run(["render", str(fitted / "model.safetensors"), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    import imageio.v3 as iio

    from deq_inr import grid_coords, load_checkpoint

    img = iio.imread(tmp_path / "render.png")
    assert img.shape[:2] == (16, 16)
    info = json.loads((tmp_path / "render.json").read_text())
    assert info["model"]["model"] == "imfn-gabor"
    model, _ = load_checkpoint(fitted / "model.safetensors")   # the pixels are the model's, on the full grid
    want = ((model.predict(grid_coords((16, 16)))[:, 0].reshape(16, 16).numpy() + 1) / 2).clip(0, 1)
    got = (img[..., 0] if img.ndim == 3 else img) / 255.0
    assert np.abs(got - want).max() <= 2 / 255   # 8-bit, through the gray colormap's 256-entry table


def test_render_audio_writes_the_models_waveform(tmp_path):
    from deq_inr import grid_coords, load_checkpoint, read_wav

    res = _run(["fit", "--model", "imfn-fourier", "--audio", "--out", str(tmp_path / "a"), *TINY_MEDIA])
    assert res.exit_code == 0, res.output
    res = _run(["render", str(tmp_path / "a" / "model.safetensors"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    wav, rate = read_wav(str(tmp_path / "r" / "render.wav"))
    model, cfg = load_checkpoint(tmp_path / "a" / "model.safetensors")
    want = model.predict(grid_coords(tuple(cfg["data"]["shape"])))[:, 0].clamp(-1, 1).numpy()
    assert rate == cfg["data"]["sample_rate"] and wav.shape == want.shape
    assert np.abs(wav - want).max() <= 2 / 32767


def test_render_accepts_a_sized_name_of_the_checkpoints_model_and_refuses_another_size(tmp_path):
    small = ["--steps", "1", "--size", "8", "--no-progress"]
    assert _run(["fit", "--model", "isiren-1l-512d", "--out", str(tmp_path / "f"), *small]).exit_code == 0
    ckpt = str(tmp_path / "f" / "model.safetensors")
    assert _run(["render", ckpt, "--out", str(tmp_path / "r"), "--model", "isiren-1l-512d"]).exit_code == 0
    assert _run(["render", ckpt, "--out", str(tmp_path / "r"), "--model", "isiren"]).exit_code == 0
    _one_line_error(_run(["render", ckpt, "--out", str(tmp_path / "r"), "--model", "isiren-1l-256d"]),
                    "holds model 'isiren 1L-512D', not 'isiren-1l-256d'")


def test_render_refuses_checkpoints_without_a_usable_data_description(tmp_path):
    from deq_core import save
    from deq_inr import build_model, save_checkpoint

    m = build_model("mfn-fourier", 2, 1, width=8)
    save_checkpoint(tmp_path / "nodata.safetensors", m)
    _one_line_error(_run(["render", str(tmp_path / "nodata.safetensors"), "--out", str(tmp_path / "o")]),
                    "no data description to render on")
    save_checkpoint(tmp_path / "shape3.safetensors", m, {"kind": "video", "shape": [2, 4, 4]})
    _one_line_error(_run(["render", str(tmp_path / "shape3.safetensors"), "--out", str(tmp_path / "o")]),
                    "does not fit a model with 2-D coordinates")
    save_checkpoint(tmp_path / "kind.safetensors", m, {"kind": "imgae", "shape": [4, 4]})
    _one_line_error(_run(["render", str(tmp_path / "kind.safetensors"), "--out", str(tmp_path / "o")]),
                    "data 'imgae' of shape [4, 4]")
    save(tmp_path / "nomodel.safetensors", m, {"format": "deq-inr/1", "data": {"kind": "image", "shape": [4, 4]}})
    _one_line_error(_run(["render", str(tmp_path / "nomodel.safetensors"), "--out", str(tmp_path / "o")]),
                    "has no model description")


def test_render_reproduces_fit_prediction(fitted):
    from deq_inr import image_data, load_checkpoint, psnr

    model, cfg = load_checkpoint(fitted / "model.safetensors")
    d = image_data("camera", size=16)
    assert psnr(model.predict(d.coords), d.values) == pytest.approx(cfg["metrics"]["psnr"], abs=1e-4)


def test_render_wrong_model_and_foreign_checkpoints(fitted, tmp_path):
    _one_line_error(_run(["render", str(fitted / "model.safetensors"), "--out", str(tmp_path), "--model", "isiren"]),
                    "holds model 'imfn-gabor 1L-16D', not 'isiren'")
    import torch

    from deq_core import save

    save(tmp_path / "other.safetensors", torch.nn.Linear(2, 2), {"solver": "anderson"})
    _one_line_error(_run(["render", str(tmp_path / "other.safetensors"), "--out", str(tmp_path)]),
                    "not a deq-inr model checkpoint")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    _one_line_error(_run(["render", str(tmp_path / "junk.safetensors"), "--out", str(tmp_path)]),
                    "cannot be read as safetensors")
    _one_line_error(_run(["render", str(tmp_path / "none.safetensors"), "--out", str(tmp_path)]), "does not exist")


def test_audio_and_video_end_to_end(tmp_path):
    res = _run(["fit", "--model", "isiren", "--audio", "--out", str(tmp_path / "a"), *TINY_MEDIA])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a" / "reconstruction.wav").exists() and (tmp_path / "a" / "reconstruction.png").exists()
    res = _run(["fit", "--model", "mfn-fourier", "--video", "--out", str(tmp_path / "v"), *TINY_MEDIA])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert m["data"]["kind"] == "video" and m["heldout_psnr"] is None
    res = _run(["render", str(tmp_path / "v" / "model.safetensors"), "--out", str(tmp_path / "vr")])
    assert res.exit_code == 0 and (tmp_path / "vr" / "render.png").exists()


def test_siren_classic_and_explicit(tmp_path):
    res = _run(["fit", "--model", "siren", "--no-injection", "--image", "text", "--out", str(tmp_path), *TINY])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "metrics.json").read_text())["config"]["injection"] is False


@pytest.mark.parametrize("kind, match", [
    ("unreadable", "cannot read image"),
    ("one_pixel", "need at least 2x2"),
    ("channels", "channels, got 2"),
    ("holdout", "--holdout must be in (0, 1)"),
    ("holdout_zero", "--holdout must be in (0, 1)"),
])
def test_fit_bad_input_one_line(tmp_path, kind, match):
    import imageio.v3 as iio

    img, extra = "camera", []
    if kind == "unreadable":
        img = str(tmp_path / "bad.png")
        (tmp_path / "bad.png").write_text("garbage")
    elif kind == "one_pixel":
        img = str(tmp_path / "one.png")
        iio.imwrite(img, np.zeros((1, 1), np.uint8))
    elif kind == "channels":
        img = str(tmp_path / "two.png")
        iio.imwrite(img, np.zeros((6, 6, 2), np.uint8))
    elif kind == "holdout":
        extra = ["--holdout", "1.5"]
    else:
        extra = ["--holdout", "0"]
    res = _run(["fit", "--model", "isiren", "--image", img, "--out", str(tmp_path / "o"), *TINY, *extra])
    _one_line_error(res, match)
    assert not os.path.exists(tmp_path / "o" / "metrics.json")


def test_deq_console_script_has_inr_command(tmp_path, capsys):
    from deq_core import cli as cli_mod

    code = cli_mod.main(["inr", "fit", "--model", "isiren", "--image", "nonexistent-image", "--out", str(tmp_path),
                         *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("error: image 'nonexistent-image' is neither a file nor a bundled image"), err


@pytest.mark.parametrize("args, match", [
    (["--model", "mfn-fourier", "--solver", "anderson"], "takes no option solver (an explicit model)"),
    (["--model", "siren", "--neumann-terms", "2"], "takes no option neumann_terms"),
    (["--model", "mfn-gabor", "--no-amortize"], "takes no option amortize"),
    (["--model", "isiren", "--no-injection"], "injection=False is for model 'siren' only"),
    (["--model", "isiren", "--holdout", "0.25", "--no-holdout"], "--holdout P or --no-holdout, not both"),
    (["--model", "isiren", "--audio", "--size", "32"], "--size is for images"),
    (["--model", "isiren", "--neumann-terms", "-1"], "--neumann-terms"),
    (["--model", "isiren", "--seed", "-1"], "--seed"),
    (["--model", "isiren", "--image", "camera", "--audio"], "give only one of --image, --audio, --video"),
])
def test_fit_refuses_options_that_would_be_ignored_or_are_bad(tmp_path, args, match):
    res = _run(["fit", *args, "--out", str(tmp_path / "o"), "--steps", "1", "--width", "8", "--no-progress"])
    assert res.exit_code != 0 and match in res.output, res.output
    assert not os.path.exists(tmp_path / "o" / "metrics.json")


def test_fit_without_holdout_says_so_and_a_bad_out_fails_before_training(tmp_path, monkeypatch):
    import deq_inr._fit as fit_mod

    res = _run(["fit", "--model", "mfn-fourier", "--no-holdout", "--out", str(tmp_path / "n"), *TINY])
    assert res.exit_code == 0 and "held-out n/a (no hold-out)" in res.output, res.output
    (tmp_path / "afile").write_text("x")
    seen = []
    real = fit_mod.fit
    monkeypatch.setattr(fit_mod, "fit", lambda *a, **k: seen.append(1) or real(*a, **k))
    res = _run(["fit", "--model", "mfn-fourier", "--out", str(tmp_path / "afile" / "sub"), *TINY])
    _one_line_error(res, "afile")
    assert seen == []   # it failed before any training


def test_sized_model_and_arch(tmp_path):
    small = ["--steps", "2", "--size", "8", "--no-progress"]
    res = _run(["fit", "--model", "isiren-1l-512d", "--out", str(tmp_path / "s"), *small])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "s" / "metrics.json").read_text())["config"]
    assert (cfg["layers"], cfg["width"], cfg["solver"]) == (1, 512, "fixed-point")
    res = _run(["fit", "--model", "mfn-fourier", "--arch", "1L-512D", "--out", str(tmp_path / "a"), *small])
    assert res.exit_code == 0 and json.loads((tmp_path / "a" / "metrics.json").read_text())["width"] == 512
    _one_line_error(_run(["fit", "--model", "siren", "--arch", "4L-256D", "--width", "16", "--out",
                          str(tmp_path / "b"), *small]), "contradicts")


def test_fit_options_reach_the_model_and_the_training(tmp_path, monkeypatch):
    import deq_inr._fit as fit_mod

    seen = {}
    real = fit_mod.fit
    monkeypatch.setattr(fit_mod, "fit", lambda *a, **k: seen.update(k) or real(*a, **k))
    out = tmp_path / "o"
    res = _run(["fit", "--model", "isiren", "--out", str(out), *TINY, "--lr", "0.01", "--input-scale", "3",
                "--reuse-steps", "0", "--neumann-terms", "inf", "--batch-size", "20", "--seed", "3"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["lr"] == 0.01 and m["seed"] == 3 and seen["batch_size"] == 20 and seen["seed"] == 3
    cfg = m["config"]
    assert cfg["input_scale"] == 3.0 and cfg["reuse_steps"] == 0 and cfg["neumann_terms"] is None


def test_render_audio_keeps_the_clips_sample_rate(tmp_path):
    from deq_inr import read_wav, synth_audio, write_wav

    clip = str(tmp_path / "c.wav")
    write_wav(clip, synth_audio(seconds=0.02, sample_rate=16000), 16000)
    res = _run(["fit", "--model", "imfn-fourier", "--audio", clip, "--out", str(tmp_path / "a"), *TINY_MEDIA])
    assert res.exit_code == 0, res.output
    res = _run(["render", str(tmp_path / "a" / "model.safetensors"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    wav, rate = read_wav(str(tmp_path / "r" / "render.wav"))
    assert rate == 16000 and wav.shape == (320,)
