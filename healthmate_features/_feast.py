"""Compatibility layer: the only place that touches Feast's private names and internal layouts.

Feast is pinned to one minor release (FEAST_VERSION_FAMILY). Everything else in the package uses
Feast's public API: the names `feast` exports, its definition modules (`feast.types`,
`feast.value_type`, `feast.data_source`, `feast.repo_config`, ...) and the extension points its
documentation tells a custom store to import (`OfflineStore`, `RetrievalJob`, `RetrievalMetadata`,
`FileSource`, `SavedDatasetFileStorage`, `BaseRegistry`, the Postgres store's classes). What we
need beyond that is reached here and only here:

- underscored Feast functions and attributes (`feast.utils._get_cached_request_context`,
  `_parse_feature_ref`, `_mmh3`, `_redis_key`, `_get_conn`, the registry's
  `_refresh_cached_registry_if_necessary`, `FeatureStore._get_provider`);
- helpers in Feast's internal modules (`feast.infra.offline_stores.offline_utils`,
  `feast.type_map`, `feast.types.from_feast_to_pyarrow_type`, the generated protos) and internal
  constants (`DUMMY_ENTITY_ID`, `DUMMY_ENTITY_VAL`);
- Feast's Redis layout, which the fast online reader reads without Feast: one hash per entity
  under `serialize_entity_key(v3) + project`, one field per feature (`murmur3_32("view:feature")`,
  4 bytes little endian) holding a serialized `ValueProto`, plus `_ts:<view>` timestamps;
- Feast's SQLite online store layout, which the fast reader reads over the store's own connection
  (`SqliteOnlineStore._get_conn`): one table per feature view, `<project>_<view>`
  (`helpers.compute_table_id`), one row per (entity_key, feature_name) whose `value` is a
  serialized `ValueProto`, entity_key being `serialize_entity_key(v3)` (no project);
- the per-value statuses of an online response (`FieldStatus`, a generated proto enum).

tests/unit/test_feast_contract.py pins every name and layout used here against the installed
Feast, without servers. When a Feast upgrade fails it, adapt this module (and only this module);
tests/unit/test_feast_contract.py also fails when any other module reaches Feast's private names.
Layer: the lowest, beside config and errors (imports feast, the standard library, nothing of ours).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from feast import utils as _utils
from feast.feature_view import DUMMY_ENTITY_ID, DUMMY_ENTITY_VAL
from feast.infra.common.materialization_job import MaterializationJobStatus
from feast.infra.compute_engines.backends.pandas_backend import PandasBackend
from feast.infra.compute_engines.local.compute import LocalComputeEngine, LocalComputeEngineConfig
from feast.infra.compute_engines.local.feature_builder import LocalFeatureBuilder
from feast.infra.compute_engines.local.job import LocalMaterializationJob
from feast.infra.compute_engines.local.nodes import LocalOutputNode
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.offline_stores import offline_utils as _offline_utils
from feast.infra.online_stores.helpers import _mmh3, _redis_key, compute_table_id, compute_versioned_name
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import (
    arrow_to_pg_type,
    feast_value_type_to_python_type,
    pg_type_code_to_arrow,
    python_values_to_proto_values,
)
from feast.types import from_feast_to_pyarrow_type
from feast.value_type import ValueType

if TYPE_CHECKING:
    from psycopg import Connection

__all__ = [
    "DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL",
    "DUMMY_ENTITY_ID",
    "DUMMY_ENTITY_VAL",
    "LocalComputeEngine",
    "LocalComputeEngineConfig",
    "LocalFeatureBuilder",
    "LocalOutputNode",
    "materialization_job",
    "pandas_backend",
    "serialized_values",
    "table_entity_keys",
    "ENTITY_KEY_SERIALIZATION_VERSION",
    "FEAST_VERSION_FAMILY",
    "RETRIEVAL_JOB_HOOKS",
    "RedisOnlineStore",
    "RedisOnlineStoreConfig",
    "RequestContext",
    "SqliteOnlineStore",
    "SqliteOnlineStoreConfig",
    "arrow_to_pg_type",
    "as_feast_values",
    "assert_expected_columns_in_entity_df",
    "compute_non_entity_date_range",
    "decode_values",
    "entity_selections",
    "feast_redis_key",
    "from_feast_to_pyarrow_type",
    "get_expected_join_keys",
    "get_feature_view_query_context",
    "get_pyarrow_schema_from_batch_source",
    "infer_event_timestamp_from_entity_df",
    "entity_key_bytes",
    "no_async_methods",
    "online_store_kind",
    "online_store_of",
    "online_store_without_retries",
    "redis_hmget_replies",
    "redis_view_name",
    "sqlite_view_table",
    "value_proto",
    "online_writes_counted",
    "int64_entity_key",
    "int64_redis_key",
    "online_request_context",
    "parse_feature_ref",
    "pg_connect",
    "pg_type_code_to_arrow",
    "redis_field",
    "redis_timestamp_field",
    "redis_timestamp_view",
    "registry_cache_stamp",
    "offline_store_of",
    "set_offline_store_config",
    "sqlite_connection",
    "sqlite_table",
    "stored_in_response",
]

FEAST_VERSION_FAMILY = "0.67."  # the minor release this module is written against (pyproject pins 0.67.*)
ENTITY_KEY_SERIALIZATION_VERSION = 3  # the only entity key layout the fast online reader builds
# The RetrievalJob methods our offline stores override: underscored in Feast, but the hooks its
# "adding a new offline store" guide tells a store to implement.
RETRIEVAL_JOB_HOOKS = ("_to_df_internal", "_to_arrow_internal")

# --- offline: Feast's helpers for point-in-time joins (feast.infra.offline_stores.offline_utils) --------

DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL: str = _offline_utils.DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL


def infer_event_timestamp_from_entity_df(entity_schema: dict[str, Any]) -> str:
    """The entity frame's event timestamp column, chosen as Feast chooses it (offline_utils)."""
    return _offline_utils.infer_event_timestamp_from_entity_df(entity_schema)


