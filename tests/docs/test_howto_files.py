"""A how-to that walks through a package of the repository shows its files verbatim: every fenced block with
``title="PATH"`` (PATH relative to the repository root) is exactly the content of that file."""

from __future__ import annotations

import re

import pytest
from _snippets import ROOT, pages, rel

_TITLED = re.compile(r'^```(?P<lang>\w+)[ \t]+title="(?P<path>[^"]+)"[^\n]*\n(?P<body>.*?)^```[ \t]*$', re.M | re.S)


def titled_blocks() -> list[tuple[str, str, str]]:
    out = []
    for page in pages():
        for m in _TITLED.finditer(page.read_text(encoding="utf-8")):
            out.append((rel(page), m.group("path"), m.group("body")))
    return out


@pytest.mark.parametrize(("page", "path", "body"), titled_blocks(), ids=[f"{p}:{f}" for p, f, _ in titled_blocks()])
def test_titled_block_is_the_file_verbatim(page, path, body):
    file = ROOT / path
    assert file.is_file(), f"{page} shows {path}, which does not exist"
    assert body == file.read_text(encoding="utf-8"), (
        f"{page} shows {path}, but the block differs from the file: copy the file into the page")


def test_the_task_how_to_shows_its_package():
    shown = {path for page, path, _ in titled_blocks() if page == "docs/how-to/write-a-task-plugin.md"}
    assert {"examples/deq-task-example/src/deq_task_example/task.py",
            "examples/deq-task-example/src/deq_task_example/plugin.py",
            "examples/deq-task-example/pyproject.toml"} <= shown
