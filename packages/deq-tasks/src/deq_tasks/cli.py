"""``deq tasks``: list and run the tasks registered through the ``deq_tasks`` hook.

    deq tasks list
    deq tasks run inverse --mask block --out runs/inv
    deq tasks run generative --data my_images/ --steps 50 --out runs/gen
    deq tasks run generative --checkpoint runs/gen/model.safetensors --out runs/gen2
    deq tasks run generative --help          # that task's options, with help text and defaults

``run TASK`` has the common options ``--out``, ``--checkpoint`` and ``--progress/--no-progress``; every other option
is a field of the task's ``Config`` (``--n-train 500``, ``--jiio-alpha 0.05``; ``-`` and ``_`` are the same),
typed from its annotation. Bad input (an unknown option, a value of the wrong type or range, a checkpoint of
another model) ends with one ``error: ...`` line and exit status 1 before anything runs.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from deq_core import DeqConfigError

__all__ = ["parse_value", "tasks_group"]


@click.group("tasks")
def tasks_group() -> None:
    """JIIO tasks (generative, inverse, adversarial, meta-learning), each with its baseline."""


@tasks_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(as_json: bool) -> None:
    """List the registered tasks."""
    from deq_core import registry

    entries = registry.tasks()
    if as_json:
        click.echo(json.dumps({n: e.describe() for n, e in sorted(entries.items())}, indent=2))
        return
    if not entries:
        click.echo("(no tasks registered)")
        return
    width = max(len(n) for n in entries)
    for name, entry in sorted(entries.items()):
        click.echo(f"{name.ljust(width)}  {entry.summary}")


# ------------------------------------------------------------------------------------------ value parsing
_NONE = ("none", "null")


def parse_value(text: str, tp: Any) -> Any:
    """Parse command-line ``text`` as a value of the annotation ``tp``.

    ``int``, ``float``, ``bool`` (true/false/yes/no/on/off/1/0), ``str``, ``X | None`` (``none``), tuples
    (comma-separated: ``16,24``), mappings (``m=30,damping=0.5``) and unions (the first member that parses).

    Raises:
        DeqConfigError: the text is not a value of that type (the message says what was expected).

    Example:
        >>> parse_value("16,24", tuple[int, int]), parse_value("none", int | None), parse_value("m=30", Mapping)
        ((16, 24), None, {'m': 30})
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.strip().lower() in _NONE:
            return None
        errors = []
        for member in (a for a in args if a is not type(None)):
            try:
                return parse_value(text, member)
            except DeqConfigError as exc:
                errors.append(str(exc))
        raise DeqConfigError(" or ".join(errors) if errors else f"cannot parse {text!r}")
    if tp is bool:
        low = text.strip().lower()
        if low in ("true", "yes", "on", "1"):
            return True
        if low in ("false", "no", "off", "0"):
            return False
        raise DeqConfigError(f"expected true or false, got {text!r}")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise DeqConfigError(f"expected an integer, got {text!r}") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise DeqConfigError(f"expected a number, got {text!r}") from None
    if tp is str:
        return text
    if origin is tuple or tp is tuple:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if args and args[-1] is not Ellipsis and len(args) != len(parts):
            raise DeqConfigError(f"expected {len(args)} comma-separated values, got {text!r}")
        kinds = [args[0]] * len(parts) if args and args[-1] is Ellipsis else list(args) or [str] * len(parts)
        return tuple(parse_value(p, k) for p, k in zip(parts, kinds))
    if origin in (Mapping, dict, typing.Mapping) or tp in (Mapping, dict):
        out: dict[str, Any] = {}
        for item in (p.strip() for p in text.split(",") if p.strip()):
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise DeqConfigError(f"expected key=value pairs separated by commas, got {text!r}")
            out[key.strip()] = _auto(value.strip())
        return out
    return text   # other annotations (solver objects given by name, ...): the string itself


