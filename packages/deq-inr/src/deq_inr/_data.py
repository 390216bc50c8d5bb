"""Coordinates -> values datasets (images, audio, video) with train / held-out splits, all offline.

Coordinates are the full grid in ``[-1, 1]^d`` (``d`` = 2 image, 1 audio, 3 video as ``(t, y, x)``); values are in
``[-1, 1]`` (images and video: ``2 v - 1`` for ``v`` in ``[0, 1]``; audio: the waveform divided by its peak).

Split (``holdout = p``): when ``p = 1 / s^d`` for an integer ``s >= 2`` the training points are the regular grid
``[::s, ..., ::s]`` and the held-out points the disjoint grid offset by ``s // 2`` in every axis (``p = 0.25`` on an
image: train ``[::2, ::2]``, test ``[1::2, 1::2]``, as in (Implicit)^2); otherwise a seeded random split with
``round(p N)`` training points and as many (or what is left) held out.
"""

from __future__ import annotations

import math
import numbers
import os
import wave
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from deq_core import DeqInputError

from ._text import RENDERED_TEXT_PREFIX, rendered_text

__all__ = ["KINDS", "CoordData", "BUNDLED_IMAGES", "SKIMAGE_IMAGES", "NATURAL_IMAGES", "TEXT_IMAGES", "load_image",
           "image_data", "audio_data",
           "video_data", "synth_audio", "read_wav", "write_wav", "grid_coords", "default_input_scale", "VIDEO_GIF",
           "interpolate_train"]

NATURAL_IMAGES = ("camera", "astronaut", "coffee", "chelsea", "rocket")
TEXT_IMAGES = ("text", "page")
BUNDLED_IMAGES = NATURAL_IMAGES + TEXT_IMAGES
#: The 2-D images of ``skimage.data`` that :func:`load_image` loads by name (no other callable there is called:
#: ``download_all`` would go to the network). Those not in the scikit-image wheel need its data cache.
SKIMAGE_IMAGES = tuple(sorted({*BUNDLED_IMAGES, "brick", "cat", "cell", "checkerboard", "clock", "coins",
                               "colorwheel", "eagle", "grass", "gravel", "horse", "hubble_deep_field",
                               "immunohistochemistry", "lily", "logo", "microaneurysms", "moon", "retina",
                               "shepp_logan_phantom", "skin"}))


def _video_gif() -> str:
    import skimage

    return os.path.join(os.path.dirname(skimage.__file__), "data", "no_time_for_that_tiny.gif")


VIDEO_GIF = "skimage:no_time_for_that_tiny.gif"


#: The kinds of signal: ``CoordData.kind`` and :func:`deq_inr.psnr`'s ``kind``.
KINDS: tuple[str, ...] = ("image", "audio", "video")


