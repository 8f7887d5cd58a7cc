"""Charts as inline SVG text: bars, grouped bars, lines over time, a version lineage.

No plotting library and no script: each function returns one `<svg class="chart">` element whose
marks carry their numbers (`data-label`, `data-value`), so a page that inlines them opens offline
and a test can read back exactly what is drawn. Colours come from the page's CSS classes
(`s0`..`s5` per series; `ok`, `warn`, `drift`, `late` per status). All text is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from html import escape

WIDTH = 640
_ROW = 18
_LEFT = 190
_SERIES = 6


def bars(
    rows: Sequence[tuple[str, float, str]],
    *,
    name: str,
    title: str,
    unit: str = "",
    rule: float | None = None,
    rule_label: str = "",
) -> str:
    """Horizontal bars, one per (label, value, css class), largest scale from the data; `rule` draws a vertical line."""
    top = max([abs(v) for _, v, _ in rows if _finite(v)] + [rule or 0.0, 1e-12])
    width = WIDTH - _LEFT - 70
    height = 28 + _ROW * max(len(rows), 1) + 10
    parts = [_open(name, title, height)]
    for i, (label, value, css) in enumerate(rows):
        y = 24 + i * _ROW
        size = width * (abs(value) / top) if _finite(value) else 0.0
        parts.append(f'<text class="label" x="{_LEFT - 6}" y="{y + 12}" text-anchor="end">{_esc(label)}</text>')
        parts.append(
            f'<rect class="mark {_esc(css)}" x="{_LEFT}" y="{y + 2}" width="{max(size, 1):.1f}" height="{_ROW - 5}" '
            f'data-label="{_esc(label)}" data-value="{_value(value)}">'
            f"<title>{_esc(label)}: {_fmt(value)}{_esc(unit)}</title></rect>"
        )
        parts.append(f'<text class="value" x="{_LEFT + size + 4:.1f}" y="{y + 12}">{_fmt(value)}{_esc(unit)}</text>')
    if rule is not None:
        x = _LEFT + width * rule / top
        parts.append(f'<line class="rule" x1="{x:.1f}" x2="{x:.1f}" y1="20" y2="{height - 8}" data-value="{rule}"/>')
        parts.append(f'<text class="value" x="{x + 3:.1f}" y="16">{_esc(rule_label)}</text>')
    if not rows:
        parts.append(f'<text class="label" x="{_LEFT}" y="36">nothing to show</text>')
    return "".join(parts) + "</svg>"


def grouped_bars(categories: Sequence[str], series: Mapping[str, Sequence[float]], *, name: str, title: str) -> str:
    """Vertical bars, one group per category, one bar per series side by side (a legend names the series)."""
    names = list(series)
    values = [v for vs in series.values() for v in vs if _finite(v)]
    top = max([abs(v) for v in values] + [1e-12])
    height, base, plot = 230, 180, 150
    group = (WIDTH - 60) / max(len(categories), 1)
    bar = max(min(group * 0.8 / max(len(names), 1), 40), 1)
    parts = [_open(name, title, height), _legend(names)]
    parts.append(f'<line class="axis" x1="40" x2="{WIDTH - 10}" y1="{base}" y2="{base}"/>')
    for i, category in enumerate(categories):
        x0 = 40 + i * group + (group - bar * len(names)) / 2
        for j, series_name in enumerate(names):
            value = series[series_name][i]
            size = plot * abs(value) / top if _finite(value) else 0.0
            parts.append(
                f'<rect class="mark s{j % _SERIES}" x="{x0 + j * bar:.1f}" y="{base - size:.1f}" width="{bar:.1f}" '
                f'height="{max(size, 0.5):.1f}" data-series="{_esc(series_name)}" data-label="{_esc(category)}" '
                f'data-value="{_value(value)}">'
                f"<title>{_esc(series_name)}, {_esc(category)}: {_fmt(value)}</title></rect>"
            )
        if len(categories) <= 24:
            parts.append(
                f'<text class="tick" x="{40 + i * group + group / 2:.1f}" y="{base + 14}" text-anchor="middle">'
                f"{_esc(_short(category))}</text>"
            )
    parts.append(f'<text class="tick" x="36" y="{base - plot + 4}" text-anchor="end">{_fmt(top)}</text>')
    return "".join(parts) + "</svg>"


def lines(series: Mapping[str, Sequence[tuple[datetime, float]]], *, name: str, title: str) -> str:
    """One line with points per series over time (x: time, y: value); a legend names the series."""
    points = [p for ps in series.values() for p in ps if _finite(p[1])]
    height, base, plot = 230, 190, 150
    parts = [_open(name, title, height), _legend(list(series))]
    if not points:
        return "".join(parts) + '<text class="label" x="60" y="100">nothing to show</text></svg>'
    t0, t1 = min(p[0] for p in points).timestamp(), max(p[0] for p in points).timestamp()
    lo, hi = min(p[1] for p in points), max(p[1] for p in points)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    span = max(t1 - t0, 1.0)

    def xy(moment: datetime, value: float) -> tuple[float, float]:
        x = 60 + (WIDTH - 90) * ((moment.timestamp() - t0) / span if t1 > t0 else 0.5)
        return x, base - plot * (value - lo) / (hi - lo)

    parts.append(f'<line class="axis" x1="60" x2="{WIDTH - 20}" y1="{base}" y2="{base}"/>')
    parts.append(f'<text class="tick" x="56" y="{base - plot + 4}" text-anchor="end">{_fmt(hi)}</text>')
    parts.append(f'<text class="tick" x="56" y="{base + 4}" text-anchor="end">{_fmt(lo)}</text>')
    parts.append(f'<text class="tick" x="60" y="{base + 16}">{_esc(_day(min(p[0] for p in points)))}</text>')
    parts.append(
        f'<text class="tick" x="{WIDTH - 30}" y="{base + 16}" text-anchor="end">'
        f"{_esc(_day(max(p[0] for p in points)))}</text>"
    )
    for j, (series_name, values) in enumerate(series.items()):
        shown = sorted((p for p in values if _finite(p[1])), key=lambda p: p[0])
        coords = [xy(*p) for p in shown]
        if len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            parts.append(f'<polyline class="line s{j % _SERIES}" points="{path}"/>')
        for (moment, value), (x, y) in zip(shown, coords, strict=True):
            parts.append(
                f'<circle class="mark s{j % _SERIES}" cx="{x:.1f}" cy="{y:.1f}" r="3.5" '
                f'data-series="{_esc(series_name)}" '
                f'data-label="{_esc(moment.isoformat())}" data-value="{_value(value)}">'
                f"<title>{_esc(series_name)} {_esc(_day(moment))}: {_fmt(value)}</title></circle>"
            )
    return "".join(parts) + "</svg>"


def lineage(versions: Sequence[Mapping[str, object]], *, name: str, title: str) -> str:
    """Dataset versions as boxes, oldest first, each joined to its parent by an arrow labelled with the bump kind.

    `versions`: mappings with `version`, `parent_version` and `bump` (the kind)."""
    step, box = 120, 84
    width = max(WIDTH, 40 + step * len(versions))
    x_of = {str(v["version"]): 20 + i * step for i, v in enumerate(versions)}
    height = 100
    parts = [_open(name, title, height, width=width)]
    for v in versions:
        version, parent = str(v["version"]), v.get("parent_version")
        x = x_of[version]
        if parent is not None and str(parent) in x_of:
            px = x_of[str(parent)] + box
            mid = (px + x) / 2
            parts.append(
                f'<line class="edge" x1="{px}" x2="{x}" y1="55" y2="55" marker-end="url(#arrow-{_esc(name)})"/>'
            )
            parts.append(
                f'<text class="tick" x="{mid:.1f}" y="48" text-anchor="middle">{_esc(str(v.get("bump")))}</text>'
            )
        parts.append(
            f'<rect class="mark node" x="{x}" y="38" width="{box}" height="34" rx="5" data-label="{_esc(version)}" '
            f'data-value="{_esc(str(parent or ""))}"><title>{_esc(version)} (parent {_esc(str(parent))})</title></rect>'
        )
        parts.append(f'<text class="node-label" x="{x + box / 2}" y="60" text-anchor="middle">{_esc(version)}</text>')
    marker = (
        f'<defs><marker id="arrow-{_esc(name)}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" '
        'orient="auto"><path d="M0,0 L10,5 L0,10 z" class="arrow"/></marker></defs>'
    )
    return parts[0] + marker + "".join(parts[1:]) + "</svg>"


def _open(name: str, title: str, height: int, *, width: int = WIDTH) -> str:
    return (
        f'<svg class="chart" data-chart="{_esc(name)}" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}"><title>{_esc(title)}</title>'
    )


def _legend(names: Sequence[str]) -> str:
    out = []
    x = 40
    for j, series_name in enumerate(names):
        out.append(f'<rect class="s{j % _SERIES}" x="{x}" y="4" width="10" height="10"/>')
        out.append(f'<text class="label" x="{x + 14}" y="13">{_esc(series_name)}</text>')
        x += 24 + 7 * len(series_name)
    return "".join(out)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _value(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else repr(float(value))


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.3g}"


def _short(text: str, limit: int = 12) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")


def _esc(text: str) -> str:
    return escape(text, quote=True)
