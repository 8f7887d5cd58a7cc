"""One overview of the platform's state: counts and freshness for a dashboard.

Feature views with their last materialization (`monitoring.freshness`; none for a view whose
online data Redis lost: `online_data` "lost", listed in `online_data_lost`), feature
services, dataset versions, and the latest model results per environment. The API serves it
from `SummaryCache`, which reads it again only when one of its sources changed.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from healthmate_features.config import Settings
from healthmate_features.datasets.registry import DatasetRegistry
from healthmate_features.monitoring.freshness import feature_view_status
from healthmate_features.stores import feature_store as store
from healthmate_features.tracking import Tracker


def summary(
    settings: Settings, *, tracker: Tracker, registry: DatasetRegistry | None = None, fs: Any = None
) -> dict[str, Any]:
    """Counts and freshness of feature views, feature services, datasets and model results.

    Reads the Feast registry (of `fs`, a FeatureStore, or of one opened now), the online store's
    materialization markers, the dataset registry and the tracking tables; changes nothing."""
    fs = fs if fs is not None else store.open_feature_store(settings)
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


class SummaryCache:
    """`summary` as the API's JSON, read again only when one of its sources changed; one per app.

    The rule: the cached summary is served while four change markers are what they were when it
    was read: the Feast registry's (`Backend.registry_stamp`: any apply or materialization, from
    any process), the dataset registry's listing (names and versions; versions are immutable),
    the change revision of model_runs (`SqlStore.revisions`, moved by every logged run) and, on
    Redis, which of the views' materialization markers the online store still holds (one MGET:
    a Redis restarted empty shows in the next response, see `stores.online_marks`).
    So a change shows in the next response; `generated_at` says when the figures were read.
    A marker that moves while the summary is read only makes the next request read it again.
    The Feast store is opened once and kept (its registry re-read when the registry changed).
    """

    def __init__(self, settings: Settings, *, tracker: Tracker) -> None:
        import threading

        self.settings = settings
        self.tracker = tracker
        self.registry = DatasetRegistry.from_settings(settings)
        self._lock = threading.Lock()
        self._fs: Any = None
        self._registry_stamp: Any = None
        self._cached: tuple[Any, bytes] | None = None
        self._watched: list[Any] = []  # Redis: the materialization markers the cached summary relied on

    def markers(self) -> tuple[Any, ...]:
        """The change markers of the summary's sources, read now (microseconds to a round trip)."""
        from healthmate_features.backends import backend_for
        from healthmate_features.stores import online_marks

        datasets = tuple((name, tuple(self.registry.versions(name))) for name in self.registry.names())
        runs = self.tracker.store.revisions()["model_runs"]
        lost = tuple(online_marks.lost_views(self.settings, self._watched))
        return (backend_for(self.settings).registry_stamp(), datasets, runs, lost)

    def feature_store(self) -> Any:
        """The kept Feast store (opened on first use), its registry re-read when the registry changed:
        what the dashboard page and the freshness endpoint read, without opening a store per request."""
        from healthmate_features.backends import backend_for

        stamp = backend_for(self.settings).registry_stamp()
        with self._lock:
            if self._fs is None:
                self._fs = store.open_feature_store(self.settings)
            elif stamp != self._registry_stamp:
                self._fs.refresh_registry()
            self._registry_stamp = stamp
            return self._fs

    def json(self) -> bytes:
        """The summary as the API's JSON (`api.models.DashboardSummary`), from the cache unless a source changed.

        Side effects: on a change, reads the sources (and refreshes the kept Feast store's registry)."""
        from healthmate_features.api.models import DashboardSummary

        markers = self.markers()
        cached = self._cached
        if cached is not None and cached[0] == markers:
            return cached[1]
        with self._lock:  # one reader at a time; the others then find it cached
            cached = self._cached
            if cached is not None and cached[0] == markers:
                return cached[1]
            if self._fs is None:
                self._fs = store.open_feature_store(self.settings)
            elif markers[0] != self._registry_stamp:
                self._fs.refresh_registry()
            self._registry_stamp = markers[0]
            data = summary(self.settings, tracker=self.tracker, registry=self.registry, fs=self._fs)
            body = DashboardSummary.model_validate(data).model_dump_json().encode()
            self._watched = store.recorded_online_markers(self.settings, self._fs)
            self._cached = (self.markers(), body)
            return body
