"""The dashboard page: feature views and freshness, dataset versions and their diff, drift, model history.

`collect` reads the figures (the library's own results, nothing recomputed here), `render` turns
them into one self-contained HTML document: CSS and every chart (`pictures.svg`) inline, no script,
no link to another host, so it opens offline. The API serves it at /dashboard; `write_report`
writes it to a directory (`healthmate-features report --out DIR`).

`distributions=False` (a user key) leaves out the per-feature distributions of the dataset diff,
the only figures drawn from health values themselves; counts, label balance, freshness, drift
scores and model metrics stay.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from healthmate_features.datasets.ref import DatasetRef
from healthmate_features.datasets.registry import DatasetRegistry
from healthmate_features.errors import HealthmateError
from healthmate_features.monitoring import drift as drift_lib
from healthmate_features.monitoring.freshness import format_span, view_freshness
from healthmate_features.pictures import svg
from healthmate_features.tracking import Tracker
from healthmate_features.util.files import atomic_write_bytes

REPORT_FILE = "index.html"
#: Features drawn side by side in the dataset diff: the largest shifts first.
DIFF_FEATURES = 8
_BINS = 12


def collect(
    settings: Any,
    *,
    tracker: Tracker,
    registry: DatasetRegistry | None = None,
    fs: Any = None,
    dataset: str | None = None,
    compare: tuple[str, str] | None = None,
    since: str = "7d",
    distributions: bool = True,
) -> dict[str, Any]:
    """The page's figures. `dataset`: the version drift is shown for (NAME@VERSION; default the
    newest version of the first dataset); `compare`: the two versions of it to diff (default
    its parent and itself). Reads the Feast and dataset registries, the feature tables (drift)
    and the tracking tables; changes nothing. A part that cannot be read says why instead."""
    registry = registry or DatasetRegistry.from_settings(settings)
    data: dict[str, Any] = {"generated_at": datetime.now(timezone.utc), "distributions": distributions}
    data["freshness"] = _attempt(lambda: view_freshness(settings, fs))
    data["datasets"] = [
        {"name": name, "versions": [_version_row(registry.show(name, v)) for v in registry.versions(name)]}
        for name in registry.names()
    ]
    chosen = _chosen(registry, dataset)
    data["chosen"] = None if chosen is None else str(chosen)
    if chosen is not None:
        data["drift"] = _attempt(lambda: drift_lib.drift(settings, chosen, since=since, registry=registry).to_dict())
        data["diff"] = _attempt(lambda: _diff(registry, chosen, compare, distributions=distributions))
    data["models"] = _attempt(lambda: _models(tracker))
    return data


def render(data: Mapping[str, Any], *, form_action: str | None = None) -> str:
    """The page as one HTML document (see the module docstring). `form_action`: where the version
    chooser submits (the API's URL); None leaves the chooser out (a static report)."""
    parts = [
        # The icon inline too: a browser would otherwise fetch /favicon.ico from wherever the page is.
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><link rel='icon' href='data:,'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>HealthMate features: dashboard</title><style>",
        _CSS,
        "</style></head><body><h1>HealthMate features</h1>",
        f"<p class='note'>Generated {_esc(_time(data['generated_at']))}. "
        "Figures are aggregates; no user id or row.</p>",
    ]
    if form_action is not None:
        parts.append(_chooser(data, form_action))
    parts += [_freshness_section(data["freshness"]), _datasets_section(data)]
    if data.get("chosen"):
        parts += [_diff_section(data), _drift_section(data)]
    parts.append(_models_section(data["models"]))
    parts.append("</body></html>")
    return "".join(parts)


def write_report(settings: Any, out: str | Path, *, tracker: Tracker, **options: Any) -> Path:
    """Write the page to `<out>/index.html` (atomically; `out` created if needed); return its path."""
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / REPORT_FILE
    atomic_write_bytes(path, render(collect(settings, tracker=tracker, **options)).encode("utf-8"))
    return path


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _attempt(read: Any) -> dict[str, Any]:
    try:
        return {"ok": True, "value": read()}
    except HealthmateError as exc:
        return {"ok": False, "error": str(exc)}


def _chosen(registry: DatasetRegistry, dataset: str | None) -> DatasetRef | None:
    if dataset:
        ref = DatasetRef.parse(dataset)
        registry.show(ref.name, ref.version)  # DatasetNotFoundError for an unknown version
        return ref
    for name in registry.names():
        versions = registry.versions(name)
        if versions:
            return DatasetRef(name, versions[-1])
    return None


def _version_row(manifest: Mapping[str, Any]) -> dict[str, Any]:
    bump = manifest.get("bump") or {}
    return {
        "version": manifest.get("version"),
        "parent_version": manifest.get("parent_version"),
        "bump": bump.get("kind"),
        "reasons": list(bump.get("reasons") or []),
        "created_at": manifest.get("created_at"),
        "row_counts": dict(manifest.get("row_counts") or {}),
        "label_balance": dict(manifest.get("label_balance") or {}),
    }


def _diff(
    registry: DatasetRegistry, chosen: DatasetRef, compare: tuple[str, str] | None, *, distributions: bool
) -> dict[str, Any]:
    if compare is None:
        parent = registry.show(chosen.name, chosen.version).get("parent_version")
        if parent is None:
            return {"versions": None}
        compare = (str(parent), chosen.version)
    a, b = compare
    manifests = {v: registry.show(chosen.name, v) for v in (a, b)}
    diff = registry.diff(chosen.name, a, b)
    out: dict[str, Any] = {
        "versions": [a, b],
        "rows": {v: dict(m.get("row_counts") or {}) for v, m in manifests.items()},
        "label_balance": {v: dict(m.get("label_balance") or {}) for v, m in manifests.items()},
        "bump_rule": diff["bump_rule"],
        "features": [],
    }
    if not distributions:
        return out
    sketches = {v: drift_lib.reference_sketches(registry, DatasetRef(chosen.name, v))[0] for v in (a, b)}
    common = [f for f in sketches[a] if f in sketches[b] and sketches[a][f]["kind"] == sketches[b][f]["kind"]]
    shifted = [s["column"] for s in diff["largest_shifts"] if s["column"] in common]
    order = list(dict.fromkeys([*shifted, *common]))[:DIFF_FEATURES]
    out["features"] = [_side_by_side(feature, sketches[a][feature], sketches[b][feature]) for feature in order]
    return out


def _side_by_side(feature: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Two versions' distributions of one feature on common bins, as fractions of present values."""
    if a["kind"] == "categorical":
        labels = list(dict.fromkeys([*a["counts"], *b["counts"]]))
        return {
            "feature": feature,
            "labels": labels,
            "a": _fractions([a["counts"].get(k, 0) for k in labels]),
            "b": _fractions([b["counts"].get(k, 0) for k in labels]),
        }
    lo = min(a["edges"][0], b["edges"][0]) if a["edges"] and b["edges"] else 0.0
    hi = max(a["edges"][-1], b["edges"][-1]) if a["edges"] and b["edges"] else 1.0
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, _BINS + 1)
    labels = [f"{x:.3g}" for x in edges[:-1]]
    return {"feature": feature, "labels": labels, "a": _binned(a, edges), "b": _binned(b, edges)}


def _binned(sketch: Mapping[str, Any], edges: np.ndarray) -> list[float]:
    """The sketch's share of present values in each of the bins `edges` (its CDF interpolated between percentiles)."""
    counts = np.asarray(sketch["counts"], dtype="float64")
    total = counts.sum()
    if total == 0 or not sketch["edges"]:
        return [0.0] * (len(edges) - 1)
    cdf = np.cumsum(counts)[:-1] / total  # at each of the sketch's edges
    at = np.interp(edges, np.asarray(sketch["edges"], dtype="float64"), cdf, left=0.0, right=1.0)
    return [float(x) for x in np.diff(at)]


def _fractions(counts: Sequence[int]) -> list[float]:
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts]


