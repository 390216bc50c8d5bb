"""``deq inr fit`` and ``deq inr render`` (added to the ``deq`` command line by :mod:`deq_inr.plugin`)."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable
from typing import Any

import click

__all__ = ["inr", "build_registered_model"]

_MODEL_HELP = ("Model name from the registry: isiren, imfn-fourier, imfn-gabor (implicit); siren, mfn-fourier, "
               "mfn-gabor (explicit); a sized name such as isiren-1l-512d; or any plugin model tagged 'inr' "
               "(`deq plugins` lists them; 'dist:name' selects a given plugin's).")
_INR_CONTRACT = ("an nn.Module with forward(coords, cache_key=None) -> (values, info or None), "
                 "predict(coords, chunk=...) and config()")


def build_registered_model(name: str, in_features: int, out_features: int, *, strict: Iterable[str] = (),
                           **options: Any) -> Any:
    """Build the INR model registered as ``name`` (deq-inr's or a plugin's) through ``deq_core.registry``.

    ``options`` (``width``, ``layers``, ``input_scale``, ``injection`` and, for a model tagged ``"implicit"``,
    ``solver``, ``neumann_terms``, ``amortize``, ``reuse_steps``) are passed when the model's factory takes
    them (all of them to a factory with ``**options``); ``in_features`` / ``out_features`` always. The options
    named in ``strict`` (those a user gave explicitly) must reach the model: one that would be dropped is an
    error instead.

    Raises:
        UnknownNameError: no such model (lists the known ones; names deq-inr's package when it is missing).
        DeqConfigError: the model is not tagged ``"inr"``, did not build an INR, or does not take an option of
            ``strict``.
    """
    from deq_core import DeqConfigError, registry
    from deq_core.plugins import get_manager

    entry = get_manager().lookup("model", name)
    if "inr" not in entry.tags:
        inr_names = sorted(n for n, e in registry.models().items() if "inr" in e.tags)
        raise DeqConfigError(f"model {name!r} is not an INR model (its record has no 'inr' tag); "
                             f"INR models: {', '.join(inr_names)}")
    implicit = ("solver", "neumann_terms", "amortize", "reuse_steps")
    kept = dict(options)
    if "implicit" not in entry.tags:
        kept = {k: v for k, v in kept.items() if k not in implicit}
    valid = entry.option_names()
    if valid is not None:
        kept = {k: v for k, v in kept.items() if k in valid}
    dropped = [k for k in strict if k in options and k not in kept]
    if dropped:
        why = "an explicit model" if "implicit" not in entry.tags else "its factory does not take them"
        raise DeqConfigError(f"model {name!r} takes no option {', '.join(dropped)} ({why}); "
                             f"options it takes: {', '.join(sorted(kept)) or 'none'}")
    options = kept
    model = registry.get_model(name, in_features=in_features, out_features=out_features, **options)
    missing = [a for a in ("predict", "config") if not callable(getattr(model, a, None))]
    if missing or not callable(model):
        raise DeqConfigError(f"model {name!r} built a {type(model).__name__} without "
                             f"{', '.join(missing) or 'forward'}; deq inr fit needs {_INR_CONTRACT}")
    return model


def _fail(exc: BaseException) -> click.ClickException:
    msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return click.ClickException(msg.splitlines()[0] if msg else type(exc).__name__)


def _terms(ctx: click.Context | None, param: click.Parameter | None, value: str) -> int | None:
    """``--neumann-terms``: an int >= 0, or 'inf' for the exact gradient (``None``)."""
    if value.lower() in ("inf", "infinity", "exact"):
        return None
    try:
        t = int(value)
    except ValueError:
        raise click.BadParameter(f"expected an int >= 0 or 'inf', got {value!r}") from None
    if t < 0:
        raise click.BadParameter(f"expected an int >= 0 or 'inf', got {value!r}")
    return t


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


@click.group("inr")
def inr() -> None:
    """Implicit neural representations ((Implicit)^2): fit and render iSIREN / iMFN / SIREN / MFN models."""


@inr.command("fit")
@click.option("--model", "model_name", default="imfn-gabor", show_default=True, metavar="NAME", help=_MODEL_HELP)
@click.option("--image", default=None, help="Bundled scikit-image name (camera, astronaut, coffee, chelsea, rocket, "
              "text, page), rendered-text-SEED (rendered text, any seed) or an image path. Default: camera (unless "
              "--audio / --video).")
@click.option("--audio", is_flag=False, flag_value="synth", default=None,
              help="Fit audio: a WAV path, or no value for a synthesized chirp.")
@click.option("--video", is_flag=False, flag_value="bundled", default=None,
              help="Fit a video: a GIF/video path, or no value for scikit-image's bundled GIF.")
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True,
              help="Adam training steps.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Output directory.")
@click.option("--layers", type=click.IntRange(min=1), default=None, help="Sub-layers L (default 1).")
@click.option("--width", type=click.IntRange(min=1), default=None, help="Width D (default 256).")
@click.option("--arch", type=click.Choice(["1L-256D", "1L-512D", "4L-256D"], case_sensitive=False), default=None,
              help="The paper's sizes instead of --layers/--width: 1L-256D, 1L-512D, 4L-256D.")
@click.option("--holdout", type=float, default=None,
              help="Train on a fraction p of the points, evaluate on a disjoint p (0.25 on an image: [::2, ::2] vs "
                   "[1::2, 1::2]). Default 0.25 image, 0.5 audio, none for video.")
@click.option("--no-holdout", is_flag=True, help="Train on every point (representation).")
@click.option("--size", type=click.IntRange(min=0), default=128, show_default=True,
              help="Images: center-crop and resize to size x size (0 = as is).")
@click.option("--input-scale", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Filter frequency scale; default about half the training points per side.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Adam learning rate (default: the model's; isiren 3e-3 x min(1, 256/width), else 1e-3).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Seed of the initialization, the held-out split and mini-batches.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Mini-batch size (default full batch).")
@click.option("--amortize/--no-amortize", default=True, show_default=True,
              help="Implicit models: warm start from the previous step's fixed point.")
@click.option("--reuse-steps", type=click.IntRange(min=0), default=1, show_default=True,
              help="Implicit models with --amortize: solver steps per training step from the warm start "
                   "(1 = one f evaluation from the cached point, Implicit^2's amortized step; 0 = the cached "
                   "point itself, its gradient through one f evaluation).")
@click.option("--neumann-terms", default="1", show_default=True, callback=_terms,
              help="Implicit models: backward Neumann order T, or 'inf' (exact).")
@click.option("--solver", default="fixed-point", show_default=True,
              help="Implicit models: forward solver (registered name).")
@click.option("--no-injection", is_flag=True, help="siren only: classic SIREN (omega_0 = 30) without injection.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: only when stderr is a terminal).")
def fit_command(model_name: str, image: str | None, audio: str | None, video: str | None, steps: int, out_dir: str,
                layers: int | None, width: int | None, arch: str | None, holdout: float | None, no_holdout: bool,
                size: int, input_scale: float | None, lr: float | None, seed: int, batch_size: int | None,
                amortize: bool, reuse_steps: int, neumann_terms: int | None, solver: str, no_injection: bool,
                progress: bool | None) -> None:
    """Fit the model --model NAME to an image, audio clip or video; write metrics.json, PNGs and model.safetensors
    to --out."""
    import torch

    from ._checkpoint import save_checkpoint
    from ._data import audio_data, default_input_scale, image_data, video_data, write_wav
    from ._fit import fit
    from ._plots import plot_psnr_curve, plot_reconstruction

    ctx = click.get_current_context()
    given = {p for p in ctx.params if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE}
    if sum(v is not None for v in (image, audio, video)) > 1:
        raise click.UsageError("give only one of --image, --audio, --video")
    if holdout is not None and no_holdout:
        raise click.UsageError("give --holdout P or --no-holdout, not both")
    if "size" in given and image is None and (audio is not None or video is not None):
        raise click.UsageError("--size is for images; it does not apply to --audio / --video")
    if holdout is not None and not 0 < holdout < 1:
        raise click.ClickException(f"--holdout must be in (0, 1) (e.g. 0.25), got {holdout}")
    # the model options the user set: they must reach the model (the CLI's --no-injection is its injection=False)
    strict = [{"no_injection": "injection"}.get(p, p) for p in
              ("solver", "neumann_terms", "amortize", "reuse_steps", "no_injection") if p in given]
    if progress is None:
        progress = sys.stderr.isatty()
    try:
        os.makedirs(out_dir, exist_ok=True)   # before training: a bad --out fails now, not after the fit
        torch.manual_seed(seed)
        if audio is not None:
            data = audio_data(None if audio == "synth" else audio, seed=seed,
                              holdout=None if no_holdout else (0.5 if holdout is None else holdout))
        elif video is not None:
            data = video_data(None if video == "bundled" else video, seed=seed,
                              holdout=None if no_holdout else holdout)
        else:
            data = image_data(image or "camera", size=size or None, seed=seed,
                              holdout=None if no_holdout else (0.25 if holdout is None else holdout))
        scale = default_input_scale(data) if input_scale is None else input_scale
        sizes = {"width": width, "layers": layers, "arch": arch}
        model = build_registered_model(model_name, data.in_features, data.channels,
                                       **{k: v for k, v in sizes.items() if v is not None},
                                       input_scale=scale, injection=not no_injection, solver=solver,
                                       neumann_terms=neumann_terms, amortize=amortize, reuse_steps=reuse_steps,
                                       strict=strict)
        config = model.config()
        layers, width = config.get("layers", layers), config.get("width", width)
        result = fit(model, data, steps=steps, lr=lr, batch_size=batch_size, seed=seed, progress=progress,
                     grad_clip=0.1 if data.kind == "video" else None)
    except click.ClickException:
        raise
    except (ValueError, KeyError, OSError) as e:  # DeqInputError, UnknownNameError, FileNotFoundError, ...
        raise _fail(e) from None
    label = f"{model_name} {layers}L-{width}D"
    metrics = {**result.metrics, "model": model_name, "layers": layers, "width": width, "input_scale": scale,
               "lr": result.metrics["lr"], "seed": seed, "data": data.describe(), "config": model.config(),
               "history": result.history}
    with open(os.path.join(out_dir, "metrics.json"), "w") as fh:
        json.dump(_json_safe(metrics), fh, indent=2)
    title = f"{label} on {os.path.basename(data.name)}: PSNR {result.metrics['psnr']:.2f} dB"
    if data.holdout is not None:
        title += f", held-out {result.metrics['heldout_psnr']:.2f} dB"
    plot_reconstruction(os.path.join(out_dir, "reconstruction.png"), data, result.prediction, title)
    plot_psnr_curve(os.path.join(out_dir, "psnr_curve.png"), {label: result.history}, title=os.path.basename(data.name))
    if data.kind == "audio":
        write_wav(os.path.join(out_dir, "reconstruction.wav"), data.as_array(result.prediction), data.sample_rate)
    save_checkpoint(os.path.join(out_dir, "model.safetensors"), model, data.describe(), result.metrics)
    m = result.metrics
    interp = m.get("interp_heldout_psnr")
    vs = f" (linear interpolation of the training points: {interp:.2f} dB)" if interp is not None else ""
    held = f"{m['heldout_psnr']:.2f} dB{vs}" if data.holdout is not None else "n/a (no hold-out)"
    click.echo(f"{label}: psnr {m['psnr']:.2f} dB, held-out {held}, "
               f"train {m['train_psnr']:.2f} dB, {m['ms_per_step']:.1f} ms/step, "
               f"peak mem {m['peak_mem_mb']:.1f} MB -> {out_dir}")


@inr.command("render")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Output directory.")
@click.option("--model", "expect_model", default=None, metavar="NAME",
              help="Fail unless the checkpoint holds this model.")
def render_command(checkpoint: str, out_dir: str, expect_model: str | None) -> None:
    """Load a checkpoint written by `deq inr fit` and render its signal on the full grid into OUT."""
    import torch

    from ._checkpoint import load_checkpoint
    from ._data import KINDS, grid_coords, write_wav
    from ._plots import save_prediction

    try:
        model, config = load_checkpoint(checkpoint, expect_model=expect_model)
        desc = config.get("data") or {}
        if not isinstance(desc, dict) or not {"kind", "shape"} <= desc.keys():
            raise click.ClickException(f"{checkpoint}: no data description to render on (expected data.kind "
                                       f"and data.shape, as `deq inr fit` writes them; got {desc!r})")
        shape, kind = tuple(desc["shape"]), desc["kind"]
        dims = config["model"].get("in_features")
        if kind not in KINDS or (dims is not None and len(shape) != dims):
            raise click.ClickException(f"{checkpoint}: data {kind!r} of shape {list(shape)} does not fit a model "
                                       f"with {dims}-D coordinates (expected kind in {', '.join(KINDS)} and a "
                                       f"{dims}-D shape)")
        pred = model.predict(grid_coords(shape))
    except click.ClickException:
        raise
    except (ValueError, KeyError, OSError, TypeError) as e:
        raise _fail(e) from None
    os.makedirs(out_dir, exist_ok=True)
    arr = pred.reshape(*shape, -1).numpy()
    written = []
    if kind == "audio":
        wav = os.path.join(out_dir, "render.wav")
        write_wav(wav, arr[..., 0].clip(-1, 1), desc.get("sample_rate") or 8000)
        written.append(wav)
    else:
        img = ((arr + 1) / 2).clip(0, 1)
        png = os.path.join(out_dir, "render.png")
        save_prediction(png, img[..., 0] if img.shape[-1] == 1 else img, kind)
        written.append(png)
    info = {"checkpoint": checkpoint, "model": config["model"], "data": desc, "files": written,
            "mean": float(torch.as_tensor(arr).mean())}
    with open(os.path.join(out_dir, "render.json"), "w") as fh:
        json.dump(_json_safe(info), fh, indent=2)
    click.echo(f"rendered {config['model']['model']} ({kind} {'x'.join(map(str, shape))}) -> {', '.join(written)}")