def compute_non_entity_date_range(
    feature_views: list[Any], *, start_date: Any = None, end_date: Any = None
) -> tuple[Any, Any]:
    """The (start, end) of a retrieval without an entity frame, as Feast fills in missing bounds
    (`utils.compute_non_entity_date_range`: end defaults to now, start to end minus the largest ttl
    or 30 days); both tz-aware."""
    return _utils.compute_non_entity_date_range(feature_views, start_date=start_date, end_date=end_date)


def get_expected_join_keys(project: str, feature_views: list[Any], registry: Any) -> set[str]:
    """The join keys an entity frame must carry for these views, as Feast computes them (offline_utils)."""
    return _offline_utils.get_expected_join_keys(project, feature_views, registry)


def assert_expected_columns_in_entity_df(entity_schema: dict[str, Any], join_keys: set[str], timestamp: str) -> None:
    """Raise Feast's own error when the entity frame lacks a join key or the timestamp (offline_utils)."""
    _offline_utils.assert_expected_columns_in_entity_df(entity_schema, join_keys, timestamp)


def get_feature_view_query_context(
    feature_refs: list[str], feature_views: list[Any], registry: Any, project: str, span: tuple[Any, Any]
) -> list[Any]:
    """Feast's per-view description of a point-in-time query (offline_utils.FeatureViewQueryContext list)."""
    return _offline_utils.get_feature_view_query_context(feature_refs, feature_views, registry, project, span)


def entity_selections(context: Any) -> list[tuple[str, str]]:
    """(source column, join key) pairs of a FeatureViewQueryContext ('<column> AS <key>' strings in Feast)."""
    return [(column, key) for column, key in (selection.split(" AS ") for selection in context.entity_selections)]


def get_pyarrow_schema_from_batch_source(config: Any, source: Any) -> tuple[Any, list[str]]:
    """A batch source's Arrow schema and column names, as Feast derives them (offline_utils)."""
    return _offline_utils.get_pyarrow_schema_from_batch_source(config, source)


def offline_store_of(store: Any) -> Any:
    """The OfflineStore object a FeatureStore's provider uses (`FeatureStore._get_provider().offline_store`)."""
    return store._get_provider().offline_store


def set_offline_store_config(config: Any, store_config: Any) -> None:
    """Make `config` (a RepoConfig copy) answer `config.offline_store` with `store_config`.

    Sets the property's cache, `RepoConfig._offline_store`."""
    config._offline_store = store_config


def pg_connect(offline_store_config: Any) -> Connection:
    """A psycopg connection made as Feast's Postgres store makes it (`connection_utils._get_conn`)."""
    from feast.infra.utils.postgres.connection_utils import _get_conn  # imports psycopg: only when used

    return _get_conn(offline_store_config)


# --- online: Feast's own request resolution and registry cache (feast.utils, the registry) -------------