def _models(tracker: Tracker) -> list[dict[str, Any]]:
    models = []
    for model in tracker.models():
        records = tracker.history(model)
        metrics = sorted({r.metric for r in records})
        over_time = {
            metric: {
                env: [(r.logged_at, r.value) for r in records if r.metric == metric and r.environment == env]
                for env in sorted({r.environment for r in records if r.metric == metric})
            }
            for metric in metrics
        }
        latest: dict[str, dict[str, float]] = {}  # metric -> version -> its latest value (any environment)
        for r in records:  # oldest first: the last one wins
            latest.setdefault(r.metric, {})[r.model_version] = r.value
        models.append({"model": model, "versions": tracker.versions(model), "over_time": over_time, "latest": latest})
    return models


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _failed(part: Mapping[str, Any]) -> str:
    return f"<p class='error'>Not available: {_esc(part['error'])}</p>"


def _freshness_section(part: Mapping[str, Any]) -> str:
    out = ["<section id='freshness'><h2>Feature views and freshness</h2>"]
    if not part["ok"]:
        return out[0] + _failed(part) + "</section>"
    views = part["value"]
    late = [v["name"] for v in views if v["late"]]
    out.append(f"<p>{len(views)} batch views, {len(late)} late{': ' + _esc(', '.join(late)) if late else ''}.</p>")
    rows = [(v["name"], _or_inf(v["materialized_age_seconds"]) / 86400.0, "late" if v["late"] else "ok") for v in views]
    objective = views[0]["objective_seconds"] / 86400.0 if views else None
    out.append(
        svg.bars(
            rows,
            name="freshness",
            title="Days since the last materialization ended",
            unit=" d",
            rule=objective,
            rule_label="objective",
        )
    )
    out.append(
        "<table><tr><th>view</th><th>state</th><th>last materialization end</th><th>newest row</th><th>TTL</th>"
        "<th>why late</th></tr>"
    )
    for v in views:
        out.append(
            f"<tr class='{'late' if v['late'] else 'ok'}'><td>{_esc(v['name'])}</td>"
            f"<td>{'late' if v['late'] else 'ok'}</td><td>{_esc(_time(v['last_materialized_end']))}</td>"
            f"<td>{_esc(_time(v['newest_row']))}</td>"
            f"<td>{_esc(format_span(v['ttl_seconds']) if v['ttl_seconds'] else '-')}</td>"
            f"<td>{_esc('; '.join(v['reasons']))}</td></tr>"
        )
    out.append("</table></section>")
    return "".join(out)


