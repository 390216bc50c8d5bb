"""INR checkpoints: a :func:`deq_core.save` safetensors file whose config names the model, its constructor
arguments and the data grid (so ``deq inr render`` can rebuild both)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from torch import nn

from deq_core import DeqInputError
from deq_core import load as _load
from deq_core import save as _save

from ._build import MODELS, SIZED_MODELS, model_from_config

__all__ = ["save_checkpoint", "load_checkpoint", "FORMAT"]

FORMAT = "deq-inr/1"


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, data: dict[str, Any] | None = None,
                    metrics: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (state dict + :meth:`config`) and the data description atomically to ``path``.

    Example:
        >>> import tempfile
        >>> from deq_inr import build_model, save_checkpoint, load_checkpoint
        >>> m = build_model("mfn-fourier", 2, 1, width=8)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save_checkpoint(f"{d}/m.safetensors", m, {"kind": "image", "shape": [4, 4]})
        ...     m2, cfg = load_checkpoint(f"{d}/m.safetensors", expect_model="mfn-fourier")
        >>> m2.name, cfg["data"]["shape"]
        ('mfn-fourier', [4, 4])
    """
    clean = None if metrics is None else {k: v for k, v in metrics.items() if _plain(v)}
    config = {"format": FORMAT, "model": model.config(), "data": data, "metrics": clean}
    return _save(path, model, config)


def _plain(v: Any) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, (int, str, bool, type(None)))


def _holds(model_cfg: dict[str, Any], expect: str) -> bool:
    """Is ``model_cfg`` a config of the model ``expect`` (a plain name, or a sized one: name and size)?"""
    if expect in SIZED_MODELS:
        base, layers, width = SIZED_MODELS[expect]
        return (model_cfg["model"], model_cfg.get("layers"), model_cfg.get("width")) == (base, layers, width)
    return bool(model_cfg["model"] == expect)


def load_checkpoint(path: str | os.PathLike[str], expect_model: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored at ``path``; returns ``(model, config)`` (config: ``model``, ``data``, ``metrics``).

    Raises:
        FileNotFoundError: no such file.
        DeqInputError: not a readable deq checkpoint, not a deq-inr checkpoint, a checkpoint of another model
            than ``expect_model`` (a sized name such as ``isiren-1l-512d`` also checks the size), or weights
            that do not match the stored architecture.
    """
    if expect_model is not None and expect_model not in MODELS and expect_model not in SIZED_MODELS:
        from deq_core import registry

        if expect_model not in registry.models():
            raise DeqInputError(f"unknown model {expect_model!r}; known: {', '.join(sorted(registry.models()))}")
    _, config = _load(path)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise DeqInputError(f"{path} is a deq checkpoint but not a deq-inr model checkpoint "
                            f"(format {None if not isinstance(config, dict) else config.get('format')!r}, "
                            f"expected {FORMAT!r})")
    model_cfg = config.get("model")
    if not isinstance(model_cfg, dict) or "model" not in model_cfg:
        raise DeqInputError(f"{path}: the checkpoint's config has no model description (expected a dict with "
                            f"'model', 'in_features', 'out_features' as save_checkpoint writes; got {model_cfg!r})")
    if expect_model is not None and not _holds(model_cfg, expect_model):
        held = model_cfg["model"]
        if "width" in model_cfg and "layers" in model_cfg:
            held += f" {model_cfg['layers']}L-{model_cfg['width']}D"
        raise DeqInputError(f"checkpoint {path} holds model {held!r}, not {expect_model!r}")
    model = model_from_config(model_cfg)
    _load(path, model)
    return model, config