@dataclass
class CoordData:
    """A signal on a regular grid as coordinates -> values, with a train / held-out split.

    Attributes:
        kind: ``image``, ``audio`` or ``video``.
        name: where it came from (bundled name or path).
        coords: ``(N, d)`` full-grid coordinates in ``[-1, 1]``.
        values: ``(N, C)`` targets in ``[-1, 1]``.
        shape: grid shape (``(H, W)``, ``(T,)`` or ``(T, H, W)``).
        train_idx, test_idx: indices into the ``N`` points (``test_idx`` empty without a hold-out).
        holdout: the split fraction (``None`` = train on every point).
        stride: ``s`` of a regular-grid split, else ``None``.
        sample_rate: audio only.
    """

    kind: str
    name: str
    coords: Tensor
    values: Tensor
    shape: tuple[int, ...]
    train_idx: Tensor
    test_idx: Tensor
    holdout: float | None = None
    stride: int | None = None
    sample_rate: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.values.shape[1])

    @property
    def in_features(self) -> int:
        return int(self.coords.shape[1])

    def train(self) -> tuple[Tensor, Tensor]:
        return self.coords[self.train_idx], self.values[self.train_idx]

    def test(self) -> tuple[Tensor, Tensor]:
        return self.coords[self.test_idx], self.values[self.test_idx]

    def train_points_per_side(self) -> float:
        """Training points along the longest axis (regular grid) or the random-split equivalent."""
        n = max(self.shape)
        if self.stride is not None:
            return float(math.ceil(n / self.stride))
        frac = len(self.train_idx) / len(self.coords)
        return n * frac ** (1.0 / len(self.shape))

    def as_array(self, flat: Tensor) -> np.ndarray:
        """``(N, C)`` values in ``[-1, 1]`` -> an array of the grid shape in the data's natural range
        (``[0, 1]`` images/video, ``(H, W)`` for one channel; audio: the peak-normalized waveform)."""
        arr = flat.detach().float().cpu().numpy().reshape(*self.shape, self.channels)
        if self.kind == "audio":
            return np.clip(arr[..., 0], -1, 1)
        arr = np.clip((arr + 1) / 2, 0, 1)
        return arr[..., 0] if self.channels == 1 else arr

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "shape": list(self.shape), "channels": self.channels,
                "train_points": len(self.train_idx), "test_points": len(self.test_idx), "holdout": self.holdout,
                "stride": self.stride, "sample_rate": self.sample_rate}


def default_input_scale(data: CoordData) -> float:
    """About half the training points per side (128 for a 256-point training grid, 32 for 64)."""
    return max(1.0, 0.5 * data.train_points_per_side())


def grid_coords(shape: tuple[int, ...]) -> Tensor:
    """``(prod(shape), len(shape))`` coordinates of a regular grid in ``[-1, 1]`` (row-major, ``indexing='ij'``).

    Example:
        >>> grid_coords((2, 3)).tolist()
        [[-1.0, -1.0], [-1.0, 0.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 0.0], [1.0, 1.0]]
    """
    if not shape or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in shape):
        raise DeqInputError(f"grid shape must be a non-empty tuple of ints >= 1, got {tuple(shape)!r}")
    axes = [torch.linspace(-1, 1, int(n)) if n > 1 else torch.zeros(1) for n in shape]
    mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (*shape, d)
    return rearrange(mesh, "... d -> (...) d")  # one row per grid point, in the grid's row-major order


def interpolate_train(data: CoordData) -> Tensor | None:
    """The held-out values predicted by (multi)linear interpolation of the training samples, ``(N_test, C)``:
    the floor a representation should beat on held-out points. Only for regular-grid splits (``data.stride``);
    ``None`` otherwise. Points past the last training sample along an axis take its value.

    Example:
        >>> import torch
        >>> d = audio_data(seconds=0.01, sample_rate=800, holdout=0.5)   # 8 samples: train even, test odd
        >>> pred = interpolate_train(d)
        >>> _, y = d.test()
        >>> bool(torch.allclose(pred[:3], (d.values[0:6:2] + d.values[2:8:2]) / 2))   # midpoints
        True
    """
    s = data.stride
    if s is None or len(data.test_idx) == 0:
        return None
    d = len(data.shape)
    tshape = tuple(math.ceil(m / s) for m in data.shape)
    grid = data.values[data.train_idx].T.reshape(1, data.channels, *tshape).double()   # (1, C, *train grid)
    pos = torch.stack(torch.unravel_index(data.test_idx, data.shape), dim=1).double() / s   # train-grid units
    norm = torch.stack([2 * pos[:, a] / (n - 1) - 1 if n > 1 else torch.zeros_like(pos[:, a])
                        for a, n in enumerate(tshape)], dim=1)
    if d == 1:   # as a 1 x T image
        grid, norm = grid.unsqueeze(2), torch.cat([torch.zeros_like(norm), norm], dim=1)
    loc = norm.flip(1).reshape(1, *([1] * (max(d, 2) - 1)), -1, max(d, 2))   # grid_sample wants (x, y[, z])
    out = torch.nn.functional.grid_sample(grid, loc, mode="bilinear", padding_mode="border", align_corners=True)
    return out.reshape(data.channels, -1).T.to(data.values.dtype)


