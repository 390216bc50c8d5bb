"""Datasets: grids, splits, loading, and bad input."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deq_core import DeqInputError
from deq_inr import (
    audio_data,
    default_input_scale,
    fit,
    grid_coords,
    image_data,
    interpolate_train,
    interpolation_heldout_psnr,
    load_image,
    plot_reconstruction,
    psnr,
    read_wav,
    video_data,
    write_wav,
)


def _png(path, arr):
    import imageio.v3 as iio

    iio.imwrite(path, arr)
    return str(path)


def test_image_split_is_paper_grid_with_full_grid_coords():
    d = image_data("camera", size=16)
    assert d.shape == (16, 16) and d.channels == 1 and d.stride == 2
    train = d.coords[d.train_idx].reshape(8, 8, 2)
    test = d.coords[d.test_idx].reshape(8, 8, 2)
    full = grid_coords((16, 16)).reshape(16, 16, 2)
    torch.testing.assert_close(train, full[::2, ::2])
    torch.testing.assert_close(test, full[1::2, 1::2])
    assert not set(d.train_idx.tolist()) & set(d.test_idx.tolist())
    assert float(d.values.min()) >= -1 and float(d.values.max()) <= 1
    assert default_input_scale(d) == 4.0   # half of 8 training points per side


def test_rgb_bundled_and_gray_and_random_split():
    d = image_data("astronaut", size=12, holdout=0.3)
    assert d.channels == 3 and d.stride is None
    assert len(d.train_idx) == round(0.3 * 144) and len(d.test_idx) == len(d.train_idx)
    assert not set(d.train_idx.tolist()) & set(d.test_idx.tolist())
    assert image_data("astronaut", size=12, gray=True).channels == 1
    assert load_image("text").shape[2] == 1


def test_user_image_path_rgba(tmp_path):
    arr = np.zeros((10, 12, 4), np.uint8)
    arr[..., 0] = 255
    arr[..., 3] = 128
    d = image_data(_png(tmp_path / "a.png", arr), size=None)
    assert d.shape == (10, 12) and d.channels == 3
    torch.testing.assert_close(d.values[:, 0], torch.ones(120))


@pytest.mark.parametrize("bad, match", [
    ("unreadable", "cannot read image"),
    ("one_pixel", "need at least 2x2"),
    ("two_channels", "expected 1 \\(gray\\), 3 \\(RGB\\) or 4 \\(RGBA\\) channels, got 2"),
    ("missing", "neither a file nor a bundled image"),
])
def test_bad_images(tmp_path, bad, match):
    if bad == "unreadable":
        p = tmp_path / "x.png"
        p.write_bytes(b"not an image at all")
    elif bad == "one_pixel":
        p = _png(tmp_path / "one.png", np.zeros((1, 1, 3), np.uint8))
    elif bad == "two_channels":
        p = _png(tmp_path / "la.png", np.zeros((8, 8, 2), np.uint8))
    else:
        p = tmp_path / "nope.png"
    with pytest.raises(DeqInputError, match=match):
        image_data(str(p))


def test_wrong_channel_request_and_holdout_range():
    with pytest.raises(DeqInputError, match="expected 3 channel"):
        image_data("camera", size=8, channels=3)
    for h in (0, 1, 1.5, -0.1):
        with pytest.raises(DeqInputError, match="hold-out fraction must be in \\(0, 1\\)"):
            image_data("camera", size=8, holdout=h)


def test_audio_synth_and_wav_roundtrip(tmp_path):
    d = audio_data(seconds=0.05, sample_rate=8000)
    assert d.kind == "audio" and d.shape == (400,) and d.stride == 2
    assert float(d.values.abs().max()) == pytest.approx(1.0)
    p = str(tmp_path / "a.wav")
    write_wav(p, d.values[:, 0].numpy(), 8000)
    x, rate = read_wav(p)
    assert rate == 8000 and np.abs(x - d.values[:, 0].numpy()).max() < 1e-4
    d2 = audio_data(p, holdout=0.25)
    assert d2.stride == 4 and len(d2.test_idx) == 100
    with pytest.raises(DeqInputError, match="cannot read WAV"):
        read_wav(str(tmp_path / "missing.wav"))


def test_video_bundled_gif():
    d = video_data()
    assert d.kind == "video" and d.shape == (24, 25, 14) and d.channels == 3 and d.in_features == 3
    assert len(d.test_idx) == 0


def test_psnr_clamps_and_maps_to_unit_range():
    t = torch.zeros(10, 1)
    assert psnr(t + 0.2, t) == pytest.approx(20.0)           # 0.1 on [0, 1]
    assert psnr(torch.full((10, 1), 5.0), torch.ones(10, 1)) == float("inf")   # clamped to 1
    assert psnr(t + 0.1, t, kind="audio") == pytest.approx(20.0)


def test_fit_improves_psnr_image_audio_video(monkeypatch):
    from deq_inr import build_model

    d = image_data("camera", size=16)
    m = build_model("imfn-fourier", 2, 1, width=32, input_scale=default_input_scale(d))
    r = fit(m, d, steps=30, lr=1e-2, progress=False, log_every=10)
    assert r.history[-1]["psnr"] > r.history[0]["psnr"] + 1
    assert r.metrics["solver_steps_per_step_late"] == 1.0 and r.metrics["peak_mem_mb"] > 0
    assert {"psnr", "heldout_psnr", "ms_per_step", "peak_mem_mb"} <= set(r.metrics)
    a = audio_data(seconds=0.02)
    ra = fit(build_model("isiren", 1, 1, width=16, input_scale=default_input_scale(a)), a, steps=20, lr=1e-2,
             progress=False, log_every=10)
    assert ra.history[-1]["psnr"] > ra.history[0]["psnr"]
    v = video_data(frames=4)
    clipped = []
    real_clip = torch.nn.utils.clip_grad_value_

    def spy(params, value, *a, **k):
        clipped.append(value)
        return real_clip(params, value, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_value_", spy)
    rv = fit(build_model("mfn-gabor", 3, 3, width=16, input_scale=default_input_scale(v)), v, steps=20, lr=1e-2,
             batch_size=256, grad_clip=0.1, progress=False, log_every=10)
    assert clipped == [0.1] * 20
    assert rv.history[-1]["psnr"] > rv.history[0]["psnr"]


@pytest.mark.parametrize("make, match", [
    (lambda: audio_data(seconds=0), "seconds must be a finite number giving at least 2 samples"),
    (lambda: audio_data(sample_rate=0), "sample_rate must be an int >= 1"),
    (lambda: audio_data(max_samples=-5), "max_samples must be an int >= 0 or None"),
    (lambda: video_data(frames=-1), "frames must be an int >= 0 or None"),
    (lambda: image_data("camera", size=-5), "size must be an int >= 0 or None"),
    (lambda: image_data("camera", size=2.5), "size must be an int >= 0 or None"),
    (lambda: image_data("camera", size=8, holdout="0.25"), "hold-out fraction must be a number"),
    (lambda: grid_coords((0, 3)), "grid shape must be a non-empty tuple of ints >= 1"),
    (lambda: grid_coords((-1, 3)), "grid shape must be a non-empty tuple of ints >= 1"),
    (lambda: load_image(123), "image must be a bundled image name or a file path, got 123"),
    (lambda: load_image("download_all"), "neither a file nor a bundled image"),   # never called: no network
    (lambda: load_image("data_dir"), "neither a file nor a bundled image"),
])
def test_data_constructors_refuse_bad_arguments_by_name(make, match):
    with pytest.raises(DeqInputError, match=match):
        make()


def test_holdout_accepts_numpy_numbers_and_psnr_refuses_an_unknown_kind():
    d = image_data("camera", size=8, holdout=np.float32(0.25))
    assert d.stride == 2
    with pytest.raises(ValueError, match="psnr kind must be one of 'image', 'audio', 'video', got 'audoi'"):
        psnr(torch.zeros(3, 1), torch.zeros(3, 1), kind="audoi")


@given(sides=st.lists(st.integers(2, 12), min_size=1, max_size=3), stride=st.integers(2, 4),
       channels=st.integers(1, 3), coef=st.lists(st.floats(-0.05, 0.05), min_size=4, max_size=4))
def test_interpolation_of_the_training_grid_is_exact_on_affine_signals(sides, stride, channels, coef):
    """On an affine signal every held-out point between training points is interpolated exactly, in 1, 2 and 3
    dimensions and for strides 2-4; a point past the last training sample along an axis takes that sample's
    value (the signal at the clamped coordinate). A swapped axis or a wrong weight breaks it (the coefficients
    differ per axis)."""
    from hypothesis import assume

    from deq_inr._data import _make

    shape = tuple(sides)
    assume(all(m > stride // 2 for m in shape))   # otherwise the split is random, not a grid
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    slope = np.asarray(coef[:len(shape)])
    arr = np.stack([(idx @ slope + coef[3]) * (c + 1) / channels for c in range(channels)], axis=-1)
    data = _make("image", "affine", arr, float(stride) ** -len(shape), 0)
    assert data.stride == stride
    pred = interpolate_train(data)
    assert pred.shape == (len(data.test_idx), channels)
    pos = np.stack(np.unravel_index(data.test_idx.numpy(), shape), axis=1).astype(np.float64)
    last = np.asarray([stride * ((m - 1) // stride) for m in shape], dtype=np.float64)
    clamped = np.minimum(pos, last)
    want = np.stack([(clamped @ slope + coef[3]) * (c + 1) / channels for c in range(channels)], axis=-1)
    assert np.allclose(pred.double().numpy(), want, atol=1e-6)


def test_interpolation_reference_is_reported_and_absent_for_random_splits():
    d = image_data("camera", size=32, holdout=0.25)
    value = interpolation_heldout_psnr(d)
    assert 15 < value < 40
    from deq_inr import build_model

    res = fit(build_model("siren", 2, 1, width=16, layers=1, input_scale=8), d, steps=2, progress=False)
    assert res.metrics["interp_heldout_psnr"] == pytest.approx(value)
    rand = image_data("camera", size=32, holdout=0.3)        # not a regular sub-grid: no interpolation
    assert rand.stride is None and interpolate_train(rand) is None and interpolation_heldout_psnr(rand) is None


@pytest.mark.parametrize("error_max", [None, 0.5])
def test_reconstruction_error_scale_is_fixed_on_request(tmp_path, monkeypatch, error_max):
    """``error_max`` sets the error panel's colour scale (an arrow on the bar when errors exceed it); ``None``
    scales each plot to its own largest error, so a 0.1-error and a 0.3-error model used to look the same."""
    import matplotlib.axes
    import matplotlib.figure

    data = image_data("camera", size=16)
    pred = (data.values + 0.3).clamp(-1, 1)
    pred[0] = torch.where(data.values[0] < 0, 1.0, -1.0)   # one error beyond the fixed scale
    top = float(np.abs(data.as_array(pred) - data.as_array(data.values)).max())
    assert top > 0.5
    seen = {}
    real_imshow, real_colorbar = matplotlib.axes.Axes.imshow, matplotlib.figure.Figure.colorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow",
                        lambda self, X, **kw: seen.setdefault("vmax", []).append(kw.get("vmax")) or
                        real_imshow(self, X, **kw))
    monkeypatch.setattr(matplotlib.figure.Figure, "colorbar",
                        lambda self, im, **kw: seen.update(extend=kw.get("extend")) or real_colorbar(self, im, **kw))
    path = plot_reconstruction(tmp_path / "r.png", data, pred, "t", error_max=error_max)
    assert (tmp_path / "r.png").stat().st_size > 0 and path.endswith("r.png")
    assert seen["vmax"][:2] == [1, 1]   # ground truth and reconstruction on the pixel range
    if error_max is None:
        assert seen["vmax"][2] == pytest.approx(top, rel=1e-6) and seen["extend"] == "neither"
    else:
        assert seen["vmax"][2] == 0.5 and seen["extend"] == "max"
    with pytest.raises(ValueError, match="error_max must be a finite number > 0 or None, got 0"):
        plot_reconstruction(tmp_path / "bad.png", data, pred, error_max=0)


@pytest.mark.parametrize("wide", [True, False])
def test_center_crop_keeps_the_middle_square(tmp_path, wide):
    ramp = (np.arange(8) * 30).astype(np.uint8)
    arr = np.tile(ramp, (4, 1)) if wide else np.tile(ramp[:, None], (1, 4))   # 4 x 8 or 8 x 4
    d = image_data(_png(tmp_path / "r.png", arr), size=4, holdout=None)
    got = d.as_array(d.values) * 255
    want = np.tile(ramp[2:6], (4, 1)) if wide else np.tile(ramp[2:6, None], (1, 4))
    np.testing.assert_allclose(got, want, atol=0.5)


def test_gray_uses_luminance_weights(tmp_path):
    arr = np.zeros((4, 4, 3), np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = 200, 100, 50
    d = image_data(_png(tmp_path / "c.png", arr), size=None, holdout=None, gray=True)
    want = (0.2125 * 200 + 0.7154 * 100 + 0.0721 * 50) / 255
    np.testing.assert_allclose(d.as_array(d.values), want, atol=1e-5)


@pytest.mark.parametrize("width, frames, want", [
    (1, np.array([192, 64, 255, 128], np.uint8), [0.0, (127 / 128) / 2]),       # unsigned, offset 128
    (2, np.array([16384, 3277, -32768, 0], "<i2"), [(0.5 + 0.1) / 2, -0.5]),
    (4, np.array([2**30, -(2**29), 0, 2**31 - 1], "<i4"), [0.125, 0.5]),
])
def test_read_wav_sample_widths_and_stereo_average(tmp_path, width, frames, want):
    import wave

    p = str(tmp_path / "s.wav")
    with wave.open(p, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(width)
        w.setframerate(16000)
        w.writeframes(frames.tobytes())
    x, rate = read_wav(p)
    assert rate == 16000
    np.testing.assert_allclose(x, want, atol=1e-4)


def test_random_split_follows_the_seed_and_its_points_per_side():
    a, b, a2 = (image_data("camera", size=12, holdout=0.3, seed=s) for s in (0, 1, 0))
    assert not torch.equal(a.train_idx, b.train_idx) and torch.equal(a.train_idx, a2.train_idx)
    d = image_data("camera", size=16, holdout=0.3)
    assert d.train_points_per_side() == pytest.approx(16 * math.sqrt(len(d.train_idx) / 256))
    assert default_input_scale(d) == pytest.approx(d.train_points_per_side() / 2)


def test_rendered_text_is_seeded_two_coloured_text_reaching_the_borders():
    from deq_inr import rendered_text

    a, b = rendered_text(0, size=128), rendered_text(1, size=128)
    assert a.shape == (128, 128, 3) and a.dtype == np.float32 and np.array_equal(a, rendered_text(0, size=128))
    assert not np.array_equal(a, b)
    for img in (a, b):
        luma = img @ np.array([0.2125, 0.7154, 0.0721], np.float32)
        bg = np.median(luma)
        ink = np.abs(luma - bg) > 0.2
        assert 0.05 < ink.mean() < 0.6                        # text, not a blank or a filled canvas
        assert ink[:, :8].any() and ink[:, -8:].any()          # lines start left of the canvas and run past it
    with pytest.raises(DeqInputError, match="seed must be an int >= 0"):
        rendered_text(-1)
    with pytest.raises(DeqInputError, match="size must be an int >= 16"):
        rendered_text(0, size=8)


def test_rendered_text_loads_by_name_and_a_bad_name_says_the_form():
    d = image_data("rendered-text-4", size=32)
    assert d.shape == (32, 32) and d.channels == 3 and d.stride == 2
    with pytest.raises(DeqInputError, match="rendered-text-<seed> with an int seed"):
        load_image("rendered-text-x")
    with pytest.raises(DeqInputError, match="rendered text: rendered-text-<seed>"):
        load_image("no-such-image")
