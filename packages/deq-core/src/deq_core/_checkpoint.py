"""Checkpoints: ``save`` / ``load`` of state dicts as safetensors, with a JSON config, a format version and
a sha256 checksum in the metadata, written atomically.

File layout: a plain safetensors file (readable by any safetensors tool) whose string metadata holds

* ``deq.format`` = ``"deq-checkpoint"`` and ``deq.format_version`` = ``"1"``,
* ``deq.config``: the config as JSON (``"null"`` when none),
* ``deq.sha256``: sha256 over the config JSON and, in sorted key order, every tensor's key, dtype, shape
  and raw bytes, verified by :func:`load`,
* ``deq.version``: the deq-core version that wrote it (informational).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._errors import DeqInputError

__all__ = ["FORMAT", "FORMAT_VERSION", "load", "save"]

FORMAT = "deq-checkpoint"
FORMAT_VERSION = 1
_SHOW = 5


_TEMP = re.compile(r"\.tmp(\d+)-[0-9a-f]{8}$")


def _sweep_stale_temps(path: Path) -> None:
    """Remove ``path``'s temp files left by writers that were killed mid-save (their process is gone)."""
    try:
        candidates = list(path.parent.glob(f"{glob.escape(path.name)}.tmp*"))
    except OSError:
        return
    for tmp in candidates:
        m = _TEMP.search(tmp.name[len(path.name):])
        if m is None or tmp.name[:len(path.name)] != path.name:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _alive(pid):
            continue  # a save in progress (this process cleans its own temps on any exception)
        with contextlib.suppress(OSError):
            tmp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def save(path: str | os.PathLike[str], module_or_state_dict: nn.Module | Mapping[str, Tensor],
         config: dict[str, Any] | None = None) -> Path:
    """Write a module's ``state_dict()`` (or a state dict) and a JSON config to ``path`` atomically.

    The file is first written to a temporary file in the same directory, flushed to disk (``fsync``) and
    then renamed over ``path`` (``os.replace``), so a crash leaves either the old file or the new one.

    Arguments:
        path: destination (conventionally ``*.safetensors``); its directory must exist.
        module_or_state_dict: an ``nn.Module`` or a mapping ``{str: Tensor}``. Tensors are stored as they are
            (dtype, shape, bits), moved to the CPU; tensors sharing memory (tied weights) are stored once each.
        config: JSON-serialisable dict saved alongside (e.g. ``DEQ.config()``); tuples come back as lists.

    Returns:
        The path written, as a :class:`pathlib.Path`.

    Raises:
        DeqInputError: a value is not a tensor, a key is not a str, or the config is not JSON-serialisable.
        OSError: the directory does not exist or is not writable.

    Example:
        >>> import tempfile, torch
        >>> from deq_core import save, load
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = save(f"{d}/lin.safetensors", torch.nn.Linear(2, 3), {"width": 3})
        ...     state, config = load(p, torch.nn.Linear(2, 3))
        >>> sorted(state), config
        (['bias', 'weight'], {'width': 3})
    """
    from safetensors.torch import save_file

    from . import __version__

    path = Path(path)
    tensors = _tensors_of(module_or_state_dict)
    config_json = _config_json(config)
    metadata = {
        "deq.format": FORMAT,
        "deq.format_version": str(FORMAT_VERSION),
        "deq.config": config_json,
        "deq.sha256": _checksum(tensors, config_json),
        "deq.version": __version__,
    }
    _sweep_stale_temps(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # honours the umask, unlike mkstemp
    os.close(fd)
    try:
        mode = tmp.stat().st_mode & 0o777
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, mode)  # safetensors recreates the file as 0600
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load(path: str | os.PathLike[str],
         module: nn.Module | None = None) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """Read a checkpoint written by :func:`save`, verify it, and optionally load it into ``module``.

    Arguments:
        path: the checkpoint file.
        module: if given, its parameters and buffers are replaced (``load_state_dict(strict=True)``) after
            checking that keys and shapes match exactly.

    Returns:
        ``(state_dict, config)``: CPU tensors bit-identical to what was saved, and the saved config
        (``None`` when none was given).

    Raises:
        FileNotFoundError: no file at ``path``.
        DeqInputError: the file is truncated or corrupted, is not a deq checkpoint, comes from a newer
            format version, fails its checksum, or does not match ``module`` (the message names the file
            and the missing / unexpected keys and differing shapes).

    Example:
        >>> import tempfile, torch
        >>> from deq_core import save, load
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save(f"{d}/w.safetensors", {"w": torch.arange(3.0)})
        ...     load(f"{d}/w.safetensors", torch.nn.Linear(3, 1))
        Traceback (most recent call last):
        ...
        deq_core._errors.DeqInputError: checkpoint .../w.safetensors does not match Linear: missing keys ...
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (or is not a file)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            state = {key: fh.get_tensor(key) for key in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for bad headers / short files
        raise DeqInputError(
            f"checkpoint {path} cannot be read as safetensors (truncated or corrupted?): {type(exc).__name__}: {exc}"
        ) from exc
    if metadata.get("deq.format") != FORMAT:
        raise DeqInputError(f"{path} is a safetensors file but not a deq checkpoint (no 'deq.format' metadata); "
                            "write checkpoints with deq_core.save")
    version = metadata.get("deq.format_version", "")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise DeqInputError(f"checkpoint {path} has format version {version!r}; this deq-core reads versions "
                            f"up to {FORMAT_VERSION} (upgrade deq-core)")
    config_json = metadata.get("deq.config", "null")
    expected = metadata.get("deq.sha256")
    actual = _checksum(state, config_json)
    if expected != actual:
        raise DeqInputError(f"checkpoint {path} failed its checksum (stored sha256 {expected}, content hashes to "
                            f"{actual}): the file is corrupted or was modified after saving")
    try:
        config = json.loads(config_json)
    except ValueError as exc:  # checksum passed, so only a hand-made file gets here
        raise DeqInputError(f"checkpoint {path} has an invalid config: {exc}") from exc
    if module is not None:
        _check_matches(path, state, module)
        module.load_state_dict(state, strict=True)
    return state, config


def _tensors_of(obj: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise DeqInputError(f"save expects an nn.Module or a dict of tensors, got {type(obj).__name__}")
    out: dict[str, Tensor] = {}
    storages: set[int] = set()
    for key, value in obj.items():
        if not isinstance(key, str):
            raise DeqInputError(f"state dict keys must be str, got {key!r} ({type(key).__name__})")
        if not isinstance(value, Tensor):
            raise DeqInputError(f"state dict entry {key!r} is a {type(value).__name__}, expected a torch.Tensor "
                                "(put non-tensor values in config)")
        t = value.detach().to("cpu")
        ptr = t.untyped_storage().data_ptr()
        whole = t.is_contiguous() and t.storage_offset() == 0 and (
            t.untyped_storage().nbytes() == t.numel() * t.element_size())
        if not whole or ptr in storages:
            t = t.clone(memory_format=torch.contiguous_format)  # safetensors refuses shared storages
        storages.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def _config_json(config: dict[str, Any] | None) -> str:
    if config is not None and not isinstance(config, dict):
        raise DeqInputError(f"config must be a dict or None, got {type(config).__name__}")
    try:
        return json.dumps(config, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise DeqInputError(
            f"config must be JSON-serialisable (str, numbers, bools, None, lists, dicts): {exc}") from exc


def _checksum(tensors: Mapping[str, Tensor], config_json: str) -> str:
    h = hashlib.sha256()
    h.update(f"{FORMAT}/{FORMAT_VERSION}\0{config_json}\0".encode())
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(f"{key}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def _check_matches(path: Path, state: Mapping[str, Tensor], module: nn.Module) -> None:
    want = module.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs module {tuple(want[k].shape)}"
              for k in sorted(set(want) & set(state)) if tuple(state[k].shape) != tuple(want[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {_clip(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_clip(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch ({'; '.join(_clip(shapes))})")
    if problems:
        raise DeqInputError(f"checkpoint {path} does not match {type(module).__name__}: {'; '.join(problems)}")


def _clip(items: list[str]) -> list[str]:
    return items if len(items) <= _SHOW else [*items[:_SHOW], f"... {len(items) - _SHOW} more"]


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