def _auto(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    low = text.lower()
    return True if low == "true" else False if low == "false" else text


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return "|".join(dict.fromkeys(names)) + ("|none" if type(None) in args else "")
    if origin is tuple:
        return "A,B,..." if args and args[-1] is Ellipsis else ",".join(_type_name(a) for a in args)
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        return "K=V,..."
    return {int: "INT", float: "NUMBER", str: "TEXT", bool: "BOOL"}.get(tp, "TEXT")


class _Value(click.ParamType):
    def __init__(self, tp: Any) -> None:
        self.tp, self.name = tp, _type_name(tp)

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return parse_value(value, self.tp)
        except DeqConfigError as exc:
            self.fail(str(exc), param, ctx)


def _show(default: Any) -> str:
    if default is None:
        return "none"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    if isinstance(default, Mapping):
        return ",".join(f"{k}={v}" for k, v in default.items())
    return str(default)


# ------------------------------------------------------------------------------------------ run TASK
class _TaskCommand(click.Command):
    """A task's command: usage errors become one ``error:`` line (a :class:`DeqConfigError`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise DeqConfigError(f"deq tasks run {self.name}: {exc.format_message()}") from None


_COMMON = ("out", "checkpoint", "progress")


def _task_command(name: str, factory: Any) -> click.Command:
    options = list(factory.options()) if hasattr(factory, "options") else []
    params: list[click.Parameter] = [
        click.Option(["--out"], type=click.Path(file_okay=False, path_type=Path), default=None,
                     help=f"Folder for metrics.json, PNGs and the checkpoint  [default: runs/{name}]"),
        click.Option(["--checkpoint"], type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
                     help="Evaluate this model.safetensors (from an earlier run of this task) instead of training."),
        click.Option(["--progress/--no-progress"], default=None, help="Progress bar  [default: on a terminal]"),
    ]
    for opt in options:
        if opt.name in _COMMON:
            continue
        flag = "--" + opt.name.replace("_", "-")
        text = (opt.help or opt.name.replace("_", " ")) + f"  [default: {_show(opt.default)}]"
        if opt.type is bool:
            params.append(click.Option([f"{flag}/--no-{flag[2:]}", opt.name], default=None, help=text))
        else:
            params.append(click.Option([flag, opt.name], type=_Value(opt.type), default=None, help=text))

    def callback(out: Path | None, checkpoint: Path | None, progress: bool | None, **given: Any) -> None:
        from deq_core import registry

        chosen = {k: v for k, v in given.items() if v is not None}
        task = registry.get_task(name, **chosen)   # validates every option before anything runs
        out = Path("runs") / name if out is None else out
        show = sys.stderr.isatty() if progress is None else progress
        metrics = task.run(out, checkpoint=checkpoint, progress=show)
        click.echo(f"wrote {out / 'metrics.json'}")
        click.echo(json.dumps(_headline(metrics), indent=2, default=str))
        cmp = metrics.get("comparison")
        for text in cmp.get("warnings", ()) if isinstance(cmp, Mapping) else ():
            click.echo(f"warning: {text}", err=True)

    doc = " ".join((factory.__doc__ or "").strip().split("\n\n")[0].replace("``", "").split())
    return _TaskCommand(name, params=params, callback=callback, help=doc or f"Run the task {name!r}.",
                        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})


class _RunGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        from deq_core import registry

        return sorted(registry.tasks())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from deq_core import registry

        entries = registry.tasks()
        if cmd_name not in entries:
            registry.get_task(cmd_name) if cmd_name else None   # raises UnknownNameError listing the tasks
            return None
        return _task_command(cmd_name, entries[cmd_name].factory)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            raise DeqConfigError(f"deq tasks run: {exc.format_message()}") from None


@tasks_group.group("run", cls=_RunGroup)
def run_group() -> None:
    """Run TASK (train, evaluate JIIO against its baseline) and write the results into --out.

    `deq tasks run TASK --help` lists that task's options."""


def _headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The few numbers ``deq tasks run`` prints: deq-tasks' own headline keys, or, for a task that has none of
    them (a third-party plugin's), its top-level scalars (numbers, strings, booleans)."""
    keys = ("task", "psnr_jiio", "psnr_adam", "accuracy", "speedup")
    out: dict[str, Any] = {k: metrics[k] for k in keys if k in metrics}
    if not out and "comparison" not in metrics:
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}
    cmp = metrics.get("comparison")
    if isinstance(cmp, Mapping):
        out["speedup"] = cmp.get("speedup", {}).get("adam_time_to_jiio_objective_over_jiio_time")
        out["jiio_reaches_adam_objective"] = cmp.get("speedup", {}).get("jiio_reaches_adam_objective")
        out["objective"] = {"jiio": cmp.get("jiio", {}).get("objective"), "adam": cmp.get("adam", {}).get("objective")}
        if cmp.get("void"):
            out["void"] = True     # the warning line says why
    return out
