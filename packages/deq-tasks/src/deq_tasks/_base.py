"""What every task run shares: options from its frozen ``Config`` (nested configs flattened), validation, the output
folder, seeding, one progress bar for the whole run, ``metrics.json``, PNGs and checked checkpoints.

Each task is ``class XTask(TaskBase)`` with ``name``, ``Config`` (a frozen dataclass whose fields carry
``metadata={"help": ...}``; a field whose type is itself a dataclass, such as ``jiio: JIIOConfig``, is offered as
``jiio_<field>`` options) and ``run(out, *, checkpoint=None, progress=True)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import typing
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from deq_core import AbstractTask, DeqConfigError, DeqInputError, TaskOption

__all__ = ["Progress", "TaskBase", "check_int", "check_number", "frozen_params", "help_field", "save_curves",
           "save_grid", "seed_all", "write_metrics"]


def help_field(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None) -> Any:
    """A dataclass field with help text (``factory`` for mutable / nested defaults)."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def check_int(owner: object, name: str, value: Any, low: int, *, optional: bool = False) -> None:
    """Raise :class:`DeqConfigError` unless ``value`` is an int ``>= low`` (or ``None`` when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise DeqConfigError(f"{_owner(owner)}{name} must be an integer >= {low}, got {value!r}")


def check_number(owner: object, name: str, value: Any, *, low: float = 0.0, allow_low: bool = False,
                 optional: bool = False) -> None:
    """Raise :class:`DeqConfigError` unless ``value`` is a finite number ``> low`` (``>= low`` with ``allow_low``)."""
    if optional and value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
        value >= low if allow_low else value > low)
    if not ok:
        raise DeqConfigError(f"{_owner(owner)}{name} must be a finite number {'>=' if allow_low else '>'} {low:g}, "
                             f"got {value!r}")


def _owner(owner: object) -> str:
    return "" if owner is None else f"{type(owner).__name__}."


def seed_all(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded with ``seed`` for data sampling."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class Progress:
    """One progress bar for a whole run (training and evaluation): ``stage(name)`` relabels it, ``update(n)``
    advances it. Silent when disabled (or tqdm is missing)."""

    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self.bar = None
        self.name = desc
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=max(1, int(total)), desc=desc, leave=False, dynamic_ncols=True)

    def stage(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_description(f"{self.name}: {label}")

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def set_postfix(self, **kw: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**kw)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def frozen_params(module: nn.Module) -> Iterator[None]:
    """Temporarily ``requires_grad_(False)`` every parameter (inner loops that only optimize inputs)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_grid(path: str | Path, rows: Sequence[tuple[str, Tensor]], *, ncols: int | None = None,
              title: str | None = None, low: float = -1.0) -> Path:
    """Save labelled rows of grayscale images ``(N, 1, H, W)`` in ``[low, 1]`` as one PNG."""
    plt = _plt()
    ncols = ncols or max(len(imgs) for _, imgs in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(ncols * 0.9 + 1.2, len(rows) * 0.95 + 0.4), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if c < len(imgs):
                ax.imshow(imgs[c, 0].detach().float().cpu().clamp(low, 1).numpy(), cmap="gray", vmin=low, vmax=1)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def save_curves(path: str | Path, curves: Mapping[str, Sequence[float]], *, xlabel: str = "step",
                title: str = "training", log: bool = True) -> Path:
    """Save one panel per curve (e.g. the training loss) as a PNG."""
    plt = _plt()
    curves = {k: v for k, v in curves.items() if len(v)}
    n = max(1, len(curves))
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 2.8), squeeze=False)
    for ax, (name, ys) in zip(axes[0], curves.items()):
        ax.plot(list(ys))
        if log and min(ys) > 0:
            ax.set_yscale("log")
        ax.set_title(f"{title}: {name}", fontsize=9)
        ax.set_xlabel(xlabel)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_metrics(out: Path, metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics.json`` (tensors become lists, non-finite floats null, other objects their ``repr``)."""
    path = Path(out) / "metrics.json"
    path.write_text(json.dumps(_clean(metrics), indent=2, sort_keys=True) + "\n")
    return path


def _clean(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _clean(x) for k, x in v.items()}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _clean({f.name: getattr(v, f.name) for f in dataclasses.fields(v)})
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, Tensor):
        return _clean(v.tolist())
    if isinstance(v, (np.floating, np.integer)):
        return _clean(v.item())
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    return v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)


class TaskBase(AbstractTask):
    """The shared base of deq-tasks' tasks (module docstring).

    ``__init__(config=None, **options)``: ``options`` are ``Config`` field names, or ``<nested>_<field>`` for a
    nested config (``jiio_alpha=0.05``); an unknown name, or a value the ``Config`` rejects, raises
    :class:`~deq_core.DeqConfigError` before anything runs.
    """

    def __init__(self, config: Any = None, **options: Any) -> None:
        cls = type(self).Config
        assert cls is not None
        if config is None:
            config = cls()
        elif not isinstance(config, cls):
            raise DeqConfigError(f"task {self.name!r} needs a {cls.__name__}, got {type(config).__name__}")
        if options:
            valid = [o.name for o in self.options()] + [f.name for f in dataclasses.fields(cls)
                                                         if dataclasses.is_dataclass(getattr(config, f.name))]
            config = _apply(config, options, self.name, valid)
        super().__init__(config)

    @classmethod
    def options(cls) -> tuple[TaskOption, ...]:
        """The ``Config`` fields as :class:`TaskOption` records; a nested config's fields as ``<name>_<field>``."""
        assert cls.Config is not None
        return tuple(_flatten(cls.Config, cls.Config()))

    # ------------------------------------------------------------------ run plumbing
    def prepare(self, out: str | Path) -> tuple[Path, torch.Generator]:
        """Create ``out`` and seed everything with ``config.seed``; returns ``(out, generator)``."""
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise DeqInputError(f"--out {str(out)!r} exists and is not a folder")
        out.mkdir(parents=True, exist_ok=True)
        return out, seed_all(int(getattr(self.config, "seed", 0)))

    def progress(self, total: int, enabled: bool) -> Progress:
        return Progress(total, self.name, enabled)

    def save_checkpoint(self, path: Path, model: nn.Module, model_kind: str, hparams: Mapping[str, Any],
                        **extra: Any) -> Path:
        """``deq_core.save`` with ``{"task", "model", "hparams", "config", ...}`` as metadata."""
        from deq_core import save

        meta = {"task": self.name, "model": model_kind, "hparams": _clean(dict(hparams)),
                "config": _clean(self.config), **_clean(extra)}
        return save(path, model, meta)

    def read_checkpoint(self, path: str | Path, model_kinds: Sequence[str]) -> tuple[dict[str, Tensor], dict]:
        """Read a checkpoint written by :meth:`save_checkpoint` and check it holds one of ``model_kinds``.

        Raises:
            DeqInputError: not a deq checkpoint, or a checkpoint of another model (the message says which).
        """
        from deq_core import load

        try:
            state, meta = load(path)
        except (OSError, ValueError, KeyError) as exc:
            raise DeqInputError(f"cannot read checkpoint {str(path)!r}: {exc}") from None
        meta = meta or {}
        kind = meta.get("model")
        if kind not in model_kinds:
            what = f"a {kind!r} model of task {meta.get('task')!r}" if kind else "no deq-tasks model metadata"
            raise DeqInputError(f"checkpoint {str(path)!r} holds {what}; task {self.name!r} needs "
                                f"{' or '.join(map(repr, model_kinds))}")
        return state, meta

    def load_state(self, model: nn.Module, state: Mapping[str, Tensor], path: str | Path) -> nn.Module:
        """``model.load_state_dict(state)`` with a one-line error when shapes or names differ."""
        try:
            model.load_state_dict(dict(state))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise DeqInputError(f"checkpoint {str(path)!r} does not fit this model: "
                                f"{' '.join(x.strip() for x in first[:3])[:300]}") from None
        return model


# ---------------------------------------------------------------------- nested options
def _flatten(cls: type, default: Any, prefix: str = "") -> Iterator[TaskOption]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _flatten(type(value), value, f"{prefix}{f.name}_")
            continue
        yield TaskOption(prefix + f.name, hints.get(f.name, Any), value, str(f.metadata.get("help", "")))


def _apply(config: Any, options: Mapping[str, Any], task: str, valid: Sequence[str]) -> Any:
    import difflib

    unknown = sorted(set(options) - set(valid))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(valid), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DeqConfigError(f"task {task!r} has no option {', '.join(map(repr, unknown))}{hint}; "
                             f"valid options: {', '.join(valid)}")
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    names = {f.name for f in dataclasses.fields(config)}
    for key, value in options.items():
        if key in names:
            top[key] = value
            continue
        for f in dataclasses.fields(config):
            sub = getattr(config, f.name)
            if dataclasses.is_dataclass(sub) and key.startswith(f.name + "_"):
                nested.setdefault(f.name, {})[key[len(f.name) + 1:]] = value
                break
    for name, changes in nested.items():
        sub = top.get(name, getattr(config, name))
        # a nested config's own replace() keeps its settings consistent (JIIOConfig: warm-up within a new budget)
        top[name] = sub.replace(**changes) if callable(getattr(sub, "replace", None)) else \
            dataclasses.replace(sub, **changes)
    try:
        return dataclasses.replace(config, **top)
    except TypeError as exc:   # a wrong type deep inside a validator
        raise DeqConfigError(f"task {task!r}: {exc}") from None