class RequestContext(NamedTuple):
    """What `feast.utils._get_cached_request_context` returns for an online request, by name."""

    feature_refs: list[str]
    on_demand_feature_views: list[Any]
    entity_name_to_join_key_map: dict[str, str]
    entity_type_map: dict[str, Any]
    join_keys: set[Any]  # join key names, and Entity objects for on-demand views' entities
    grouped_refs: list[tuple[Any, list[str]]]  # (feature view, requested feature names)
    result_names: frozenset[str]
    request_data: set[str]
    entityless: bool


def online_request_context(registry: Any, project: str, features: Any, full_feature_names: bool) -> RequestContext:
    """Feast's resolution of a feature service or refs for an online read (`utils._get_cached_request_context`)."""
    return RequestContext(*_utils._get_cached_request_context(registry, project, features, full_feature_names))


def stored_in_response(response: Any) -> dict[str, list[bool]]:
    """Per column of a Feast OnlineResponse, per row: whether the online store held a value for it.

    Reads the response's per-value statuses: anything but NOT_FOUND. Entity columns, request data
    and on-demand outputs are always PRESENT. Feast 0.67's Redis store marks every field PRESENT,
    even for a key that does not exist (`RedisOnlineStore._get_features_for_entity` returns the
    requested names with empty values), so only the SQL online stores (SQLite) say NOT_FOUND."""
    not_found = FieldStatus.NOT_FOUND
    names = response.proto.metadata.feature_names.val
    return {
        name: [status != not_found for status in vector.statuses]
        for name, vector in zip(names, response.proto.results, strict=True)
    }


def parse_feature_ref(ref: str) -> tuple[str, int | None, str]:
    """'view[@version]:feature' split into (view, version, feature) as Feast splits it (`utils._parse_feature_ref`)."""
    return _utils._parse_feature_ref(ref)


def registry_cache_stamp(registry: Any) -> Any:
    """Run Feast's registry cache TTL check (`_refresh_cached_registry_if_necessary`); return the cache's time.

    Feast's file registry has no such check (its reads do it): it is reloaded here once expired.
    The time is `cached_registry_proto_created`: it changes exactly when Feast reloads its registry
    cache, so whatever we resolve from the registry may be cached until it changes. None for a
    registry without that cache.
    """
    refresh = getattr(registry, "_refresh_cached_registry_if_necessary", None)
    if callable(refresh):
        refresh()  # Feast's own TTL: a no-op until cache_ttl_seconds have passed
    elif hasattr(registry, "is_cache_valid") and not registry.is_cache_valid():
        registry._get_registry_proto(project=None, allow_cache=True)  # the file registry: reloads once expired
    return getattr(registry, "cached_registry_proto_created", None)


# --- materialization: what Feast writes to the online store --------------------------------------------


@contextmanager
def online_writes_counted(store: Any, count: Callable[[str, int], None]) -> Iterator[None]:
    """While inside, call `count(view name, rows)` after each batch or table written to the online store.

    Feast's compute engines write materialized rows with `online_write_batch` (the public method
    of its OnlineStore interface) of the provider's online store, `FeatureStore._get_provider()`;
    our engine (stores.online_engine) hands whole tables to the store's `write_table` instead.
    Those methods of that one instance are wrapped inside the block and restored after it. Only
    this FeatureStore object is affected: open a fresh one per materialization.
    """
    online = store._get_provider().online_store
    write = online.online_write_batch
    write_table = getattr(online, "write_table", None)

    def counted(config: Any, table: Any, data: Sequence[Any], progress: Any) -> None:
        write(config, table, data, progress)
        count(table.name, len(data))

    def counted_table(config: Any, view: Any, table: Any) -> None:
        assert write_table is not None
        write_table(config, view, table)
        count(view.name, table.num_rows)

    online.online_write_batch = counted
    if write_table is not None:
        online.write_table = counted_table
    try:
        yield
    finally:
        del online.online_write_batch  # the instance attribute: the class's method shows again
        if write_table is not None:
            del online.write_table


def online_store_without_retries(store: Any) -> None:
    """Make the Redis client Feast's online store writes with fail at the first timeout: no retries.

    Feast builds its redis-py client from the connection string (JSON values only, so no Retry
    object) and redis-py retries 3 times with backoff by default: 4 socket timeouts and more per
    failed batch. This replaces the retry policy of the client the provider's online store caches
    (`RedisOnlineStore._get_client`). Only this FeatureStore object; nothing for other online stores.
    """
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    if online_store_kind(store.config) != "redis":
        return
    online = store._get_provider().online_store
    online._get_client(store.config.online_store).set_retry(Retry(NoBackoff(), 0))


