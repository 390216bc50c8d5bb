"""``deq tasks``: list and run the JIIO tasks registered through the ``deq_tasks`` hook.

    deq tasks list
    deq tasks run inverse --mask block --out runs/inv
    deq tasks run generative --data digits --steps 50 --out runs/gen
    deq tasks run generative --checkpoint runs/gen/model.safetensors --out runs/gen2

``run`` takes the common options below; any other ``--name value`` pair is a task option (``--mask block``,
``--alpha 0.03``; ``-`` and ``_`` are the same), checked against the task's options before anything runs. A task
object is a ``deq_core.AbstractTask`` with ``run(out, *, checkpoint=None, progress=True) -> dict`` and writes
``metrics.json``, PNGs and ``model.safetensors`` into ``out``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

__all__ = ["parse_task_options", "tasks_group"]


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


@tasks_group.command("run", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("task")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for metrics.json, PNGs and model.safetensors.")
@click.option("--steps", type=int, default=None, help="Training steps (task option 'steps').")
@click.option("--epochs", type=float, default=None, help="Training epochs (task option 'epochs'; overrides --steps).")
@click.option("--seed", type=int, default=None, help="Random seed (task option 'seed').")
@click.option("--checkpoint", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Load this model.safetensors instead of training.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@click.pass_context
def run_command(ctx: click.Context, task: str, out: Path, steps: int | None, epochs: float | None, seed: int | None,
                checkpoint: Path | None, progress: bool | None) -> None:
    """Run TASK (train, evaluate with JIIO and its baseline) and write the results into --out."""
    from deq_core import registry

    options = parse_task_options(ctx.args)
    for key, value in (("steps", steps), ("epochs", epochs), ("seed", seed)):
        if value is not None:
            options[key] = value
    obj = registry.get_task(task, **options)
    show = sys.stderr.isatty() if progress is None else progress
    from deq_core import AbstractTask

    if isinstance(obj, AbstractTask):  # the deq_core.AbstractTask contract
        metrics = obj.run(out, checkpoint=checkpoint, progress=show)
    else:
        metrics = obj.run(out, checkpoint=checkpoint, progress_bar=show)
    click.echo(f"wrote {out / 'metrics.json'}")
    click.echo(json.dumps(_headline(metrics), indent=2))


def parse_task_options(args: list[str]) -> dict[str, Any]:
    """``["--mask", "block", "--alpha", "0.03", "--vae", "false"]``
    -> ``{"mask": "block", "alpha": 0.03, "vae": False}``.

    Raises:
        click.UsageError: a stray value or an option without a value.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        key = args[i]
        if not key.startswith("--") or len(key) < 3:
            raise click.UsageError(f"unexpected argument {key!r}; task options are given as --name value")
        name, eq, value = key[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise click.UsageError(f"task option --{name} needs a value (e.g. --{name} VALUE)")
            value = args[i + 1]
            i += 1
        out[name.replace("-", "_")] = _convert(value)
        i += 1
    return out


def _convert(text: str) -> Any:
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not isinstance(v, (list, dict)) or k in ("jiio", "adam")}
