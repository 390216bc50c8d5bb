"""Extract the ```python blocks of the docs and the READMEs (shared by the doc tests)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SKIP_REASONS = ("gpu", "torchrun")
"""The only reasons a block may be left unexecuted: it needs a CUDA device or several torchrun processes."""

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
_SKIP_COMMENT = re.compile(r"<!--\s*skip(?::\s*(?P<reason>[\w-]+))?\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    page: str  # path relative to the repository
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None  # None = run; otherwise the reason ("" when none was given)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    """docs/**/*.md and the READMEs a user reads first (the project's, each package's and each example's)."""
    root = DOCS.parent
    readmes = [root / "README.md", *sorted(root.glob("packages/*/README.md")),
               *sorted(root.glob("examples/*/README.md"))]
    return sorted(DOCS.rglob("*.md")) + [p for p in readmes if p.is_file()]


def rel(page: Path) -> str:
    """A page's path as the tests name it: relative to the repository (``docs/...``, ``packages/.../README.md``)."""
    return page.relative_to(DOCS.parent).as_posix()


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    name = rel(page)
    out = []
    for m in _FENCE.finditer(text):
        info = m.group("info").strip().split()
        if not info or info[0] not in ("python", "py"):
            continue
        skip = None
        opts = info[1:]
        if opts and opts[0].startswith("skip"):
            skip = opts[0].partition("=")[2]
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        c = _SKIP_COMMENT.search(before)
        if c:
            skip = c.group("reason") or ""
        body = m.group("body")
        indent = m.group("indent")
        if indent:
            body = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in body.split("\n"))
        out.append(Block(name, text.count("\n", 0, m.start()) + 1, body, skip))
    return out