# --- materialization: Feast's local compute engine, which ours extends (stores.online_engine) -----------


def materialization_job(task: Any, error: BaseException | None) -> Any:
    """The job Feast's local engine returns for a task (`LocalMaterializationJob`): succeeded, or failed."""
    status = MaterializationJobStatus.ERROR if error is not None else MaterializationJobStatus.SUCCEEDED
    return LocalMaterializationJob(
        job_id=f"{task.feature_view.name}-{task.start_time}-{task.end_time}", status=status, error=error
    )


def pandas_backend() -> Any:
    """The DataFrame backend Feast's local engine picks for a materialization (no entity frame: pandas)."""
    return PandasBackend()


def serialized_values(array: Any, value_type: Any) -> list[bytes]:
    """An Arrow column as the serialized ValueProtos Feast's materialization writes for it
    (`utils._columns_to_proto_values`: `python_values_to_proto_values` over `to_numpy`)."""
    return [
        v.SerializeToString() for v in python_values_to_proto_values(array.to_numpy(zero_copy_only=False), value_type)
    ]


def table_entity_keys(table: Any, join_keys: dict[str, Any], version: int) -> list[bytes]:
    """Per row of an Arrow table: its entity key serialized as Feast's online stores key it.

    Feast builds an EntityKey proto per row from the join key columns (`utils._build_entity_keys`)
    and serializes it (`serialize_entity_key`); a single INT64 join key under version 3 is packed
    directly (`int64_entity_key`), the same bytes (tests/unit/test_feast_contract.py)."""
    import pyarrow as pa

    rows = table.num_rows
    if len(join_keys) == 1 and version == ENTITY_KEY_SERIALIZATION_VERSION:
        ((name, value_type),) = join_keys.items()
        column = table.column(name)
        if value_type == ValueType.INT64 and pa.types.is_int64(column.type) and column.null_count == 0:
            pack = int64_entity_key(name)
            return [pack(v) for v in column.to_numpy(zero_copy_only=False).tolist()]
    protos = {
        k: python_values_to_proto_values(table.column(k).to_numpy(zero_copy_only=False), t)
        for k, t in join_keys.items()
    }
    names = list(join_keys)
    return [
        serialize_entity_key(
            EntityKeyProto(join_keys=names, entity_values=[protos[k][i] for k in names]),
            entity_key_serialization_version=version,
        )
        for i in range(rows)
    ]


# --- online stores: the classes ours extend (stores.encrypted_online) and what they need of Feast ------


def online_store_kind(config: Any) -> str | None:
    """'redis' or 'sqlite' when a RepoConfig's online store is Feast's Redis or SQLite store or a
    subclass of one (ours encrypt), else None. By config class, not by the `type` string."""
    online = config.online_store
    if isinstance(online, RedisOnlineStoreConfig):
        return "redis"
    if isinstance(online, SqliteOnlineStoreConfig):
        return "sqlite"
    return None


def online_store_of(store: Any) -> Any:
    """The online store instance a FeatureStore's provider reads and writes with (`_get_provider()`)."""
    return store._get_provider().online_store


def redis_hmget_replies(online: Any, config: Any, commands: list[tuple[bytes, list[Any]]]) -> list[list[Any]]:
    """Feast's Redis store's own HMGETs for `commands` ((key, fields) pairs), one pipeline
    (`RedisOnlineStore._read_hash_fields`, the method every read path of that store goes through)."""
    return RedisOnlineStore._read_hash_fields(online, config, commands)


def value_proto(raw: bytes) -> Any:
    """A stored (serialized) ValueProto as the message Feast's online reads return."""
    return _from_bytes(raw)


def no_async_methods() -> Any:
    """An online store's `async_supported` saying it reads and writes synchronously only (Feast then uses those)."""
    from feast.infra.supported_async_methods import SupportedAsyncMethods

    return SupportedAsyncMethods(read=False, write=False)


def entity_key_bytes(entity_key: Any, version: int) -> bytes:
    """An EntityKey proto serialized as Feast's online stores key it (`serialize_entity_key`)."""
    return serialize_entity_key(entity_key, entity_key_serialization_version=version)


def redis_view_name(config: Any, view: Any) -> str:
    """The name Feast's Redis store uses for a view's fields (`view:feature`, `_ts:view`): versioned when enabled."""
    return compute_versioned_name(view, config.registry.enable_online_feature_view_versioning)


