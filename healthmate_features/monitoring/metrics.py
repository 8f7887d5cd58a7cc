"""Prometheus metrics of the API and the workers, and their text exposition.

What records what:
- the API's request middleware (`api/metrics.py`): HTTP_REQUESTS, HTTP_SECONDS, HTTP_IN_FLIGHT;
- `AuditLog.write` and the API's group commit (`AuditWriter`): AUDIT_WRITE_SECONDS, AUDIT_WRITE_ERRORS;
- the job runner: JOBS, JOB_SECONDS;
- a materialization given `written=record_materialized_rows` (`stores.feature_store.materialize`):
  MATERIALIZED_ROWS;
- at scrape time, `StoreCollector`: each feature view's freshness, newest-row age, lateness and TTL,
  dataset versions per name; and prometheus_client's ProcessCollector: this process's CPU and memory;
- a drift run through the API (`record_drift`): DRIFT_* per dataset version and feature.
Labels hold methods, route templates, status codes, job kinds and outcomes, feature view and
dataset names: never a user id, a raw path or query string, or a feature value.

Processes: metric values live in files of a directory that a process shares with its children
(prometheus_client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR; see `monitoring.multiprocess`,
which importing the package sets up). So a Celery prefork worker's children, or `serve` workers,
count into their parent's directory, and an exposition (`scrape_registry`) sums every process
sharing it. Only when prometheus_client was imported before the package do values stay in this
process's memory, and an exposition shows this process alone.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client import values as _values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector

from healthmate_features.errors import ConfigError, HealthmateError

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from healthmate_features.config import Settings

PREFIX = "healthmate_"
log = logging.getLogger(__name__)

#: The package's own metrics (Feast registers its feast_* metrics in prometheus_client's default registry).
REGISTRY = CollectorRegistry()

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_AUDIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_JOB_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)

HTTP_REQUESTS = Counter(
    "healthmate_http_requests_total",
    "HTTP requests answered, by method, route template and status code",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "healthmate_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response body, by method and route template",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
HTTP_IN_FLIGHT = Gauge(
    "healthmate_http_requests_in_flight",
    "HTTP requests being handled now (summed over the live processes)",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
AUDIT_WRITE_SECONDS = Histogram(
    "healthmate_audit_write_duration_seconds",
    "Time of one audit-log write: one entry, or one batch of the API's group commit (one transaction)",
    buckets=_AUDIT_BUCKETS,
    registry=REGISTRY,
)
AUDIT_WRITE_ERRORS = Counter(
    "healthmate_audit_write_errors_total",
    "Audit entries that could not be written (the server log has the reason; the API answers such a request 503)",
    registry=REGISTRY,
)
JOBS = Counter(
    "healthmate_jobs_total",
    "Jobs finished, by kind and outcome",
    ["kind", "outcome"],  # outcome: succeeded | failed | retried | cancelled
    registry=REGISTRY,
)
JOB_SECONDS = Histogram(
    "healthmate_job_duration_seconds",
    "Job run time",
    ["kind"],
    buckets=_JOB_BUCKETS,
    registry=REGISTRY,
)
MATERIALIZED_ROWS = Counter(
    "healthmate_materialized_rows_total",
    "Rows Feast wrote to the online store by materialization, by feature view (rows handed to "
    "the online store's write, one per entity and event timestamp; a rewrite counts again)",
    ["feature_view"],
    registry=REGISTRY,
)


DRIFT_PSI = Gauge(
    "healthmate_feature_drift_psi",
    "PSI of a feature's recent values against the training split of a dataset version (the last drift run)",
    ["dataset", "feature", "source"],
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
DRIFT_PSI_THRESHOLD = Gauge(
    "healthmate_feature_drift_psi_threshold",
    "The PSI threshold calibrated for that feature and sample size (the last drift run)",
    ["dataset", "feature", "source"],
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
DRIFT_P_VALUE = Gauge(
    "healthmate_feature_drift_p_value",
    "p-value of the two-sample test (KS or chi-square) of a feature (the last drift run)",
    ["dataset", "feature", "source"],
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
DRIFT_STATUS = Gauge(
    "healthmate_feature_drift_status",
    "A feature's drift verdict in the last drift run: 0 ok, 1 warn, 2 drift (no data: left out)",
    ["dataset", "feature", "source"],
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
DRIFT_RUN_TIME = Gauge(
    "healthmate_drift_last_run_timestamp_seconds",
    "When drift was last computed for a dataset version (Unix time)",
    ["dataset", "source"],
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
_DRIFT_LEVEL = {"ok": 0.0, "warn": 1.0, "drift": 2.0}


def record_drift(report: Any) -> None:
    """Set the drift gauges from a `monitoring.drift.DriftReport` (labels: dataset version, feature name, source)."""
    for feature in report.features:
        labels = (report.dataset, feature.feature, report.source)
        if feature.status not in _DRIFT_LEVEL:
            continue
        DRIFT_STATUS.labels(*labels).set(_DRIFT_LEVEL[feature.status])
        if feature.psi is not None:
            DRIFT_PSI.labels(*labels).set(feature.psi)
        if feature.psi_threshold is not None:
            DRIFT_PSI_THRESHOLD.labels(*labels).set(feature.psi_threshold)
        if feature.p_value is not None:
            DRIFT_P_VALUE.labels(*labels).set(feature.p_value)
    DRIFT_RUN_TIME.labels(report.dataset, report.source).set(time.time())


def record_materialized_rows(view: str, rows: int) -> None:
    """Count `rows` written to the online store for feature view `view` (a `materialize(written=...)` hook)."""
    MATERIALIZED_ROWS.labels(view).inc(rows)


# -- scrape-time metrics ---------------------------------------------------------------------


class StoreCollector:
    """Each feature view's freshness and TTL, and dataset versions per name, read at scrape time.

    Freshness is the seconds from the end of a view's last materialization (Feast's registry)
    to the scrape, +Inf for a view never materialized; on-demand views have none. The Feast and
    dataset registries are read at most once per `max_age_s`; a scrape in between reuses that
    read (freshness itself is computed at every scrape). When a registry cannot be read, its
    last good read is kept and `healthmate_metrics_source_up{source}` is 0 until it can.
    """

    def __init__(self, settings: Settings, *, max_age_s: float = 10.0) -> None:
        self.settings = settings
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._fs: Any = None
        self._views: list[tuple[str, float | None, float | None]] = []  # name, last end (epoch s), TTL s
        self._status: list[dict[str, Any]] = []  # monitoring.freshness.feature_view_status
        self._newest: dict[str, Any] = {}  # each batch view's newest feature row (monitoring.freshness.newest_rows)
        self._datasets: dict[str, int] = {}
        self._up = {"feast_registry": 0.0, "dataset_registry": 0.0}

    def collect(self) -> Iterable[Metric]:
        self._refresh()
        now = time.time()
        freshness = GaugeMetricFamily(
            "healthmate_feature_view_freshness_seconds",
            "Seconds since the end of the feature view's last materialization (+Inf: never, or online data lost)",
            labels=["feature_view"],
        )
        ttl = GaugeMetricFamily(
            "healthmate_feature_view_ttl_seconds",
            "The feature view's TTL in Feast (views without a TTL are left out)",
            labels=["feature_view"],
        )
        for name, end, ttl_s in self._views:
            freshness.add_metric([name], math.inf if end is None else max(now - end, 0.0))
            if ttl_s:
                ttl.add_metric([name], ttl_s)
        versions = GaugeMetricFamily(
            "healthmate_dataset_versions", "Versions saved of each dataset", labels=["dataset"]
        )
        for name, count in self._datasets.items():
            versions.add_metric([name], count)
        row_age = GaugeMetricFamily(
            "healthmate_feature_view_newest_row_age_seconds",
            "Seconds since the feature view's newest feature row (offline feature table; +Inf: no rows)",
            labels=["feature_view"],
        )
        late = GaugeMetricFamily(
            "healthmate_feature_view_late",
            "1 if the feature view is late: never materialized or online data lost, last materialization "
            "older than the objective, or newest row older than the TTL (monitoring.freshness)",
            labels=["feature_view"],
        )
        objective = GaugeMetricFamily(
            "healthmate_feature_view_freshness_objective_seconds",
            "The freshness objective (HM_FRESHNESS_OBJECTIVE_S)",
        )
        objective.add_metric([], self.settings.freshness_objective_s)
        from healthmate_features.monitoring.freshness import freshness as view_freshness

        for view in view_freshness(self._status, self._newest, objective_s=self.settings.freshness_objective_s):
            newest = view["newest_row"]
            row_age.add_metric([view["name"]], math.inf if newest is None else max(now - newest.timestamp(), 0.0))
            late.add_metric([view["name"]], 1.0 if view["late"] else 0.0)
        up = GaugeMetricFamily(
            "healthmate_metrics_source_up",
            "1 if the last read of this source for the scrape-time metrics worked, else 0",
            labels=["source"],
        )
        for source, value in self._up.items():
            up.add_metric([source], value)
        return [freshness, ttl, row_age, late, objective, versions, up]

    def _refresh(self) -> None:
        with self._lock:
            now = time.monotonic()
            if self._read_at is not None and now - self._read_at < self.max_age_s:
                return
            self._read_at = now
            try:
                self._views = self._read_views()
                self._up["feast_registry"] = 1.0
            except Exception as exc:  # a scrape never fails on a registry: the gauge says so
                self._fs = None
                self._up["feast_registry"] = 0.0
                log.warning("metrics: cannot read the Feast registry of %s: %s", self.settings.repo_path, exc)
            try:
                self._datasets = self._read_datasets()
                self._up["dataset_registry"] = 1.0
            except Exception as exc:
                self._up["dataset_registry"] = 0.0
                log.warning("metrics: cannot read the dataset registry of %s: %s", self.settings.repo_path, exc)

    def _read_views(self) -> list[tuple[str, float | None, float | None]]:
        from healthmate_features.backends import backend_for
        from healthmate_features.monitoring.freshness import feature_view_status, newest_rows
        from healthmate_features.stores import feature_store

        if self._fs is None:
            self._fs = feature_store.open_feature_store(self.settings)
        lost = None
        try:  # Redis's materialization markers: a view whose online data was lost is not fresh
            lost = feature_store.online_data_lost(self.settings, self._fs)
            if lost is not None:
                self._up["online_markers"] = 1.0
        except HealthmateError as exc:
            self._up["online_markers"] = 0.0
            log.warning("metrics: cannot read the online store's materialization markers: %s", exc)
        views = feature_view_status(self._fs, lost=lost)
        self._status, self._newest = views, newest_rows(backend_for(self.settings), views)
        return [
            (
                view["name"],
                view["last_materialized_end"].timestamp() if view["last_materialized_end"] else None,
                view["ttl_seconds"],
            )
            for view in views
            if view["kind"] == "batch"
        ]

    def _read_datasets(self) -> dict[str, int]:
        from healthmate_features.datasets.registry import DatasetRegistry

        registry = DatasetRegistry.from_settings(self.settings)
        return {name: len(registry.versions(name)) for name in registry.names()}


# -- exposition ------------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    """The directory this process's metric values live in (shared with its children); None when in memory."""
    if _values.ValueClass is _values.MutexValue:
        return None
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


