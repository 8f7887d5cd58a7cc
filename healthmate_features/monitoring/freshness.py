"""Feature view freshness from Feast's registry: each view's last materialization.

A view's last materialization is the end of its latest materialization interval (Feast records
one interval per `materialize` run in the registry). The dashboard and the metrics both read it here.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


def feature_view_status(fs) -> list[dict[str, Any]]:
    """Each feature view's feature count, TTL and materialization state; on-demand views too.

    Reads the registry of the Feast FeatureStore `fs` (not its cache); changes nothing."""
    views = []
    for fv in sorted(fs.list_feature_views(), key=lambda v: v.name):
        intervals = list(fv.materialization_intervals or [])
        ends = [_utc(end) for _, end in intervals]
        views.append(
            {
                "name": fv.name,
                "kind": "batch",
                "features": len(fv.features),
                "ttl_seconds": fv.ttl.total_seconds() if fv.ttl else None,
                "materialization_intervals": len(intervals),
                "last_materialized_end": max(ends) if ends else None,
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
            }
        )
    return views


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
