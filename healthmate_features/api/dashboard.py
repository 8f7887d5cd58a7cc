"""One overview of the platform's state: counts and freshness for a dashboard.

Feature views with their last materialization (`monitoring.freshness`; none for a view whose
online data Redis lost: `online_data` "lost", listed in `online_data_lost`), feature
services, dataset versions, and the latest model results per environment.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from healthmate_features.config import Settings
from healthmate_features.datasets.registry import DatasetRegistry
from healthmate_features.monitoring.freshness import feature_view_status
from healthmate_features.stores import feature_store as store
from healthmate_features.tracking import Tracker


def summary(settings: Settings, *, tracker: Tracker, registry: DatasetRegistry | None = None) -> dict[str, Any]:
    """Counts and freshness of feature views, feature services, datasets and model results.

    Reads the Feast registry, the dataset registry and the tracking tables; changes nothing."""
    fs = store.open_feature_store(settings)
    lost = store.online_data_lost(settings, fs)
    views = feature_view_status(fs, lost=lost)
    services = [
        {
            "name": s.name,
            "features": sum(len(p.features) for p in s.feature_view_projections),
            "description": s.description or "",
        }
        for s in sorted(fs.list_feature_services(), key=lambda s: s.name)
    ]
    registry = registry or DatasetRegistry.from_settings(settings)
    datasets: list[dict[str, Any]] = []
    for name in registry.names():
        versions = registry.versions(name)
        latest = registry.show(name, versions[-1])
        datasets.append(
            {"name": name, "versions": versions, "latest": versions[-1], "latest_created_at": latest.get("created_at")}
        )
    runs = [r.to_dict() for r in tracker.latest_per_environment()]
    materialized = [v["last_materialized_end"] for v in views if v["last_materialized_end"]]
    return {
        "generated_at": datetime.now(timezone.utc),
        "counts": {
            "feature_views": sum(v["kind"] == "batch" for v in views),
            "on_demand_feature_views": sum(v["kind"] == "on_demand" for v in views),
            "feature_services": len(services),
            "datasets": len(datasets),
            "dataset_versions": sum(len(d["versions"]) for d in datasets),
            "models": len({r["model_name"] for r in runs}),
        },
        "oldest_materialization_end": min(materialized) if materialized and not lost else None,
        "online_data_lost": sorted(lost or ()),
        "feature_views": views,
        "feature_services": services,
        "datasets": datasets,
        "latest_model_results": runs,
    }