class _Ours:
    """The package's metric families among what a collector yields (a multiprocess directory
    also holds Feast's feast_* metrics, which are not ours to show)."""

    def __init__(self, inner: Collector) -> None:
        self.inner = inner

    def collect(self) -> Iterable[Metric]:
        return [family for family in self.inner.collect() if family.name.startswith(PREFIX)]


def scrape_registry(*extra: Collector) -> CollectorRegistry:
    """What one exposition shows: the package's metrics, this process's CPU and memory, and `extra`.

    The package's metrics are those of every process sharing the multiprocess directory (see the
    module docstring), or of this process when its values are in memory."""
    path = multiprocess_dir()
    registry = CollectorRegistry()
    registry.register(_Ours(MultiProcessCollector(None, path=path)) if path else REGISTRY)
    registry.register(ProcessCollector(registry=None))
    for collector in extra:
        registry.register(collector)
    return registry


def render(registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """The registry's metrics in the format the Accept header asks for (Prometheus text by default)."""
    encode, content_type = choose_encoder(accept or "")
    return encode(registry), content_type


def start_metrics_server(port: int, addr: str = "127.0.0.1") -> None:
    """Serve `scrape_registry()` at http://addr:port/metrics from a daemon thread (a worker's metrics port).

    Raises ConfigError when the address cannot be bound (in use, or not an address of this host)."""
    try:
        start_http_server(port, addr, registry=scrape_registry())
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}; choose another --metrics-port or address"
        ) from exc
