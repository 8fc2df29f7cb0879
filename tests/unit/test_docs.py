"""The generated tables in docs/ match the code (run `segflow docs` to refresh)."""

from pathlib import Path

import pytest

from streams.docgen import _BLOCK, render

DOCS = sorted((Path(__file__).parents[2] / "docs").glob("*.md"))


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_generated_blocks_are_current(path):
    text = path.read_text()
    assert render(text) == text, f"{path.name} is stale: run `segflow docs`"


def test_operations_doc_has_every_generated_table():
    text = (Path(__file__).parents[2] / "docs" / "OPERATIONS.md").read_text()
    assert {m.group(2) for m in _BLOCK.finditer(text)} == {"features", "topics", "settings", "campaigns"}
