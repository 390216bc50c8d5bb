"""Text images rendered offline: a text set of any size (scikit-image bundles two text images, ``text`` and ``page``).

``rendered_text(seed)`` draws lines of words in one of matplotlib's bundled DejaVu fonts (sans, serif or mono;
regular, bold or oblique), at a random size, in a random colour on a background colour of contrasting luminance,
as the Fourier-features paper's text set has text of several fonts, sizes and colours. Lines may start left of
the canvas and run past its right edge, so strokes reach every border. The same seed gives the same image with
the same fonts and Pillow; nothing is downloaded. :func:`deq_inr.load_image` takes ``"rendered-text-<seed>"``.
"""

from __future__ import annotations

import os

import numpy as np

from deq_core import DeqInputError

__all__ = ["rendered_text", "RENDERED_TEXT_PREFIX"]

RENDERED_TEXT_PREFIX = "rendered-text-"
"""``load_image(RENDERED_TEXT_PREFIX + str(seed))`` is ``rendered_text(seed)``."""

_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
          "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf")
_WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards box and vex nymphs at dawn; "
          "implicit layers find an equilibrium z = f(z, x) by a fixed point solve, 0123456789, and differentiate "
          "it: Anderson, Broyden, Picard, Neumann & Halpern; 42 pixels -> PSNR (dB) [train] {test} %").split()
_LUMA = np.array([0.2125, 0.7154, 0.0721])


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A background and a text colour whose luminances differ by at least 0.4."""
    bg = rng.uniform(0, 1, 3)
    while True:
        fg = rng.uniform(0, 1, 3)
        if abs(float(fg @ _LUMA) - float(bg @ _LUMA)) >= 0.4:
            return bg, fg


def rendered_text(seed: int, size: int = 512) -> np.ndarray:
    """A ``(size, size, 3)`` float32 RGB image in ``[0, 1]`` of rendered text, drawn from ``seed``.

    Arguments:
        seed: an int ``>= 0``; each seed gives its own font, size, colours and words.
        size: side in pixels (``>= 16``); the font size is drawn between ``size / 16`` and ``size / 6``.

    Example:
        >>> from deq_inr import rendered_text
        >>> a = rendered_text(3, size=64)
        >>> a.shape, a.dtype, bool(a.min() >= 0 and a.max() <= 1), bool((a == rendered_text(3, size=64)).all())
        ((64, 64, 3), dtype('float32'), True, True)
    """
    from matplotlib import get_data_path
    from PIL import Image, ImageDraw, ImageFont

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DeqInputError(f"rendered_text: seed must be an int >= 0, got {seed!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise DeqInputError(f"rendered_text: size must be an int >= 16, got {size!r}")
    rng = np.random.default_rng([int(seed), 0x7E47])
    font_path = os.path.join(get_data_path(), "fonts", "ttf", _FONTS[int(rng.integers(len(_FONTS)))])
    px = int(rng.integers(size // 16, size // 6 + 1))
    font = ImageFont.truetype(font_path, px)
    bg, fg = _contrasting_colours(rng)
    img = Image.new("RGB", (size, size), tuple(int(round(255 * c)) for c in bg))
    draw = ImageDraw.Draw(img)
    fill = tuple(int(round(255 * c)) for c in fg)
    y = -int(rng.integers(0, px // 2 + 1))
    while y < size:
        line = " ".join(str(w) for w in rng.choice(_WORDS, size=max(4, 3 * size // px)))
        draw.text((-int(rng.integers(0, 2 * px + 1)), y), line, font=font, fill=fill)
        y += int(px * rng.uniform(1.1, 1.6))
    return np.asarray(img, dtype=np.float32) / 255.0