def _datasets_section(data: Mapping[str, Any]) -> str:
    out = ["<section id='datasets'><h2>Dataset versions</h2>"]
    if not data["datasets"]:
        out.append("<p>No dataset versions yet.</p>")
    for entry in data["datasets"]:
        name = entry["name"]
        out.append(f"<h3>{_esc(name)}</h3>")
        out.append(svg.lineage(entry["versions"], name=f"lineage-{name}", title=f"Lineage of {name}"))
        out.append(
            "<table><tr><th>version</th><th>parent</th><th>bump</th><th>why</th><th>created</th>"
            "<th>train rows</th><th>test rows</th></tr>"
        )
        for v in entry["versions"]:
            out.append(
                f"<tr><td>{_esc(v['version'])}</td><td>{_esc(v['parent_version'] or '-')}</td>"
                f"<td>{_esc(v['bump'])}</td>"
                f"<td>{_esc('; '.join(v['reasons']))}</td><td>{_esc(v['created_at'])}</td>"
                f"<td>{v['row_counts'].get('train', '-')}</td><td>{v['row_counts'].get('test', '-')}</td></tr>"
            )
        out.append("</table>")
    out.append("</section>")
    return "".join(out)


def _diff_section(data: Mapping[str, Any]) -> str:
    part = data["diff"]
    out = [f"<section id='diff'><h2>Diff of two versions of {_esc(data['chosen'].split('@')[0])}</h2>"]
    if not part["ok"]:
        return out[0] + _failed(part) + "</section>"
    diff = part["value"]
    if diff["versions"] is None:
        return out[0] + f"<p>{_esc(data['chosen'])} has no parent version to compare with.</p></section>"
    a, b = diff["versions"]
    out.append(
        f"<p>{_esc(a)} → {_esc(b)}: bump rule says <b>{_esc(diff['bump_rule']['kind'])}</b> "
        f"({_esc('; '.join(diff['bump_rule']['reasons']))}).</p>"
    )
    sides = ["train", "test"]
    out.append(
        svg.grouped_bars(
            sides,
            {v: [float(diff["rows"][v].get(s) or 0) for s in sides] for v in (a, b)},
            name="diff-rows",
            title="Rows per split",
        )
    )
    balance = {v: (diff["label_balance"][v].get("train") or {}) for v in (a, b)}
    classes = list(dict.fromkeys([k for v in (a, b) for k in (balance[v].get("fractions") or {})]))
    if classes:
        out.append(
            svg.grouped_bars(
                classes,
                {v: [float((balance[v].get("fractions") or {}).get(c) or 0.0) for c in classes] for v in (a, b)},
                name="diff-label-balance",
                title="Label balance (train, fraction per class)",
            )
        )
    if not data["distributions"]:
        out.append("<p class='note'>Feature distributions are shown to admin keys only.</p>")
    for feature in diff["features"]:
        out.append(f"<h4>{_esc(feature['feature'])}</h4>")
        out.append(
            svg.grouped_bars(
                feature["labels"],
                {a: feature["a"], b: feature["b"]},
                name=f"diff-{feature['feature']}",
                title=f"{feature['feature']}: share of present values, {a} vs {b}",
            )
        )
    out.append("</section>")
    return "".join(out)


