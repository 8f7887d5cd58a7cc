"""Served-feature logging: what the API's `features/extract` served, in Feast's feature-log schema.

Feast 0.67's Python feature server (`feast serve`) logs nothing (only its Go server did, and the
Python package no longer ships it), so the feature services' `LoggingConfig` is honoured here:
each lookup of a feature service that has one becomes a row of Feast's log schema
(`FeatureServiceLoggingSource.get_schema`: the join key, `<view>__<feature>` with its `__status`
and `__timestamp`, request fields, `__log_timestamp`, `__log_date`, `__request_id`), sampled at the
config's `sample_rate`. Rows are buffered per process and written through Feast's own
provider (`write_feature_service_logs`, what `FeatureStore.write_logged_features` calls), so they
land where the config says, through the profile's offline store (ours: encrypted Parquet files
under the destination path), at most `Settings.feature_log_flush_s` seconds after serving, every
FLUSH_ROWS rows, and when the server stops. `monitor drift --source served` and `feast monitor
run --source-type log` read them; erasure and retention treat them like the feature tables.

What Feast's logger would add and we cannot: per-feature event timestamps (`__timestamp` is null:
the online reader returns values, not their times); `__status` is PRESENT for a value and
NOT_FOUND for a null. Logging never fails a request: a failed write is counted and logged (the
rows are dropped, never health values in the message).
"""

from __future__ import annotations

import logging
import operator
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from healthmate_features import _feast

log = logging.getLogger(__name__)

FLUSH_ROWS = 1000
SERVICE_CACHE_S = 30.0  # a changed logging_config reaches a running server within this
PRESENT, NOT_FOUND = 1, 3  # feast.protos.feast.serving.ServingService_pb2.FieldStatus


@dataclass
class _Service:
    service: Any  # feast.FeatureService, or None when it does not log
    sample_rate: float
    resolved_at: float
    logged: tuple[str, ...] = ()  # its log columns of values, `<view>__<feature>`, in the service's order
    features: tuple[str, ...] = ()  # the feature (features/extract's name) of each
    _pick: Any = field(init=False, repr=False, default=None)

    @classmethod
    def of(cls, service: Any, now: float) -> _Service:
        """The entry of a feature service (None when unknown) resolved at `now`; without a
        LoggingConfig it does not log."""
        config = getattr(service, "logging_config", None)
        if config is None:
            return cls(None, 0.0, now)
        logged = {
            f"{projection.name_to_use()}__{feature.name}": feature.name
            for projection in service.feature_view_projections
            for feature in projection.features
        }
        return cls(service, config.sample_rate, now, tuple(logged), tuple(logged.values()))

    def row(self, values: dict[str, Any]) -> tuple[Any, ...]:
        """The values of `logged`'s columns in a lookup's answer (None for a feature it lacks)."""
        if len(self.features) > 1:  # itemgetter of one name answers a value, not a tuple
            try:
                return tuple(self._pick(values))  # ~4x faster than the map below
            except KeyError:
                pass
        return tuple(map(values.get, self.features))

    def __post_init__(self) -> None:
        self._pick = operator.itemgetter(*self.features) if len(self.features) > 1 else None


@dataclass
class _Rows:
    """Buffered lookups of one service definition, ready to become columns: each lookup's values
    as a tuple in `logged`'s order (taken at record time, a few microseconds), so a flush only
    transposes them and hands whole columns to Arrow."""

    logged: tuple[str, ...]
    users: list[int] = field(default_factory=list)
    times: list[datetime] = field(default_factory=list)
    values: list[tuple[Any, ...]] = field(default_factory=list)


