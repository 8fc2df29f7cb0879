"""Pure parts of the ops queries and the web module (no Redis)."""

import pytest

from streams import queries, web
from streams.queries import QueryError
from streams.settings import Settings

CATALOGUE = {"lifecycle": ("new", "active", "dormant"), "behaviour": ("steady", "dormant")}


def test_catalogue_comes_from_the_segmentation_config():
    cat = queries.segment_catalogue(Settings())
    assert cat["lifecycle"] == ("new", "active", "at_risk", "dormant", "churned")
    assert set(cat) == {"lifecycle", "behaviour", "value", "persona"}


@pytest.mark.parametrize(
    "name, segmentation, message",
    [
        ("dormant", None, "more than one segmentation"),
        ("nope", None, "unknown segment 'nope'"),
        ("lifecycle:nope", None, "unknown lifecycle segment 'nope'"),
        ("value:dormant", None, "unknown segmentation 'value'"),
        ("lifecycle:dormant", "behaviour", "contradicts"),
    ],
)
def test_bad_segment_names_are_explained(name, segmentation, message):
    with pytest.raises(QueryError, match=message):
        queries.resolve_segment(CATALOGUE, name, segmentation)


@pytest.mark.parametrize("text", ["", "1", "h", "-1h", "0m", "1w", "1.5.2h", None])
def test_bad_durations(text):
    with pytest.raises(QueryError, match="duration"):
        queries.parse_duration(text)


def test_flows_table_is_a_matrix_per_segmentation():
    view = {
        "since": "2026-01-01T10:00:00+00:00",
        "until": "2026-01-01T11:30:00+00:00",
        "hours": 2,
        "total": 6,
        "segmentations": {"lifecycle": [{"from": None, "to": "new", "count": 4}, {"from": "new", "to": "active", "count": 2}]},
    }
    text = queries.format_flows(view, CATALOGUE)
    lines = text.splitlines()
    assert "lifecycle: 6 changes" in text
    header = next(line for line in lines if line.split() == ["new", "active", "dormant"])
    entered = next(line for line in lines if line.startswith("(entered)"))
    new_row = next(line for line in lines if line.startswith("new "))
    assert entered.split()[1:] == ["4", ".", "."] and new_row.split()[1:] == [".", "2", "."], (header, entered, new_row)
    assert "no segment changes" in queries.format_flows({**view, "total": 0, "segmentations": {}})


def test_members_text_says_when_truncated():
    text = queries.format_members({"segmentation": "lifecycle", "segment": "new", "size": 3, "members": ["a", "b"], "truncated": True})
    assert text.splitlines() == ["lifecycle:new  3 members (showing 2; --limit for more)", "a", "b"]


def test_static_files_are_vendored_not_fetched():
    files = web.static_files()
    assert {"dashboard.html", "dashboard.js", "dashboard.css", "uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE.txt"} <= set(files)
    html = files["dashboard.html"].read_text()
    assert "://" not in html  # nothing from a CDN: these machines have no internet at runtime
    assert 'src="static/uPlot.iife.min.js"' in html
