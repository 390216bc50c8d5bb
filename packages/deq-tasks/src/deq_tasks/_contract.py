"""Stand-in for deq-core's task contract (``deq_core.AbstractTask``, ``deq_core.TaskOption``), being added to
deq-core in parallel. **This module is replaced at merge by** ``from deq_core import AbstractTask, TaskOption``;
it follows the contract in the session's CONTRACTS.md exactly, so nothing else in deq-tasks changes then.

A task is a frozen ``Config`` dataclass (each field may carry ``metadata={"help": ...}``) and a class with
``run(out, *, checkpoint=None, progress=True) -> Mapping``; ``__init__(config=None, **options)`` takes a
``Config`` and/or its field names (unknown names are a :class:`~deq_core.DeqConfigError`).

Example:
    >>> import dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class Cfg:
    ...     steps: int = dataclasses.field(default=3, metadata={"help": "training steps"})
    >>> class Demo(AbstractTask):
    ...     name = "demo"
    ...     Config = Cfg
    ...     def run(self, out, *, checkpoint=None, progress=True):
    ...         return {"steps": self.config.steps}
    >>> Demo(steps=5).run("unused")
    {'steps': 5}
    >>> [(o.name, o.default, o.help) for o in Demo.options()]
    [('steps', 3, 'training steps')]
"""

from __future__ import annotations

import abc
import dataclasses
import difflib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from deq_core import DeqConfigError

__all__ = ["AbstractTask", "TaskOption"]


@dataclasses.dataclass(frozen=True)
class TaskOption:
    """One option of a task, from a field of its ``Config``: ``name``, ``type`` (the resolved annotation),
    ``default`` and ``help``."""

    name: str
    type: Any
    default: Any
    help: str


class AbstractTask(abc.ABC):
    """Base of runnable tasks (``deq tasks run NAME``): a frozen ``Config`` and ``run``."""

    name: ClassVar[str] = "abstract"
    Config: ClassVar[type | None] = None

    def __init__(self, config: Any = None, **options: Any) -> None:
        cls = type(self).Config
        if cls is None:
            if config is not None or options:
                raise DeqConfigError(f"task {self.name!r} takes no options, got {sorted(options) or config!r}")
            self.config = None
            return
        if config is None:
            config = cls()
        elif not isinstance(config, cls):
            raise DeqConfigError(f"task {self.name!r} needs a {cls.__name__}, got {type(config).__name__}")
        if options:
            valid = [f.name for f in dataclasses.fields(cls)]
            unknown = sorted(set(options) - set(valid))
            if unknown:
                close = difflib.get_close_matches(unknown[0], valid, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise DeqConfigError(f"task {self.name!r} has no option {', '.join(map(repr, unknown))}{hint}; "
                                     f"valid options: {', '.join(valid)}")
            config = dataclasses.replace(config, **options)
        self.config = config

    @classmethod
    def options(cls) -> tuple[TaskOption, ...]:
        """The ``Config`` fields as :class:`TaskOption` records (empty without a ``Config``)."""
        if cls.Config is None:
            return ()
        hints = typing.get_type_hints(cls.Config)
        out = []
        for f in dataclasses.fields(cls.Config):
            if not f.init:
                continue
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
            out.append(TaskOption(f.name, hints.get(f.name, Any), default, str(f.metadata.get("help", ""))))
        return tuple(out)

    @abc.abstractmethod
    def run(self, out: Path, *, checkpoint: Path | None = None, progress: bool = True) -> Mapping[str, Any]:
        """Run the task; write ``metrics.json`` (and PNGs, ``model.safetensors`` when it trains a model) into
        ``out``; return the metrics."""