def sqlite_view_table(config: Any, view: Any) -> str:
    """A view's table in Feast's SQLite online store for this config (`compute_table_id`; versioned if enabled)."""
    return compute_table_id(config.project, view, config.registry.enable_online_feature_view_versioning)


# --- online: Feast's Redis layout (feast.infra.online_stores.redis, helpers, key_encoding_utils) -------


def redis_field(view: str, feature: str) -> bytes:
    """The field of a user's Redis hash that holds one feature: murmur3 of 'view:feature' (`helpers._mmh3`)."""
    return _mmh3(f"{view}:{feature}")


def redis_timestamp_field(view: str) -> bytes:
    """The field Feast writes into a user's Redis hash with every row of a view: `_ts:<view>`, the row's time.

    It exists exactly when the online store holds a row of that view for the user."""
    return f"_ts:{view}".encode()


def redis_timestamp_view(field: Any) -> str | None:
    """The view whose `_ts:<view>` field `field` is (str or bytes), or None for any other field."""
    if isinstance(field, bytes):
        return field[4:].decode() if field.startswith(b"_ts:") else None
    return field[4:] if isinstance(field, str) and field.startswith("_ts:") else None


def feast_redis_key(project: str, join_key: str, value: int) -> bytes:
    """The Redis key of one INT64 entity as Feast computes it (`helpers._redis_key` over an EntityKey proto)."""
    key = EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(int64_val=value)])
    return _redis_key(project, key, ENTITY_KEY_SERIALIZATION_VERSION)


def int64_entity_key(join_key: str) -> Callable[[int], bytes]:
    """A function id -> `serialize_entity_key` v3 of {join_key: INT64 id}, without protobuf.

    The key count, then the key's type, length and name, then the value's type, length and 8
    little-endian bytes. Feast's SQLite online store keys its rows by it (`entity_key`).
    """
    name = join_key.encode("utf8")
    head = (
        struct.pack("<III", 1, ValueType.STRING.value, len(name)) + name + struct.pack("<II", ValueType.INT64.value, 8)
    )
    pack = struct.Struct("<q").pack

    def key(value: int) -> bytes:
        return head + pack(value)

    return key


def int64_redis_key(join_key: str, project: str) -> Callable[[int], bytes]:
    """A function id -> the Redis key Feast writes an INT64 entity under, equal to `feast_redis_key`, no protobuf.

    serialize_entity_key v3 of {join_key: INT64} (`int64_entity_key`), then the project name.
    """
    entity_key = int64_entity_key(join_key)
    tail = project.encode("utf-8")

    def key(value: int) -> bytes:
        return entity_key(value) + tail

    return key


# --- online: Feast's SQLite online store (feast.infra.online_stores.sqlite, helpers) -------------------


def sqlite_connection(store: Any) -> Any:
    """The sqlite3 connection Feast's SQLite online store of a FeatureStore reads and writes with.

    `SqliteOnlineStore._get_conn` of the store's provider: opened once, kept by that FeatureStore.
    Use it rather than a connection of your own: SQLite drops every POSIX lock a process holds on
    a file when the process closes any handle to it, so closing an extra connection could release
    the locks of Feast's (e.g. during a materialization in the same process).
    """
    online = store._get_provider().online_store
    return online._get_conn(store.config)


def open_sqlite_store(online_store: Any, config: Any) -> Any:
    """Feast's `SqliteOnlineStore._get_conn` of an online store object (a subclass's own, not its override):
    the connection, opened on first call and kept by the store object."""
    return SqliteOnlineStore._get_conn(online_store, config)


def write_feature_service_logs(store: Any, service: Any, logs: Any, registry: Any) -> None:
    """What `FeatureStore.write_logged_features` does, with the registry given (its provider's
    `write_feature_service_logs`): the logs go to the service's LoggingConfig destination."""
    store._get_provider().write_feature_service_logs(
        feature_service=service, logs=logs, config=store.config, registry=registry
    )


def registry_cache_time(registry: Any) -> Any:
    """The registry cache's time (`cached_registry_proto_created`) as it is, no TTL check; None without a cache."""
    return getattr(registry, "cached_registry_proto_created", None)


def sqlite_table(project: str, view: Any) -> str:
    """The name of a feature view's table in Feast's SQLite online store, `<project>_<view>` (unversioned)."""
    return compute_table_id(project, view, False)


_DOUBLE_TAG = 0x29  # ValueProto field 5 (double_val), wire type 1 (64-bit)
_unpack_double = struct.Struct("<d").unpack_from
_from_bytes = ValueProto.FromString
_to_python = feast_value_type_to_python_type


