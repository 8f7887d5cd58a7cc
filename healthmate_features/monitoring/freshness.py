"""Feature view freshness: each view's last materialization and newest feature row, against its TTL and an objective.

A view's last materialization is the end of its latest materialization interval (Feast records
one interval per `materialize` run in the registry). The dashboard and the metrics both read it here.
A view whose online data was lost (`stores.online_marks`: Redis restarted empty or was flushed)
has no last materialization, whatever the registry says: its `online_data` is "lost".
`freshness` adds each batch view's newest feature row (`newest_rows`, from the offline feature
tables) and flags late views: see its docstring for the rule; the objective is
Settings.freshness_objective_s (HM_FRESHNESS_OBJECTIVE_S).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime, timezone
from typing import Any


def feature_view_status(fs, *, lost: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Each feature view's feature count, TTL and materialization state; on-demand views too.

    `lost`: the views whose online data is gone (`feature_store.online_data_lost`), None when
    not checked. `online_data` is "lost" for those (and `last_materialized_end` None), "present"
    for the other materialized views when checked, else None.
    Reads the registry of the Feast FeatureStore `fs` (not its cache); changes nothing."""
    views = []
    for fv in sorted(fs.list_feature_views(), key=lambda v: v.name):
        intervals = list(fv.materialization_intervals or [])
        ends = [_utc(end) for _, end in intervals]
        online = None
        if lost is not None and ends:
            online = "lost" if fv.name in lost else "present"
        views.append(
            {
                "name": fv.name,
                "kind": "batch",
                "table": _table_of(fv),
                "features": len(fv.features),
                "ttl_seconds": fv.ttl.total_seconds() if fv.ttl else None,
                "materialization_intervals": len(intervals),
                "last_materialized_end": max(ends) if ends and online != "lost" else None,
                "online_data": online,
            }
        )
    for odfv in sorted(fs.list_on_demand_feature_views(), key=lambda v: v.name):
        views.append(
            {
                "name": odfv.name,
                "kind": "on_demand",
                "features": len(odfv.features),
                "ttl_seconds": None,
                "materialization_intervals": 0,
                "last_materialized_end": None,
                "online_data": None,
            }
        )
    return views


def _table_of(fv: Any) -> str:
    """The feature table a batch view reads: its batch source is named `<table>_source`
    (features.definitions.source); a push view's is the table pushes append to (health_pushed)."""
    name = fv.batch_source.name if fv.batch_source is not None else fv.name
    return name.removesuffix("_source")


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def newest_rows(backend: Any, views: Collection[Mapping[str, Any]]) -> dict[str, datetime | None]:
    """The newest event_timestamp in the feature table of each batch view in `views`
    (`feature_view_status`'s dicts), by view name; None where the table is missing or empty.

    `backend`: the profile's Backend; one query per table."""
    from healthmate_features.errors import FeatureRepoError

    by_table: dict[str, datetime | None] = {}
    for table in sorted({view["table"] for view in views if view["kind"] == "batch"}):
        try:
            by_table[table] = _utc(backend.feature_time_range([table])[1])
        except FeatureRepoError:
            by_table[table] = None
    return {view["name"]: by_table[view["table"]] for view in views if view["kind"] == "batch"}


def freshness(
    views: list[dict[str, Any]],
    newest: Mapping[str, datetime | None],
    *,
    objective_s: float,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Each batch view's freshness against its TTL and the objective; `late` with the reasons.

    `views` is `feature_view_status`'s list, `newest` each view's newest feature row
    (`newest_rows`). A view is late when it was never materialized (or its online data was
    lost), when its last materialization ended more than `objective_s` before `now`, or when its
    newest feature row is older than its TTL (online lookups then find nothing fresh enough)."""
    now = _utc(now or datetime.now(timezone.utc))
    found = []
    for view in views:
        if view["kind"] != "batch":
            continue
        end, row, ttl = view["last_materialized_end"], newest.get(view["name"]), view["ttl_seconds"]
        materialized_age = None if end is None else max((now - end).total_seconds(), 0.0)
        row_age = None if row is None else max((now - row).total_seconds(), 0.0)
        reasons = []
        if view.get("online_data") == "lost":
            reasons.append("online data lost: re-run materialize")
        elif end is None:
            reasons.append("never materialized")
        elif materialized_age is not None and materialized_age > objective_s:
            reasons.append(
                f"last materialization ended {format_span(materialized_age)} ago, objective {format_span(objective_s)}"
            )
        if row is None:
            reasons.append("no feature rows")
        elif ttl and row_age is not None and row_age > ttl:
            reasons.append(f"newest feature row is {format_span(row_age)} old, past the TTL of {format_span(ttl)}")
        found.append(
            {
                "name": view["name"],
                "ttl_seconds": ttl,
                "objective_seconds": objective_s,
                "last_materialized_end": end,
                "materialized_age_seconds": materialized_age,
                "newest_row": row,
                "row_age_seconds": row_age,
                "late": bool(reasons),
                "reasons": reasons,
            }
        )
    return found


def view_freshness(settings: Any, fs: Any = None, *, objective_s: float | None = None) -> list[dict[str, Any]]:
    """`freshness` of every batch view of the settings' repository, read now.

    Reads the Feast registry (of `fs`, or of a store opened now), the online store's
    materialization markers and each feature table's newest row; changes nothing."""
    from healthmate_features.backends import backend_for
    from healthmate_features.stores import feature_store

    fs = fs if fs is not None else feature_store.open_feature_store(settings)
    views = feature_view_status(fs, lost=feature_store.online_data_lost(settings, fs))
    newest = newest_rows(backend_for(settings), views)
    objective = settings.freshness_objective_s if objective_s is None else objective_s
    return freshness(views, newest, objective_s=objective)


def format_span(seconds: float) -> str:
    """A duration for people: 90 s, 45 min, 5.2 h, 3.1 d."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
