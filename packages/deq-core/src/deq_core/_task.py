"""The task contract: :class:`AbstractTask` (what ``deq tasks run NAME`` builds and runs) and :class:`TaskOption`.

A task is a runnable experiment with a frozen ``Config`` dataclass of options. ``deq tasks run NAME --opt v``
builds ``registry.get_task(NAME, opt=v)`` (which calls ``TaskClass(**options)``) and calls
``task.run(out, checkpoint=..., progress=...)``; ``deq tasks run NAME --help`` lists :meth:`AbstractTask.options`.
"""

from __future__ import annotations

import abc
import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from ._errors import DeqConfigError

__all__ = ["AbstractTask", "TaskOption"]

_MISSING = dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class TaskOption:
    """One option of a task: a field of its ``Config``.

    Attributes:
        name: the field name (``steps``; on the command line ``--steps``).
        type: the field's type, resolved (``int``, ``float | None``, ``typing.Literal["a", "b"]``, ...).
        default: the default value, or :data:`dataclasses.MISSING` for a required option.
        help: the field's ``metadata["help"]`` (``""`` if it has none).

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class Config:
        ...     steps: int = dataclasses.field(default=100, metadata={"help": "Optimizer steps."})
        >>> (opt,) = TaskOption.from_config(Config)
        >>> opt.name, opt.type, opt.default, opt.help, opt.required
        ('steps', <class 'int'>, 100, 'Optimizer steps.', False)
        >>> opt.convert("20")
        20
    """

    name: str
    type: Any
    default: Any
    help: str = ""

    @property
    def required(self) -> bool:
        """Whether the option has no default."""
        return self.default is _MISSING

    @classmethod
    def from_config(cls, config: type) -> tuple[TaskOption, ...]:
        """The options of a ``Config`` dataclass, in field order (fields with ``init=False`` are left out)."""
        if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
            raise DeqConfigError(f"a task Config must be a dataclass type, got {config!r}")
        try:
            hints = typing.get_type_hints(config)
        except Exception:  # noqa: BLE001 - an unresolvable annotation: keep the raw one
            hints = {}
        out = []
        for f in dataclasses.fields(config):
            if not f.init:
                continue
            default = f.default if f.default is not _MISSING else (
                f.default_factory() if f.default_factory is not _MISSING else _MISSING)
            out.append(cls(f.name, hints.get(f.name, f.type), default, str(f.metadata.get("help", ""))))
        return tuple(out)

    def convert(self, value: Any) -> Any:
        """``value`` as this option's type: a command-line string is parsed (``"20"`` -> ``20`` for an ``int``,
        ``"true"``/``"false"`` for a ``bool``, ``"none"`` for an optional one, a ``Path``); anything else is
        returned as is (the ``Config`` validates it).

        Raises:
            DeqConfigError: a string that does not parse as the option's type, or is not one of a ``Literal``'s.
        """
        if not isinstance(value, str):
            return value
        kinds = _members(self.type)
        if type(None) in kinds and value.strip().lower() in ("none", "null"):
            return None
        literal = [a for k in kinds if typing.get_origin(k) is typing.Literal for a in typing.get_args(k)]
        if literal:
            for choice in literal:
                if str(choice) == value:
                    return choice
            raise DeqConfigError(f"option {self.name!r} must be one of {', '.join(map(repr, literal))}, got {value!r}")
        for kind in (bool, int, float, Path):
            if kind in kinds:
                try:
                    return _parse(kind, value)
                except ValueError:
                    if len([k for k in kinds if k is not type(None)]) == 1:
                        raise DeqConfigError(f"option {self.name!r} expects {_type_name(self.type)}, "
                                             f"got {value!r}") from None
        return value


def _members(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _parse(kind: type, text: str) -> Any:
    if kind is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    return kind(text)


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


class AbstractTask(abc.ABC):
    """Base class of tasks: an experiment ``deq tasks run NAME`` builds from options and runs.

    Subclasses set ``name``, a frozen ``Config`` dataclass whose fields are the options (each may carry
    ``metadata={"help": "..."}``; ``deq tasks run NAME --help`` shows it) and implement :meth:`run`.

    Arguments:
        config: a ``Config`` instance (or a mapping of its fields); ``None`` = the defaults.
        **options: ``Config`` fields to set (over ``config``); an unknown name raises :class:`DeqConfigError`
            listing the valid ones.

    Attributes:
        config: the ``Config`` instance in use (``None`` for a task without a ``Config``).

    Raises:
        DeqConfigError: an unknown option, a required option missing, or the ``Config``'s own validation.

    Example:
        >>> import dataclasses, json, tempfile
        >>> from pathlib import Path
        >>> from deq_core import AbstractTask
        >>> class Count(AbstractTask):
        ...     name = "count"
        ...     @dataclasses.dataclass(frozen=True)
        ...     class Config:
        ...         n: int = dataclasses.field(default=3, metadata={"help": "How far to count."})
        ...     def run(self, out, *, checkpoint=None, progress=True):
        ...         out = Path(out); out.mkdir(parents=True, exist_ok=True)
        ...         metrics = {"total": sum(range(self.config.n + 1))}
        ...         (out / "metrics.json").write_text(json.dumps(metrics))
        ...         return metrics
        >>> [o.name for o in Count.options()], Count(n=4).run(tempfile.mkdtemp())
        (['n'], {'total': 10})
        >>> Count(m=4)
        Traceback (most recent call last):
        ...
        deq_core._errors.DeqConfigError: task 'count' has no option 'm'; valid options: n
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type | None] = None

    def __init__(self, config: Any = None, **options: Any) -> None:
        cls = type(self)
        label = cls.name or cls.__name__
        if cls.Config is None:
            if config is not None or options:
                raise DeqConfigError(f"task {label!r} takes no options, got {sorted(options) or config!r}")
            self.config = None
            return
        valid = [o.name for o in cls.options()]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            close = difflib.get_close_matches(unknown[0], valid, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DeqConfigError(f"task {label!r} has no option {', '.join(map(repr, unknown))}{hint}; "
                                 f"valid options: {', '.join(valid) or '(none)'}")
        if config is None:
            base: dict[str, Any] = {}
        elif isinstance(config, cls.Config):
            base = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
        elif isinstance(config, Mapping):
            base = dict(config)
        else:
            raise DeqConfigError(f"task {label!r}: config must be a {cls.Config.__name__}, a mapping or None, "
                                 f"got {type(config).__name__}")
        base.update(options)
        try:
            self.config = cls.Config(**base)
        except TypeError as e:  # missing required fields, unknown keys in a mapping
            raise DeqConfigError(f"task {label!r}: {e}") from None

    @classmethod
    def options(cls) -> tuple[TaskOption, ...]:
        """The options (``Config`` fields) with type, default and help, in field order."""
        return () if cls.Config is None else TaskOption.from_config(cls.Config)

    @abc.abstractmethod
    def run(self, out: Path, *, checkpoint: Path | None = None, progress: bool = True) -> Mapping[str, Any]:
        """Run the task and write its results into the directory ``out`` (created if needed).

        Arguments:
            out: output directory; the task writes ``metrics.json`` there (and PNGs, and ``model.safetensors``
                when it trains a model).
            checkpoint: a ``model.safetensors`` written by an earlier run: load it instead of training.
            progress: show a progress bar (``deq tasks run`` passes ``True`` only on a terminal).

        Returns:
            The metrics (the content of ``metrics.json``).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})" if self.config is not None else f"{type(self).__name__}()"