class ServedLog:
    """One process's buffer of served rows, flushed by a daemon thread. Thread-safe."""

    def __init__(self, store_of: Any, *, flush_s: float) -> None:
        """`store_of()`: the process's long-lived Feast FeatureStore (the online reader's)."""
        self._store_of = store_of
        self._flush_s = flush_s
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, tuple[str, ...]], _Rows] = {}  # by service and its log columns
        self._services: dict[str, _Service] = {}
        self._schemas: dict[tuple[str, Any], Any] = {}  # (service, registry cache time) -> log schema
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.written = 0
        self.failed = 0

    def record(self, feature_service: str, user_id: int, values: dict[str, Any], at: datetime) -> bool:
        """Buffer one served lookup (values by feature name, as features/extract answers) when the
        service logs and the sample says so; True when buffered."""
        entry = self._service(feature_service)
        if entry.service is None or (entry.sample_rate < 1.0 and random.random() >= entry.sample_rate):
            return False
        row = entry.row(values)
        with self._lock:
            rows = self._rows.get((feature_service, entry.logged))
            if rows is None:
                rows = self._rows[(feature_service, entry.logged)] = _Rows(entry.logged)
            rows.users.append(user_id)
            rows.times.append(at)
            rows.values.append(row)
            full = len(rows.users) >= FLUSH_ROWS
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="served-log", daemon=True)
                self._thread.start()
        if full:
            self._wake.set()
        return True

    def flush(self) -> int:
        """Write every buffered row now; the number written."""
        with self._lock:
            pending, self._rows = self._rows, {}
        done = 0
        for (name, _), rows in pending.items():
            entry = self._service(name)
            service = entry.service
            if service is None or not rows.users:
                continue
            try:
                store = self._store_of()
                registry = _CachedViews(store.registry)
                schema = self._schema(store, service, registry)
                _feast.write_feature_service_logs(store, service, self.table(rows, schema, entry.logged), registry)
            except Exception as exc:  # logging must never fail serving; the reason, never a value
                self.failed += len(rows.users)
                log.warning(
                    "served-feature log of %s: %d rows not written: %s", name, len(rows.users), type(exc).__name__
                )
                continue
            done += len(rows.users)
        self.written += done
        return done

    def close(self) -> None:
        """Stop the flushing thread and write what is buffered."""
        self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self._flush_s + 30)
        self.flush()

    def _schema(self, store: Any, service: Any, registry: Any) -> Any:
        """Feast's log schema of `service`, kept while the registry cache is the same (its reads cost ~25 ms)."""
        from feast.feature_logging import FeatureServiceLoggingSource

        key = (service.name, _feast.registry_cache_time(store.registry))
        schema = self._schemas.get(key)
        if schema is None:
            self._schemas = {k: v for k, v in self._schemas.items() if k[0] != service.name}
            schema = self._schemas[key] = FeatureServiceLoggingSource(service, store.project).get_schema(registry)
        return schema

    @staticmethod
    def table(rows: _Rows, schema: Any, logged: tuple[str, ...]) -> Any:
        """The rows as an Arrow table of Feast's log schema `schema` of their service, whose value
        columns are `logged` now (a column the rows were not recorded with is null, NOT_FOUND).

        Runs on the flushing thread, beside the API's event loop, so it keeps Python work short:
        the recorded tuples are transposed at once, a column is one Arrow conversion, statuses are
        computed by Arrow, and between columns the loop's thread may take the GIL back
        (time.sleep(0)) rather than wait out the interpreter's switch interval (5 ms)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        from feast.feature_logging import LOG_DATE_FIELD, LOG_TIMESTAMP_FIELD, REQUEST_ID_FIELD

        count = len(rows.users)
        recorded = dict(zip(rows.logged, zip(*rows.values, strict=True), strict=True))
        types = {column.name: column.type for column in schema}
        features = set(logged)
        stamps = pa.array(rows.times, type=pa.timestamp("us", tz="UTC"))  # the request times
        arrays: dict[str, Any] = {}

        def values(name: str) -> Any:
            if name not in arrays:
                found = recorded.get(name)
                arrays[name] = pa.nulls(count, types[name]) if found is None else pa.array(found, type=types[name])
            return arrays[name]

        present, not_found = pa.scalar(PRESENT, pa.int32()), pa.scalar(NOT_FOUND, pa.int32())
        columns = []
        for column in schema:
            name = column.name
            if name in (LOG_TIMESTAMP_FIELD, LOG_DATE_FIELD):
                array = stamps.cast(column.type)
            elif name == REQUEST_ID_FIELD:
                array = pa.array([uuid.uuid4().hex for _ in range(count)], type=column.type)  # one per lookup
            elif name.endswith("__status") and name[: -len("__status")] in features:
                array = pc.if_else(pc.is_valid(values(name[: -len("__status")])), present, not_found)
            elif name.endswith("__timestamp") and name[: -len("__timestamp")] in features:
                array = pa.nulls(count, column.type)  # the value's event time: unknown (see the module)
            elif name in features:
                array = values(name)
            elif name == "user_id":
                array = pa.array(rows.users, type=column.type)
            elif pa.types.is_timestamp(column.type):  # a request field: the request time (event_timestamp)
                array = stamps.cast(column.type, safe=False)  # to its unit, as pa.array would
            else:
                array = pa.nulls(count, column.type)
            columns.append(array.cast(column.type))
            time.sleep(0)  # the event loop's turn
        return pa.Table.from_arrays(columns, schema=schema)

    def _service(self, name: str) -> _Service:
        now = time.monotonic()
        entry = self._services.get(name)
        if entry is not None and now - entry.resolved_at < SERVICE_CACHE_S:
            return entry
        try:
            service = self._store_of().get_feature_service(name, allow_cache=True)
        except Exception:  # an unknown service: the lookup itself reports it
            service = None
        entry = _Service.of(service, now)
        self._services[name] = entry
        return entry

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self._flush_s)
            self._wake.clear()
            if self._stopped:
                return
            self.flush()


_logs: dict[Any, ServedLog] = {}
_logs_lock = threading.Lock()


def served_log_for(settings: Any) -> ServedLog:
    """The process's ServedLog for `settings` (created on first use), over the online reader's store."""
    with _logs_lock:
        found = _logs.get(settings)
        if found is None:

            def store_of() -> Any:
                from healthmate_features.stores import feature_store

                reader = feature_store.online_reader(settings)
                return reader.store if reader is not None else feature_store.open_feature_store(settings)

            found = _logs[settings] = ServedLog(store_of, flush_s=settings.feature_log_flush_s)
        return found


def close_served_log(settings: Any) -> None:
    """Flush and stop the process's ServedLog for `settings`, if any (the API's shutdown)."""
    with _logs_lock:
        served = _logs.pop(settings, None)
    if served is not None:
        served.close()


class _CachedViews:
    """A Feast registry whose feature view reads are served from its cache (Feast's TTL still applies).

    Feast's `FeatureServiceLoggingSource.get_schema` reads each view with `allow_cache=False`: a
    reload of the whole registry per view at every flush, which also made every process's online
    reader rebuild its plans."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)

    def get_feature_view(self, name: str, project: str, allow_cache: bool = False) -> Any:
        return self._registry.get_feature_view(name, project, allow_cache=True)

    def get_on_demand_feature_view(self, name: str, project: str, allow_cache: bool = False) -> Any:
        return self._registry.get_on_demand_feature_view(name, project, allow_cache=True)

    def get_stream_feature_view(self, name: str, project: str, allow_cache: bool = False) -> Any:
        return self._registry.get_stream_feature_view(name, project, allow_cache=True)