def _check_holdout(holdout: float | None) -> None:
    if holdout is None:
        return
    if isinstance(holdout, bool) or not isinstance(holdout, numbers.Real):
        raise DeqInputError(f"hold-out fraction must be a number in (0, 1) (e.g. 0.25) or None, got {holdout!r}")
    if not 0 < holdout < 1:
        raise DeqInputError(f"hold-out fraction must be in (0, 1) (e.g. 0.25), got {holdout!r}")


def _check_count(name: str, value: int | None, least: int = 0, optional: bool = True) -> None:
    """``value`` is an int >= ``least`` (or None, when ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise DeqInputError(f"{name} must be an int >= {least}{' or None' if optional else ''}, got {value!r}")


def _split(shape: tuple[int, ...], holdout: float | None, seed: int) -> tuple[Tensor, Tensor, int | None]:
    n = math.prod(shape)
    idx = torch.arange(n).reshape(shape)
    if holdout is None:
        return torch.arange(n), torch.zeros(0, dtype=torch.long), None
    d = len(shape)
    s = round(holdout ** (-1.0 / d))
    if s >= 2 and abs(s ** (-d) - holdout) < 1e-9 and all(m > s // 2 for m in shape):
        train = idx[tuple(slice(0, None, s) for _ in shape)].reshape(-1)
        test = idx[tuple(slice(s // 2, None, s) for _ in shape)].reshape(-1)
        return train, test, s
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = max(1, round(holdout * n))
    if k >= n:
        raise DeqInputError(f"hold-out fraction {holdout} leaves no points to evaluate on ({n} points)")
    return perm[:k].sort().values, perm[k:k + min(k, n - k)].sort().values, None


def _imread(path: str, **kwargs: Any) -> np.ndarray:
    """imageio on the file's bytes (no file handle left open when decoding fails)."""
    import imageio.v3 as iio

    with open(path, "rb") as fh:
        raw = fh.read()
    ext = os.path.splitext(path)[1].lower() or None
    return iio.imread(raw, extension=ext, **kwargs)


