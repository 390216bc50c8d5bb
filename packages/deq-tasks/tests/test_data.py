"""The user's own images (``--data PATH``): formats, sizes, value ranges, what the metrics record."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deq_core import DeqConfigError, DeqInputError
from deq_tasks.data import load_images, load_labelled, read_labelled


def test_digits_default_split_fits_its_1797_images() -> None:
    d = load_images("digits")
    assert (len(d.train_x), len(d.test_x)) == (1597, 200) and d.size == 8 and d.train_y is not None
    big = load_images("digits", size=12)
    assert big.size == 12 and big.preprocessing["padded"] and float(big.train_x[0, 0, 0, 0]) == -1.0


def test_arrays_of_any_layout_and_range(tmp_path) -> None:
    rng = np.random.default_rng(0)
    cases = {
        "nhwc.npy": rng.integers(0, 255, (25, 9, 9, 3), dtype=np.uint8),           # colour, channels last
        "nchw.npy": rng.random((25, 1, 40, 40)),                                    # floats in [0, 1], large
        "wide.npy": 1000.0 * rng.standard_normal((25, 6, 30)),                       # any range, not square
        "u16.npy": rng.integers(0, 65535, (25, 8, 8), dtype=np.uint16),
    }
    for name, arr in cases.items():
        np.save(tmp_path / name, arr)
        d = load_images(str(tmp_path / name))
        assert float(d.train_x.min()) >= -1 and float(d.train_x.max()) <= 1, name
        assert d.size % 4 == 0 and d.size <= 32 and d.preprocessing["n_images"] == 25, name
    assert load_images(str(tmp_path / "nchw.npy")).preprocessing["resized"]            # 40 -> 32
    assert "min-max" in load_images(str(tmp_path / "wide.npy")).preprocessing["values"]
    np.savez(tmp_path / "imgs.npz", images=cases["nhwc.npy"])
    assert load_images(str(tmp_path / "imgs.npz")).preprocessing["color_to_gray"]


def test_one_image_file_is_cut_into_patches(tmp_path) -> None:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 96, 4), dtype=np.uint8), mode="RGBA").save(tmp_path / "photo.png")
    d = load_images(str(tmp_path / "photo.png"))
    assert d.preprocessing["n_images"] == 24 and d.size == 16                           # (64 / 16) x (96 / 16)
    assert load_images(str(tmp_path / "photo.png"), size=32).preprocessing["n_images"] == 6


def test_bad_paths_and_sizes(tmp_path) -> None:
    with pytest.raises(DeqInputError, match="no such file"):
        load_images(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeqInputError, match="no image files"):
        load_images(str(tmp_path / "empty"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DeqInputError, match="unsupported"):
        load_images(str(tmp_path / "x.txt"))
    with pytest.raises(DeqConfigError, match="multiple of 4"):
        load_images("digits", size=10)
    np.save(tmp_path / "few.npy", np.zeros((3, 8, 8)))
    with pytest.raises(DeqConfigError, match="cannot split"):
        load_images(str(tmp_path / "few.npy"), n_train=5)


def test_labelled_npz_pairs_images_with_labels(tmp_path) -> None:
    x = np.zeros((30, 12, 12), dtype=np.float32)
    y = np.arange(30) % 3
    x[np.arange(30), 0, 0] = y / 2.0            # the label is written into a pixel
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    xtr, ytr, xte, yte, info = load_labelled(str(tmp_path / "xy.npz"), size=12, n_test=6)
    assert info["n_classes"] == 3 and xtr.shape == (24, 1, 12, 12)
    # after the shuffle and split the pixel still says which label goes with the image
    assert np.allclose(xtr[:, 0, 0, 0].numpy() * 2.0, ytr.numpy(), atol=1e-5)
    assert np.allclose(xte[:, 0, 0, 0].numpy() * 2.0, yte.numpy(), atol=1e-5)
    np.savez(tmp_path / "bad.npz", x=x, y=y[:5])
    with pytest.raises(DeqInputError, match="one integer label per image"):
        load_labelled(str(tmp_path / "bad.npz"), size=12)


def test_labelled_npz_of_more_images_than_the_default_train_cap(tmp_path) -> None:
    """2 500 labelled images used to crash (the pairing went through a 2 000-image split); every image is read."""
    n = 2500
    y = np.arange(n) % 5
    x = np.zeros((n, 8, 8), dtype=np.float32)
    x[:, 0, 0] = y / 4.0
    np.savez(tmp_path / "big.npz", x=x, y=y)
    xtr, ytr, xte, yte, info = load_labelled(str(tmp_path / "big.npz"), size=8)
    assert (len(xtr), len(xte), info["n_images"]) == (2000, 500, n)    # defaults: test min(1000, n/5), train the rest
    for xs, ys in ((xtr, ytr), (xte, yte)):
        assert np.allclose(xs[:, 0, 0, 0].numpy() * 4.0, ys.numpy(), atol=1e-5)
    xa, ya, _ = read_labelled(str(tmp_path / "big.npz"), size=8)
    assert len(xa) == n and torch.equal(ya, torch.from_numpy(y))       # file order, unsplit
    assert np.allclose(xa[:, 0, 0, 0].numpy() * 4.0, y, atol=1e-5)


@pytest.mark.parametrize("arr, lo, hi", [
    (np.array([[[0, 1], [1, 0]]] * 5, dtype=np.int64), 0.0, 1.0),       # 0 / 1 integers: black and white
    (np.array([[[-128, 127], [0, 5]]] * 5, dtype=np.int8), 0.0, 1.0),   # signed: min-max, inside the range
    (np.array([[[0, 255], [7, 9]]] * 5, dtype=np.uint8), 0.0, 1.0),
    (np.array([[[0, 128], [7, 9]]] * 5, dtype=np.uint8), 0.0, 128 / 255),
    (np.array([[[0, 60000], [7, 9]]] * 5, dtype=np.uint16), 0.0, 60000 / 65535),
    (np.array([[[True, False], [True, True]]] * 5), 0.0, 1.0),
])
def test_integer_images_map_into_the_unit_range(tmp_path, arr, lo, hi) -> None:
    np.save(tmp_path / "a.npy", arr)
    d = load_images(str(tmp_path / "a.npy"), size=8, n_test=1)
    v = (torch.cat([d.train_x, d.test_x]) + 1) / 2
    assert abs(float(v.min()) - lo) < 1e-6 and abs(float(v.max()) - hi) < 1e-6, d.preprocessing["values"]
