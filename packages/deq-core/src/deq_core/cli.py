"""The ``deq`` command line: ``deq plugins [--json]`` here; other packages add subcommands through the
``deq_commands(cli)`` hook, so a package that is not installed simply has no subcommand.

Bad input ends with one ``error: ...`` line on stderr and exit status 1 (2 for usage errors), never a
traceback (set ``DEQ_DEBUG=1`` to get one). Plugin warnings are shown as one ``warning: ...`` line each.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import click

from . import __version__
from ._errors import DeqError
from .plugins import DeqPluginWarning, PluginManager, get_manager

__all__ = ["cli", "main"]


class _DeqGroup(click.Group):
    """A group that adds the plugins' commands (from the manager in use) after its own built-in ones."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cache: tuple[PluginManager, dict[str, click.Command]] | None = None

    def _plugins(self) -> dict[str, click.Command]:
        manager = get_manager()
        if self._cache is None or self._cache[0] is not manager:
            found: dict[str, click.Command] = {}
            for name, cmd in manager.commands().items():
                if name in self.commands:  # built-in commands win
                    warnings.warn(f"plugin {manager.command_provider(name)!r} adds a command {name!r} that clashes "
                                  f"with the built-in `deq {name}`; the plugin's one is skipped",
                                  DeqPluginWarning, stacklevel=2)
                    continue
                found[name] = cmd
            self._cache = (manager, found)
        return self._cache[1]

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self._plugins()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        plugin_commands = self._plugins()  # loads the plugins (and reports clashes) for every command
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        found = plugin_commands.get(cmd_name)
        owners = get_manager().conflicts().get("command", {}).get(cmd_name)
        if found is None and owners:
            raise click.UsageError(
                f"command {cmd_name!r} is added by several plugins ({', '.join(map(repr, owners))}); "
                f"uninstall one or hide it with DEQ_DISABLE_PLUGINS={owners[-1]}"
            )
        return found


@click.group(cls=_DeqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="deq")
def cli() -> None:
    """deq: deep equilibrium models for PyTorch."""


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--traceback", "show_tb", is_flag=True, help="Also print the traceback of each broken plugin.")
def plugins_command(as_json: bool, show_tb: bool) -> None:
    """List the installed plugins: distribution, version, status and what each provides."""
    manager = get_manager()
    if as_json:
        click.echo(json.dumps(_plugins_json(manager), indent=2))
        return
    click.echo(_plugins_table(manager))
    if show_tb:
        for name, tb in manager.tracebacks().items():
            click.echo(f"\n--- {name} ---\n{tb}", err=True)


def _plugins_json(manager: PluginManager) -> dict[str, Any]:
    out: dict[str, Any] = {"plugins": [p.to_dict() for p in manager.plugins()]}
    for kind in ("solver", "task", "model"):
        out[f"{kind}s"] = {
            name: {**entry.describe(), "provider": manager.provider(kind, name)}
            for name, entry in manager.entries(kind).items()
        }
    out["conflicts"] = {kind: {n: list(p) for n, p in table.items()} for kind, table in manager.conflicts().items()
                        if table}
    return out


def _plugins_table(manager: PluginManager) -> str:
    rows = [("DISTRIBUTION", "VERSION", "STATUS", "PROVIDES")]
    notes = []
    for p in manager.plugins():
        provides = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in p.provides.items() if names) or "-"
        label = p.distribution or p.name
        if p.distribution and p.name != p.distribution:
            label = f"{p.distribution} ({p.name})"
        rows.append((label, p.version or "-", p.status, provides if p.status != "broken" else "-"))
        if p.error:
            notes.append(f"  {p.name}: {p.error}")
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
    if len(rows) == 1:
        lines.append("(no plugins installed)")
    if notes:
        lines += ["", "Problems:", *notes]
    return "\n".join(line.rstrip() for line in lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deq`` console script; returns the exit status."""
    debug = os.environ.get("DEQ_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeqPluginWarning)
        try:
            result = cli.main(args=list(argv) if argv is not None else None, prog_name="deq", standalone_mode=False)
            code = result if isinstance(result, int) and not isinstance(result, bool) else 0
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except click.ClickException as exc:
            exc.show()
            code = exc.exit_code
        except click.Abort:
            click.echo("Aborted!", err=True)
            code = 1
        except (DeqError, OSError) as exc:
            if debug:
                raise
            click.echo(f"error: {exc}", err=True)
            code = 1
        finally:
            _replay(caught)
    return code


def _replay(caught: list[warnings.WarningMessage]) -> None:
    seen = set()
    for w in caught:
        if issubclass(w.category, DeqPluginWarning):
            text = str(w.message)
            if text not in seen:
                seen.add(text)
                click.echo(f"warning: {text}", err=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


if __name__ == "__main__":
    sys.exit(main())