def _to_float01(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise DeqInputError(f"{what} contains non-finite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > 1:
        arr = (arr - lo) / max(hi - lo, 1e-12)
    return arr


def load_image(name_or_path: str) -> np.ndarray:
    """A bundled scikit-image name (``camera``, ``astronaut``, ``coffee``, ``chelsea``, ``rocket``, ``text``,
    ``page``, ...), ``"rendered-text-<seed>"`` (:func:`deq_inr.rendered_text` at 512 x 512) or an image file path
    -> ``(H, W, C)`` float32 in ``[0, 1]`` with ``C`` in ``{1, 3}``.

    RGBA drops alpha. Names are those of :data:`SKIMAGE_IMAGES`. Raises :class:`deq_core.DeqInputError` for an
    unknown name, an unreadable file, an image smaller than 2 x 2, or a channel count other than 1, 3 or 4.
    """
    import skimage.data

    if not isinstance(name_or_path, (str, os.PathLike)):
        raise DeqInputError(f"image must be a bundled image name or a file path, got {name_or_path!r}")
    name_or_path = os.fspath(name_or_path)
    if not os.path.exists(name_or_path) and name_or_path.startswith(RENDERED_TEXT_PREFIX):
        seed = name_or_path[len(RENDERED_TEXT_PREFIX):]
        if not seed.isdigit():
            raise DeqInputError(f"image {name_or_path!r}: expected {RENDERED_TEXT_PREFIX}<seed> with an int seed "
                                f">= 0, e.g. {RENDERED_TEXT_PREFIX}0")
        arr = rendered_text(int(seed))
    elif not os.path.exists(name_or_path) and name_or_path in SKIMAGE_IMAGES:
        try:
            arr = np.asarray(getattr(skimage.data, name_or_path)())
        except Exception as e:  # e.g. a dataset that needs a download
            raise DeqInputError(
                f"cannot load bundled image {name_or_path!r} offline: {type(e).__name__}: {e}") from None
    elif os.path.exists(name_or_path):
        try:
            arr = np.asarray(_imread(name_or_path))
        except Exception as e:
            raise DeqInputError(f"cannot read image {name_or_path!r}: {type(e).__name__}: {e}") from None
    else:
        raise DeqInputError(
            f"image {name_or_path!r} is neither a file nor a bundled image (bundled: {', '.join(BUNDLED_IMAGES)}; "
            f"scikit-image's others: {', '.join(n for n in SKIMAGE_IMAGES if n not in BUNDLED_IMAGES)}; "
            f"rendered text: {RENDERED_TEXT_PREFIX}<seed>)"
        )
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise DeqInputError(f"image {name_or_path!r}: expected a 2-D image (H, W) or (H, W, C), got shape {arr.shape}")
    if arr.shape[2] not in (1, 3, 4):
        raise DeqInputError(
            f"image {name_or_path!r}: expected 1 (gray), 3 (RGB) or 4 (RGBA) channels, got {arr.shape[2]}"
        )
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise DeqInputError(f"image {name_or_path!r} is {arr.shape[0]}x{arr.shape[1]} pixels; need at least 2x2")
    arr = _to_float01(arr, f"image {name_or_path!r}")
    return arr[..., :3] if arr.shape[2] == 4 else arr


def _square(arr: np.ndarray, size: int | None) -> np.ndarray:
    if not size:
        return arr
    h, w = arr.shape[:2]
    m = min(h, w)
    arr = arr[(h - m) // 2:(h - m) // 2 + m, (w - m) // 2:(w - m) // 2 + m]
    if m == size:
        return arr
    from skimage.transform import resize

    return resize(arr, (size, size), anti_aliasing=m > size, order=1).astype(np.float32)


def _make(kind: str, name: str, arr: np.ndarray, holdout: float | None, seed: int, **extra: Any) -> CoordData:
    shape = tuple(arr.shape[:-1])
    coords = grid_coords(shape)
    values = torch.from_numpy(np.ascontiguousarray(rearrange(arr, "... c -> (...) c"))).float()  # grid order
    train, test, stride = _split(shape, holdout, seed)
    return CoordData(kind, name, coords, values, shape, train, test, holdout, stride, **extra)


def image_data(name_or_path: str = "camera", *, size: int | None = 128, holdout: float | None = 0.25,
               gray: bool = False, channels: int | None = None, seed: int = 0) -> CoordData:
    """An image as ``(y, x) -> value`` data.

    Arguments:
        name_or_path: bundled scikit-image name or a file path.
        size: center-crop to a square and resize to ``size x size`` (``None``/0: keep the image as is).
        holdout: ``0.25`` = train on ``[::2, ::2]``, evaluate on ``[1::2, 1::2]``; ``None`` = train on all pixels.
        gray: convert RGB to gray.
        channels: expected channel count (1 or 3); an image with another count is an error.

    Example:
        >>> d = image_data("camera", size=32)
        >>> d.shape, d.channels, len(d.train_idx), len(d.test_idx)
        ((32, 32), 1, 256, 256)
    """
    _check_holdout(holdout)
    _check_count("size", size)
    arr = load_image(name_or_path)
    if gray and arr.shape[2] == 3:
        arr = (arr @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32))[..., None]
    if channels is not None and arr.shape[2] != channels:
        raise DeqInputError(f"image {name_or_path!r}: expected {channels} channel(s), got {arr.shape[2]}")
    arr = _square(arr, size)
    return _make("image", name_or_path, arr * 2 - 1, holdout, seed)


def synth_audio(seconds: float = 0.5, sample_rate: int = 8000, seed: int = 0) -> np.ndarray:
    """A test signal: a chirp (100 Hz -> 1.5 kHz) plus enveloped harmonics of 220 Hz and a little noise."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0, f1 = 100.0, 1500.0
    chirp = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds)))
    env = np.exp(-3 * t / seconds) * (1 - np.exp(-40 * t))
    harm = sum(np.sin(2 * np.pi * 220 * h * t + h) / h for h in range(1, 5))
    noise = np.random.default_rng(seed).normal(0, 0.01, t.shape)
    return (0.5 * chirp + 0.5 * env * harm + noise).astype(np.float32)


def read_wav(path: str) -> tuple[np.ndarray, int]:
    """A PCM WAV file (8/16/32-bit, any channel count, averaged to mono) via the stdlib ``wave`` module."""
    try:
        with wave.open(path, "rb") as w:
            n, ch, width, rate = w.getnframes(), w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(n)
    except Exception as e:
        raise DeqInputError(f"cannot read WAV {path!r}: {type(e).__name__}: {e}") from None
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768
    elif width == 4:
        x = np.frombuffer(raw, "<i4").astype(np.float32) / 2**31
    else:
        raise DeqInputError(f"WAV {path!r}: unsupported sample width {width} bytes (expected 1, 2 or 4)")
    x = x.reshape(-1, ch).mean(axis=1)
    if len(x) < 2:
        raise DeqInputError(f"WAV {path!r} has {len(x)} samples; need at least 2")
    return x, rate


def write_wav(path: str, x: np.ndarray, sample_rate: int) -> None:
    """Write a mono 16-bit PCM WAV (values clipped to ``[-1, 1]``)."""
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())


def audio_data(path: str | None = None, *, seconds: float = 0.5, sample_rate: int = 8000,
               max_samples: int | None = 16384, holdout: float | None = 0.5, seed: int = 0) -> CoordData:
    """Audio as ``t -> amplitude / peak``: a user WAV file (``path``) or the synthesized :func:`synth_audio`.

    ``holdout = 0.5`` trains on the even samples and evaluates on the odd ones; ``max_samples`` keeps the
    first samples of a long file.
    """
    _check_holdout(holdout)
    _check_count("max_samples", max_samples)
    if path is None:
        _check_count("sample_rate", sample_rate, least=1, optional=False)
        if not (isinstance(seconds, numbers.Real) and math.isfinite(seconds) and seconds * sample_rate >= 2):
            raise DeqInputError(f"seconds must be a finite number giving at least 2 samples at {sample_rate} Hz, "
                                f"got {seconds!r}")
        x, rate, name = synth_audio(seconds, sample_rate, seed), sample_rate, "synth:chirp+harmonics"
    else:
        (x, rate), name = read_wav(path), path
    if max_samples:
        x = x[:max_samples]
    peak = float(np.abs(x).max())
    if peak == 0:
        raise DeqInputError(f"audio {name!r} is silent (peak amplitude 0)")
    return _make("audio", name, (x / peak)[:, None], holdout, seed, sample_rate=rate, meta={"peak": peak})


def video_data(path: str | None = None, *, frames: int | None = None, holdout: float | None = None,
               seed: int = 0) -> CoordData:
    """A video as ``(t, y, x) -> RGB`` (default: scikit-image's bundled 24-frame 25x14 GIF), read with imageio."""
    _check_holdout(holdout)
    _check_count("frames", frames)
    src = _video_gif() if path is None else path
    try:
        arr = np.asarray(_imread(src, index=None))
    except Exception as e:
        raise DeqInputError(f"cannot read video {src!r}: {type(e).__name__}: {e}") from None
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise DeqInputError(f"video {src!r}: expected (T, H, W, C) with C in 1, 3, 4, got shape {arr.shape}")
    if frames:
        arr = arr[:frames]
    if min(arr.shape[:3]) < 2:
        raise DeqInputError(f"video {src!r} has shape {arr.shape[:3]}; need at least 2 frames of 2x2 pixels")
    arr = _to_float01(arr, f"video {src!r}")[..., :3]
    return _make("video", VIDEO_GIF if path is None else path, arr * 2 - 1, holdout, seed)
