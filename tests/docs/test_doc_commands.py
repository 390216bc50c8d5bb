"""The non-Python blocks of the docs: ``toml`` blocks parse, and every ``deq ...`` command line in a ``bash``
block names an existing subcommand and only options that command accepts (checked against the installed
plugins' click commands, without running them)."""

from __future__ import annotations

import re
import shlex
import sys

import click
import pytest
from _snippets import pages, rel

_FENCE = re.compile(r"^```(?P<lang>\w+)[^\n]*\n(?P<body>.*?)^```", re.M | re.S)


def fenced(lang: str) -> list[tuple[str, str]]:
    out = []
    for page in pages():
        for m in _FENCE.finditer(page.read_text(encoding="utf-8")):
            if m.group("lang") == lang:
                out.append((rel(page), m.group("body")))
    return out


def deq_lines() -> list[tuple[str, str]]:
    lines = []
    for page, body in fenced("bash"):
        for line in body.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("deq "):
                lines.append((page, line))
    return lines


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11+")
def test_toml_blocks_parse():
    import tomllib

    blocks = fenced("toml")
    assert blocks
    for page, body in blocks:
        tomllib.loads(body)  # raises with the position on error
        assert "[project.entry-points.deq]" in body, f"{page}: a toml block that is not an entry-point example"


def resolve(argv: list[str]) -> tuple[click.Command, list[str]]:
    from deq_core.cli import cli

    cmd: click.Command = cli
    ctx = click.Context(cli, info_name="deq")
    while isinstance(cmd, click.Group) and argv and not argv[0].startswith("-"):
        sub = cmd.get_command(ctx, argv[0])
        assert sub is not None, f"`{ctx.command_path} {argv[0]}` does not exist"
        cmd, ctx, argv = sub, click.Context(sub, info_name=argv[0], parent=ctx), argv[1:]
    return cmd, argv


@pytest.mark.parametrize(("page", "line"), deq_lines(), ids=[f"{p}:{ln}" for p, ln in deq_lines()])
def test_documented_deq_command_exists(page, line):
    cmd, rest = resolve(shlex.split(line)[1:])
    if cmd.context_settings.get("ignore_unknown_options") or cmd.context_settings.get("allow_extra_args"):
        return  # options are passed on (e.g. task-specific ones); the command itself exists
    known = {"--help", "-h"} | {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    unknown = [a.split("=")[0] for a in rest if a.startswith("-") and a.split("=")[0] not in known]
    assert not unknown, f"{page}: `{line}`: {cmd.name} has no option(s) {unknown}; it has {sorted(known)}"


def test_there_are_documented_commands():
    assert any(line.startswith("deq plugins") for _, line in deq_lines())
