"""Tables in docs/ generated from code, so the docs cannot drift from it.

``segflow docs`` rewrites the marked blocks in docs/*.md; a unit test fails
when a block is out of date.
"""

from __future__ import annotations

import re
from pathlib import Path

from features.catalogue import CATALOGUE
from streams.settings import Settings
from streams.topics import TOPICS


def features_table() -> str:
    rows = ["| feature | unit | window | description |", "|---|---|---|---|"]
    for f in CATALOGUE:
        rows.append(f"| `{f.name}` | {f.unit} | {f'{f.window}d' if f.window else '-'} | {f.description} |")
    return "\n".join(rows)


def topics_table() -> str:
    rows = ["| topic | carries |", "|---|---|"]
    rows += [f"| `{name}` | {purpose} |" for name, purpose in TOPICS.describe()]
    return "\n".join(rows)


def settings_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if hasattr(default, "get_secret_value"):
            default = default.get_secret_value()
        rows.append(f"| `SEGFLOW_{name.upper()}` | `{default}` | {field.description or ''} |")
    return "\n".join(rows)


def campaigns_table() -> str:
    from segmenter.campaigns import default_campaigns

    rows = ["| campaign | fires when a customer | control | cap | cooldown |", "|---|---|---|---|---|"]
    for c in default_campaigns().campaigns:
        p = c.policy
        cap = f"{p.max_triggers} per {p.period_ms / 86_400_000:g} d" if p.max_triggers else "-"
        cooldown = f"{p.cooldown_ms / 86_400_000:g} d" if p.cooldown_ms else "-"
        rows.append(f"| `{c.name}` | {c.describe()} | {c.control_share:.0%} | {cap} | {cooldown} |")
    return "\n".join(rows)


def dead_letter_reasons_table() -> str:
    from streams.events import DEAD_LETTER_REASONS

    rows = ["| `segflow.reason` | meaning |", "|---|---|"]
    rows += [f"| `{reason}` | {meaning} |" for reason, meaning in DEAD_LETTER_REASONS.items()]
    return "\n".join(rows)


GENERATORS = {
    "features": features_table,
    "topics": topics_table,
    "settings": settings_table,
    "campaigns": campaigns_table,
    "dead_letter_reasons": dead_letter_reasons_table,
}
_BLOCK = re.compile(r"(<!-- BEGIN GENERATED: (\w+) -->\n)(.*?)(<!-- END GENERATED -->)", re.S)


def render(text: str) -> str:
    return _BLOCK.sub(lambda m: m.group(1) + GENERATORS[m.group(2)]() + "\n" + m.group(4), text)


def update(docs_dir: Path) -> list[Path]:
    """Regenerate every marked block under ``docs_dir``; return the files changed."""
    changed = []
    for path in sorted(docs_dir.glob("*.md")):
        text = path.read_text()
        new = render(text)
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed
