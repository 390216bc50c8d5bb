"""The ``deq`` command line: ``deq plugins [--json]`` here; other packages add subcommands through the
``deq_commands(cli)`` hook, so a package that is not installed simply has no subcommand.

Bad input ends with one ``error: ...`` line on stderr and exit status 1 (2 for usage errors), never a
traceback (set ``DEQ_DEBUG=1`` to get one). Plugin warnings are shown as one ``warning: ...`` line each.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import click

from . import __version__
from ._errors import DeqError
from .plugins import KINDS_PLURAL, DeqPluginWarning, PluginManager, get_manager, install_hint

__all__ = ["cli", "main"]


class _DeqGroup(click.Group):
    """A group that adds the plugins' commands (from the manager in use) after its own built-in ones.

    Looking up one command loads only deq's own plugins when one of them adds it; listing loads every plugin.
    A mistyped command gets the closest match, and a command of an optional deq package that is not
    installed gets the ``pip install`` line.
    """

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
        if cmd_name in self.commands:  # `deq plugins` lists every plugin anyway: report clashes with it
            self._plugins()
            return self.commands[cmd_name]
        manager = get_manager()
        found = manager.command(cmd_name)
        owners = manager.conflicts().get("command", {}).get(cmd_name) if found is None else None
        if found is None and owners:
            raise click.UsageError(
                f"command {cmd_name!r} is added by several plugins ({', '.join(map(repr, owners))}); "
                f"uninstall one or hide it with DEQ_DISABLE_PLUGINS={owners[-1]}"
            )
        return found

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                             list[str]]:
        name = args[0]
        cmd = self.get_command(ctx, name)
        if cmd is None and not ctx.resilient_parsing:
            if name.startswith("-"):
                self.parse_args(ctx, ctx.args)  # click's own "no such option" error
            manager = get_manager()
            hint = install_hint("command", name, manager.sources,
                                {p.name: p.status for p in manager.plugins()})
            known = self.list_commands(ctx)
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            if hint:
                msg = f"unknown command {name!r}. {hint}"
            elif close:
                msg = f"unknown command {name!r}. Did you mean {close[0]!r}?"
            else:
                msg = f"unknown command {name!r}."
            raise click.UsageError(f"{msg} Commands: {', '.join(known)}.", ctx)
        return (cmd.name if cmd is not None else None), cmd, args[1:]


@click.group(cls=_DeqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="deq")
def cli() -> None:
    """deq: deep equilibrium models for PyTorch."""


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--traceback", "show_tb", is_flag=True, help="Also print the traceback of each broken plugin.")
def plugins_command(as_json: bool, show_tb: bool) -> None:
    """List the installed plugins: distribution, version, status, hooks and what each provides (aliases in
    parentheses). Status: active, broken, disabled, conflicted, or shadowed (a name also provided by deq's
    own packages, which win; the plugin's is reachable as PLUGIN:NAME)."""
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
    for kind, plural in KINDS_PLURAL.items():
        out[plural] = {
            name: {**entry.describe(), "provider": manager.provider(kind, name)}
            for name, entry in manager.entries(kind).items()
        }
    out["conflicts"] = {kind: {n: list(p) for n, p in table.items()} for kind, table in manager.conflicts().items()
                        if table}
    out["shadowed"] = {kind: {n: list(p) for n, p in table.items()} for kind, table in manager.shadowed().items()
                       if table}
    return out


def _plugins_table(manager: PluginManager) -> str:
    rows = [("DISTRIBUTION", "VERSION", "STATUS", "HOOKS", "PROVIDES")]
    notes = []
    for p in manager.plugins():
        def named(n: str, p=p) -> str:
            return f"{n} ({', '.join(p.aliases[n])})" if n in p.aliases else n

        provides = "; ".join(f"{kind}: {', '.join(map(named, names))}"
                             for kind, names in p.provides.items() if names) or "-"
        label = p.distribution or p.name
        if p.distribution and p.name != p.distribution:
            label = f"{p.distribution} ({p.name})"
        hooks = ",".join(h.removeprefix("deq_") for h in p.hooks) or "-"
        rows.append((label, p.version or "-", p.status, hooks, provides if p.status != "broken" else "-"))
        if p.error:
            notes.append(f"  {p.name}: {p.error}")
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
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
            click.echo(f"error: {_one_line(exc)}", err=True)
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


def _one_line(exc: click.ClickException) -> str:
    """The exception's message on one line, with the command to ask for help for a usage error."""
    msg = " ".join(exc.format_message().split())
    if isinstance(exc, click.UsageError) and exc.ctx is not None:
        msg += f" (see '{exc.ctx.command_path} --help')"
    return msg


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
