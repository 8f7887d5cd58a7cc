"""Monitoring: `monitor drift` and `monitor freshness` (both exit non-zero past their thresholds, for
schedules), and `report`, the dashboard page as a static file."""

from __future__ import annotations

import sys
from datetime import datetime, timezone

import click

from healthmate_features.cli._common import (
    echo_json,
    echo_table,
    handles_errors,
    json_option,
    main,
    profile_option,
    settings,
)

#: Exit status when drift or lateness passes its threshold (1 is an error, 2 a usage error).
EXIT_ALERT = 3
SOURCES = ("offline", "served")  # monitoring.drift.SOURCES (not imported here: it loads pandas and SciPy)
ALPHA = 0.01  # monitoring.drift.ALPHA


@main.group("monitor")
def monitor_group() -> None:
    """Drift of recent features against a training set, and feature view freshness."""


@monitor_group.command("drift")
@click.option("--dataset", required=True, help="Dataset version trained on, as NAME@VERSION, e.g. health_risk@1.0.0.")
@click.option("--since", default="7d", show_default=True, help="Window of recent values: 30m, 12h, 7d or 2w.")
@click.option(
    "--until",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    default=None,
    help="End of the window (UTC; default: the newest row of the feature tables read).",
)
@click.option(
    "--source",
    type=click.Choice(SOURCES),
    default="offline",
    show_default=True,
    help="offline: the feature tables over the window; served: Feast's served-feature log (where configured).",
)
@click.option("--alpha", type=float, default=ALPHA, show_default=True, help="False-alarm level per measure.")
@click.option(
    "--fail-on",
    type=click.Choice(["drift", "warn", "never"]),
    default="drift",
    show_default=True,
    help=f"Exit {EXIT_ALERT} when a feature has this status (warn: drift or warn).",
)
@profile_option
@json_option
@handles_errors
def drift_command(
    dataset: str,
    since: str,
    until: datetime | None,
    source: str,
    alpha: float,
    fail_on: str,
    profile: str | None,
    as_json: bool,
) -> None:
    """Compare recent feature values with a dataset version's training split: PSI and a two-sample test per feature."""
    from healthmate_features.monitoring import drift as drift_lib

    report = drift_lib.drift(
        settings(profile),
        dataset,
        since=since,
        source=source,
        until=until.replace(tzinfo=timezone.utc) if until else None,
        alpha=alpha,
    )
    if as_json:
        echo_json(report.to_dict())
    else:
        window = report.window
        click.echo(
            f"{report.dataset} ({report.reference}) vs {report.source} values {window['start']} .. {window['end']}: "
            + ", ".join(f"{count} {status}" for status, count in report.counts().items() if count)
        )
        echo_table(
            [
                {
                    "feature": f.feature,
                    "status": f.status,
                    "psi": _num(f.psi),
                    "psi_max": _num(f.psi_threshold),
                    "test": f.test,
                    "p_value": _num(f.p_value),
                    "rows": f"{f.reference_rows}/{f.recent_rows}",
                    "nulls": _nulls(f.null_fraction) + (" (moved)" if f.null_shift else ""),
                }
                for f in report.features
            ],
            ["feature", "status", "psi", "psi_max", "test", "p_value", "rows", "nulls"],
        )
        if report.not_compared:
            click.echo(f"not compared: {', '.join(sorted({n['feature'] for n in report.not_compared}))}")
    statuses = {f.status for f in report.features}
    alert = {"drift": {"drift"}, "warn": {"drift", "warn"}, "never": set()}[fail_on]
    if statuses & alert:
        sys.exit(EXIT_ALERT)


@monitor_group.command("freshness")
@click.option(
    "--objective",
    default=None,
    help="Freshness objective as 30m, 12h, 7d or 2w (default: HM_FRESHNESS_OBJECTIVE_S).",
)
@click.option("--fail-on-late", is_flag=True, help=f"Exit {EXIT_ALERT} when a view is late.")
@profile_option
@json_option
@handles_errors
def freshness_command(objective: str | None, fail_on_late: bool, profile: str | None, as_json: bool) -> None:
    """Each feature view's last materialization and newest row against its TTL and the objective."""
    from healthmate_features.monitoring import drift as drift_lib
    from healthmate_features.monitoring import freshness as freshness_lib

    objective_s = drift_lib.parse_duration(objective).total_seconds() if objective else None
    views = freshness_lib.view_freshness(settings(profile), objective_s=objective_s)
    if as_json:
        echo_json({"feature_views": views})
    else:
        echo_table(
            [
                {
                    "view": v["name"],
                    "late": "LATE" if v["late"] else "ok",
                    "materialized_end": v["last_materialized_end"],
                    "newest_row": v["newest_row"],
                    "ttl": freshness_lib.format_span(v["ttl_seconds"]) if v["ttl_seconds"] else None,
                    "why": "; ".join(v["reasons"]),
                }
                for v in views
            ],
            ["view", "late", "materialized_end", "newest_row", "ttl", "why"],
        )
    if fail_on_late and any(v["late"] for v in views):
        sys.exit(EXIT_ALERT)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _nulls(fractions: tuple[float | None, float | None]) -> str:
    return " -> ".join("-" if f is None else f"{f:.0%}" for f in fractions)


@main.command("report")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Directory to write index.html to.")
@click.option("--dataset", default=None, help="Dataset version to show drift for, NAME@VERSION (default: the newest).")
@click.option("--compare", default=None, help="Two versions of it to diff, as A,B (default: its parent and itself).")
@click.option("--since", default="7d", show_default=True, help="Drift window: 30m, 12h, 7d or 2w.")
@profile_option
@json_option
@handles_errors
def report_command(
    out: str, dataset: str | None, compare: str | None, since: str, profile: str | None, as_json: bool
) -> None:
    """Write the dashboard page (freshness, dataset versions and diff, drift, model metrics) as one offline file."""
    from healthmate_features.backends import open_sql_store
    from healthmate_features.pictures.page import write_report
    from healthmate_features.tracking import Tracker

    pair = _pair(compare)
    current = settings(profile)
    with open_sql_store(current) as sql:
        path = write_report(current, out, tracker=Tracker(sql), dataset=dataset, compare=pair, since=since)
    if as_json:
        echo_json({"report": str(path)})
    else:
        click.echo(f"wrote {path}")


def _pair(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise click.BadParameter(f"{text!r} is not two versions A,B, e.g. 1.0.0,1.1.0", param_hint="--compare")
    return parts[0], parts[1]
