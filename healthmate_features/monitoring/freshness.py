"""Feature view freshness from Feast's registry: each view's last materialization.

A view's last materialization is the end of its latest materialization interval (Feast records
one interval per `materialize` run in the registry). The dashboard and the metrics both read it here.
A view whose online data was lost (`stores.online_marks`: Redis restarted empty or was flushed)
has no last materialization, whatever the registry says: its `online_data` is "lost".
"""

from __future__ import annotations

from collections.abc import Collection
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


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
