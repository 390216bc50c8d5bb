"""Every ```python block in docs/**/*.md and in the READMEs runs, in page order, on CPU, each within a few seconds.

Blocks of one page share a namespace (like a notebook). A block may be left out only when it needs a GPU or
several ``torchrun`` processes: write ```` ```python skip=gpu ```` (or ``skip=torchrun``) or put
``<!-- skip: gpu -->`` on the line before the fence. Skipped blocks are counted and capped.
"""

from __future__ import annotations

import sys
import types
import warnings

import pytest
from _snippets import SKIP_REASONS, blocks, pages, rel

MAX_SKIPPED = 4

PAGES = [p for p in pages() if blocks(p)]


@pytest.mark.parametrize("page", PAGES, ids=[rel(p) for p in PAGES])
def test_page_snippets_run(page, tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)  # snippets that write files write them here
    monkeypatch.setenv("MPLBACKEND", "Agg")
    module = types.ModuleType("deq_docs_page")  # a real module: dataclasses and pickle look classes up in it
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    dtype = torch.get_default_dtype()
    ran = 0
    try:
        for block in blocks(page):
            if block.skip is not None:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                try:
                    exec(compile(block.code, block.id, "exec"), namespace)  # noqa: S102
                except Exception as e:  # say which block failed
                    raise AssertionError(f"{block.id}: {type(e).__name__}: {e}") from e
            ran += 1
    finally:
        torch.set_default_dtype(dtype)
    assert ran > 0, f"{rel(page)}: every python block is skipped"


def test_skipped_blocks_are_justified_and_few():
    skipped = [b for p in pages() for b in blocks(p) if b.skip is not None]
    total = sum(len(blocks(p)) for p in pages())
    bad = [b.id for b in skipped if b.skip not in SKIP_REASONS]
    assert not bad, f"blocks skipped without a reason in {SKIP_REASONS}: {bad}"
    print(f"\n{total - len(skipped)} python blocks run, {len(skipped)} skipped: {[b.id for b in skipped]}")
    ids = [b.id for b in skipped]
    assert len(skipped) <= MAX_SKIPPED, f"{len(skipped)} skipped blocks (at most {MAX_SKIPPED}): {ids}"
    assert total - len(skipped) >= 10, "the docs should have runnable examples"


def test_extractor_finds_blocks_and_skip_markers(tmp_path, monkeypatch):
    import _snippets

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "p.md").write_text(
        "# t\n\n```python\na = 1\n```\n\n<!-- skip: gpu -->\n```python\nb = 2\n```\n\n"
        "```python skip=torchrun\nc = 3\n```\n\n```bash\nls\n```\n\n- item\n\n    ```python\n    d = 4\n    ```\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(_snippets, "DOCS", docs)
    found = _snippets.blocks(docs / "p.md")
    assert [(b.code.strip(), b.skip) for b in found] == [("a = 1", None), ("b = 2", "gpu"), ("c = 3", "torchrun"),
                                                         ("d = 4", None)]
    assert found[0].id == "docs/p.md:3"

