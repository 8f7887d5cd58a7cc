"""Inline SVG charts: the numbers drawn are the numbers given, text is escaped, nothing external."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

from healthmate_features.pictures import svg

NS = "{http://www.w3.org/2000/svg}"


def _marks(text: str) -> list[tuple[str | None, str | None]]:
    root = ET.fromstring(text)  # well-formed XML, or this raises
    return [(m.get("data-label"), m.get("data-value")) for m in root.iter() if "mark" in (m.get("class") or "").split()]


def test_bars_carry_their_values_and_escape_labels():
    text = svg.bars([("<b>&x", 2.5, "ok"), ("y", math.inf, "late"), ("z", 0.0, "warn")], name="n", title="t", rule=1.0)
    assert _marks(text) == [("<b>&x", "2.5"), ("y", ""), ("z", "0.0")]
    assert "<b>" not in text and "&lt;b&gt;&amp;x" in text
    widths = [float(w) for w in re.findall(r'<rect class="mark [^"]*" x="[^"]*" y="[^"]*" width="([^"]*)"', text)]
    assert widths[0] > widths[2] and widths[1] == 1.0  # an infinite value draws no bar, only its stub


def test_grouped_bars_and_lines_and_lineage_are_well_formed():
    grouped = svg.grouped_bars(["a", "b"], {"1.0.0": [1.0, 2.0], "1.0.1": [3.0, 4.0]}, name="g", title="t")
    assert _marks(grouped) == [("a", "1.0"), ("a", "3.0"), ("b", "2.0"), ("b", "4.0")]
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    drawn = svg.lines({"staging": [(now, 0.7), (now + timedelta(days=1), 0.75)]}, name="l", title="t")
    assert [v for _, v in _marks(drawn)] == ["0.7", "0.75"]
    tree = svg.lineage(
        [
            {"version": "1.0.0", "parent_version": None, "bump": "initial"},
            {"version": "1.1.0", "parent_version": "1.0.0", "bump": "minor"},
        ],
        name="lin",
        title="t",
    )
    assert _marks(tree) == [("1.0.0", ""), ("1.1.0", "1.0.0")] and "minor" in tree
    for text in (grouped, drawn, tree):
        assert "http" not in text.replace("http://www.w3.org/2000/svg", "")
