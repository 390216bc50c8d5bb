"""deq-inr: implicit neural representations with deep equilibrium layers ((Implicit)^2).

Models (:func:`build_model`): ``isiren``, ``imfn-fourier``, ``imfn-gabor`` (one implicit layer with input injection,
a :class:`deq_core.DEQ` with amortized fixed points and truncated Neumann backward) and the explicit baselines
``siren``, ``mfn-fourier``, ``mfn-gabor``; coordinate datasets for images, audio and video; :func:`fit`; PSNR.
"""

from ._build import MODELS, SIZED_MODELS, SIZES, build_model, is_implicit, model_from_config, parse_arch
from ._checkpoint import load_checkpoint, save_checkpoint
from ._data import (
                    BUNDLED_IMAGES,
                    KINDS,
                    NATURAL_IMAGES,
                    SKIMAGE_IMAGES,
                    TEXT_IMAGES,
                    CoordData,
                    audio_data,
                    default_input_scale,
                    grid_coords,
                    image_data,
                    interpolate_train,
                    load_image,
                    read_wav,
                    synth_audio,
                    video_data,
                    write_wav,
)
from ._filters import FourierFilter, GaborFilter, SineFilter
from ._fit import SCHEDULES, FitResult, evaluate, fit, lr_factor
from ._metrics import interpolation_heldout_psnr, psnr
from ._models import ExplicitINR, FilterBank, ImplicitINR, INRBlock, Siren
from ._plots import plot_psnr_curve, plot_reconstruction
from ._text import RENDERED_TEXT_PREFIX, rendered_text

__version__ = "0.1.0"

__all__ = [
    "BUNDLED_IMAGES", "KINDS", "SKIMAGE_IMAGES", "MODELS", "SIZED_MODELS", "SIZES", "is_implicit", "parse_arch",
    "NATURAL_IMAGES", "TEXT_IMAGES", "RENDERED_TEXT_PREFIX", "rendered_text", "CoordData", "ExplicitINR", "FilterBank",
    "SCHEDULES",
    "FitResult", "FourierFilter", "GaborFilter", "INRBlock", "ImplicitINR", "Siren", "SineFilter", "audio_data",
    "build_model", "default_input_scale", "evaluate", "fit", "grid_coords", "image_data", "interpolate_train",
    "interpolation_heldout_psnr",
    "load_checkpoint",
    "lr_factor",
    "load_image", "model_from_config", "plot_psnr_curve", "plot_reconstruction", "psnr", "read_wav",
    "save_checkpoint", "synth_audio", "video_data", "write_wav", "__version__",
]
