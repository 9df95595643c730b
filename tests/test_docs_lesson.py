"""docs/lesson.md runs: every ```python block, in order, in one namespace.

A ```text block that directly follows a ```python block (only blank lines between) is the output
that block must print, compared exactly.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "lesson.md"
BLOCK = re.compile(
    r"^```python\n(.*?)^```\n(?:\s*^```text\n(.*?)^```\n)?", re.MULTILINE | re.DOTALL
)


def doc_blocks(markdown: str) -> list[tuple[str, str | None]]:
    """(code, expected output or None) for each ```python block, in order."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(markdown)]


def test_doc_block_parser():
    markdown = (
        "# t\n```python\nprint(1)\n```\n\n```text\n1\n```\nprose\n"
        "```python\nx = 2\n```\nmore\n```text\nnot an output\n```\n"
    )
    assert doc_blocks(markdown) == [("print(1)\n", "1\n"), ("x = 2\n", None)]


def test_lesson_doc_runs_and_prints_what_it_shows():
    blocks = doc_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 8, "docs/lesson.md lost its python blocks"
    assert sum(expected is not None for _, expected in blocks) >= 6
    namespace: dict = {"__name__": "docs_lesson"}
    for number, (code, expected) in enumerate(blocks, start=1):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            try:
                exec(compile(code, f"docs/lesson.md python block {number}", "exec"), namespace)
            except Exception as exc:  # name the block, keep the traceback
                pytest.fail(f"python block {number} of docs/lesson.md raised {exc!r}\n{code}")
        if expected is not None:
            assert printed.getvalue() == expected, f"python block {number} printed something else"