def _decode(raw: bytes | None) -> Any:
    """A stored ValueProto (bytes) as Feast's Python value; None when absent or null."""
    if not raw:
        return None
    if raw[0] == _DOUBLE_TAG and len(raw) == 9:
        return _unpack_double(raw, 1)[0]
    return _to_python(_from_bytes(raw))


def decode_values(raws: Sequence[bytes | None], *, generic: bool = False) -> list[Any]:
    """Stored ValueProto bytes (HMGET replies) as Feast's Python values; None when absent or null.

    Doubles are read straight from the protobuf wire format unless `generic`, which sends every
    value through `ValueProto` and Feast's `feast_value_type_to_python_type`.
    """
    if generic:
        return [_to_python(_from_bytes(raw)) if raw else None for raw in raws]
    return [_decode(raw) for raw in raws]


def decode_row(raws: Sequence[bytes | None], generic: set[int] | frozenset[int]) -> list[Any]:
    """One user's stored ValueProto bytes as Feast's Python values (`decode_values`; the `generic` indexes generic)."""
    return [
        (_to_python(_from_bytes(raw)) if raw else None) if index in generic else _decode(raw)
        for index, raw in enumerate(raws)
    ]


_FLOATS = frozenset({float, np.float64})
_INTS = frozenset({int, np.int64})


def as_feast_values(values: Any, value_type: ValueType = ValueType.UNKNOWN) -> list[Any]:
    """Python values (a list or an array) as Feast serves them: through ValueProto and back (`feast.type_map`).

    Finite floats of a DOUBLE and ints of an INT64 feature come back as `float(v)` and `int(v)`
    from that round trip: those are converted directly (tests/unit/test_feast_contract.py)."""
    if value_type is ValueType.DOUBLE or value_type is ValueType.INT64:
        kinds = set(map(type, values))
        if value_type is ValueType.DOUBLE and kinds <= _FLOATS and all(map(math.isfinite, values)):
            return [float(v) for v in values]
        if value_type is ValueType.INT64 and kinds <= _INTS and all(-(2**63) <= v < 2**63 for v in values):
            return [int(v) for v in values]
    return [_to_python(v) for v in python_values_to_proto_values(values, value_type)]


def duckdb_monitoring_stats(
    conn: Any,
    from_expr: str,
    feature_columns: list[tuple[str, str]],
    timestamp_field: str,
    start_date: Any,
    end_date: Any,
    histogram_bins: int,
    top_n: int,
) -> list[dict[str, Any]]:
    """Feast's DuckDB monitoring metrics (DuckDBOfflineStore.compute_monitoring_metrics) over
    `from_expr` on our connection `conn`: a source Feast's own `read_parquet` cannot open (an
    encrypted one, scanned through a dataset registered on `conn`). Same statements, same results."""
    from datetime import timezone

    from feast.infra.offline_stores import duckdb as feast_duckdb
    from feast.infra.offline_stores.offline_utils import get_timestamp_filter_sql

    ts_filter = get_timestamp_filter_sql(
        start_date, end_date, timestamp_field, tz=timezone.utc, cast_style="timestamp", date_time_separator=" "
    )
    numeric = [n for n, t in feature_columns if t == "numeric"]
    results: list[dict[str, Any]] = []
    if numeric:
        results.extend(feast_duckdb._duckdb_numeric_stats(conn, from_expr, numeric, ts_filter, histogram_bins))
    for name in (n for n, t in feature_columns if t == "categorical"):
        results.append(feast_duckdb._duckdb_categorical_stats(conn, from_expr, name, ts_filter, top_n))
    return results


# --- PySpark's JVM: private class state of PySpark, which Feast's Spark store runs on ---------------------


def spark_gateway() -> Any:
    """The py4j gateway to the JVM PySpark launched in this process (None before its first session).

    PySpark's `launch_gateway` keeps the JVM's process as `gateway.proc` (a Popen whose stdin, when
    closed, ends the JVM). Pinned by tests/unit/test_feast_contract.py::test_pyspark_jvm_state."""
    from pyspark import SparkContext

    gateway: Any = SparkContext._gateway
    return gateway


def spark_forget_gateway() -> None:
    """Clear PySpark's class-level JVM state (context, gateway, session), so that the next session
    launches a new JVM. Shutting the old gateway and JVM down is the caller's part."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    SparkContext._active_spark_context = None
    SparkContext._gateway = None
    SparkContext._jvm = None
    SparkSession._instantiatedSession = None
    SparkSession._activeSession = None