def _drift_section(data: Mapping[str, Any]) -> str:
    part = data["drift"]
    out = [f"<section id='drift'><h2>Drift of recent features against {_esc(data['chosen'])}</h2>"]
    if not part["ok"]:
        return out[0] + _failed(part) + "</section>"
    report = part["value"]
    window = report["window"]
    counts = ", ".join(f"{n} {s}" for s, n in report["counts"].items() if n)
    out.append(
        f"<p>{_esc(report['source'])} values {_esc(_time(window['start']))} .. {_esc(_time(window['end']))} "
        f"vs the training split ({_esc(report['reference'])}): {_esc(counts)}. A bar is PSI over its calibrated "
        "threshold: past 1 (the line) the PSI is beyond what resampling the training split gives.</p>"
    )
    compared = [f for f in report["features"] if f["status"] != "no_data"]
    out.append(
        svg.bars(
            [(f["feature"], f["severity"], f["status"]) for f in compared],
            name="drift",
            title="PSI / calibrated threshold per feature",
            rule=1.0,
            rule_label="threshold",
        )
    )
    out.append(
        "<table><tr><th>feature</th><th>status</th><th>PSI</th><th>threshold</th><th>test</th><th>p-value</th>"
        "<th>rows (train/recent)</th><th>nulls (train → recent)</th></tr>"
    )
    for f in report["features"]:
        nulls = " → ".join("-" if x is None else f"{x:.0%}" for x in f["null_fraction"])
        out.append(
            f"<tr class='{_esc(f['status'])}'><td>{_esc(f['feature'])}</td><td>{_esc(f['status'])}</td>"
            f"<td>{_num(f['psi'])}</td><td>{_num(f['psi_threshold'])}</td><td>{_esc(f['test'])}</td>"
            f"<td>{_num(f['p_value'])}</td><td>{f['reference_rows']}/{f['recent_rows']}</td><td>{_esc(nulls)}</td></tr>"
        )
    out.append("</table></section>")
    return "".join(out)


def _models_section(part: Mapping[str, Any]) -> str:
    out = ["<section id='models'><h2>Model metrics</h2>"]
    if not part["ok"]:
        return out[0] + _failed(part) + "</section>"
    if not part["value"]:
        out.append("<p>No model runs logged yet.</p>")
    for model in part["value"]:
        name = model["model"]
        out.append(f"<h3>{_esc(name)}</h3>")
        for metric, by_env in model["over_time"].items():
            out.append(
                svg.lines(by_env, name=f"model-{name}-{metric}", title=f"{name}: {metric} over time per environment")
            )
        for metric, by_version in model["latest"].items():
            versions = [v for v in model["versions"] if v in by_version]
            out.append(
                svg.bars(
                    [(v, by_version[v], "s0") for v in versions],
                    name=f"versions-{name}-{metric}",
                    title=f"{name}: latest {metric} per version",
                )
            )
    out.append("</section>")
    return "".join(out)


def _chooser(data: Mapping[str, Any], action: str) -> str:
    options = [f"{d['name']}@{v['version']}" for d in data["datasets"] for v in d["versions"]]
    chosen = data.get("chosen")
    items = "".join(
        f"<option value='{_esc(o)}'{' selected' if o == chosen else ''}>{_esc(o)}</option>" for o in options
    )
    return (
        f"<form method='get' action='{_esc(action)}'><label>Dataset version <select name='dataset'>{items}</select>"
        "</label> <label>compare with <input name='compare' placeholder='1.0.0' size='8'></label> "
        "<button type='submit'>Show</button></form>"
    )


def _or_inf(value: float | None) -> float:
    return math.inf if value is None else value


def _time(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _esc(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1100px;
color:#1d2330;padding:0 16px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #d5d9e0;padding-bottom:4px}
h3{font-size:15px}h4{font-size:13px;margin:14px 0 2px}
table{border-collapse:collapse;margin:8px 0;font-size:12px}
td,th{padding:3px 8px;border-bottom:1px solid #e6e9ee;text-align:left}
tr.late td,tr.drift td{background:#fdecea}tr.warn td{background:#fff6e0}
.note{color:#5b6475}.error{color:#a3261b}
svg.chart{display:block;margin:6px 0;max-width:100%;height:auto}
svg .label,svg .value,svg .tick,svg .node-label{font-size:11px;fill:#1d2330}svg .tick{fill:#5b6475}
svg .axis{stroke:#8a93a3}svg .rule{stroke:#a3261b;stroke-dasharray:4 3}svg .edge{stroke:#5b6475;stroke-width:1.5}
svg .arrow{fill:#5b6475}svg .node{fill:#e8eef9;stroke:#3b6fd4}
svg .line{fill:none;stroke-width:2}
svg .ok{fill:#3a9d5d}svg .warn{fill:#e0a030}svg .drift,svg .late{fill:#d0453a}
svg .s0{fill:#3b6fd4;stroke:#3b6fd4}svg .s1{fill:#e07b39;stroke:#e07b39}svg .s2{fill:#3a9d5d;stroke:#3a9d5d}
svg .s3{fill:#8e5cc4;stroke:#8e5cc4}svg .s4{fill:#c4455b;stroke:#c4455b}svg .s5{fill:#5aa6b8;stroke:#5aa6b8}
svg polyline.line{fill:none}
form{margin:8px 0 16px}
"""
