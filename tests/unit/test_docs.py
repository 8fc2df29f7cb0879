"""The generated tables in docs/ match the code (run `segflow docs` to refresh)."""

from pathlib import Path

import pytest

from lab.docgen import _BLOCK, render

DOCS = sorted((Path(__file__).parents[2] / "docs").glob("*.md"))


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_generated_blocks_are_current(path):
    text = path.read_text()
    assert render(text) == text, f"{path.name} is stale: run `segflow docs`"


def test_operations_doc_has_every_generated_table():
    text = (Path(__file__).parents[2] / "docs" / "OPERATIONS.md").read_text()
    assert {m.group(2) for m in _BLOCK.finditer(text)} == {"features", "topics", "settings", "campaigns", "dead_letter_reasons"}


def test_every_dead_letter_reason_the_code_uses_is_documented():
    """Reasons are string literals at their raise/append sites; each must be in DEAD_LETTER_REASONS."""
    import re

    from streams.events import DEAD_LETTER_REASONS

    root = Path(__file__).parents[2]
    source = "\n".join(p.read_text() for d in ("streams", "features") for p in (root / d).glob("*.py"))
    used = set(re.findall(r'InvalidEvent\(\s*"(\w+)"', source)) | set(re.findall(r'DeadLetter\(\s*msg,\s*"(\w+)"', source))
    assert {"bad_json", "too_late", "customer_limit"} <= used  # the patterns still find the sites
    assert used <= set(DEAD_LETTER_REASONS), used - set(DEAD_LETTER_REASONS)
