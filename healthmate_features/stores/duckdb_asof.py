"""A Feast offline store that answers point-in-time joins with DuckDB ASOF joins over Parquet.

Select it in ``feature_store.yaml``::

    offline_store:
      type: healthmate_features.stores.duckdb_asof.HealthmateDuckDBOfflineStore
      memory_limit: 4GB          # optional: DuckDB spills to temp_directory beyond this
      temp_directory: data/tmp   # optional: relative paths resolve against the repo root
      threads: 2                 # optional: default is one per core
      filter_by_created_timestamp: false   # optional: project-wide default, see below

Semantics are Feast's (its DuckDB/ibis store is the reference): for every entity row, each feature
view contributes its latest source row with ``event_timestamp <= entity timestamp`` and, when the
view's ttl is set and non-zero, ``event_timestamp >= entity timestamp - ttl``; ties on the event
timestamp go to the latest created timestamp (a null created timestamp loses). With
``filter_by_created_timestamp`` (Feast's own ``get_historical_features`` argument, or the config
default above) rows created after the entity timestamp are ignored. Output rows are the entity rows,
in their order, duplicates included, with the entity columns untouched.

How: one ``ASOF LEFT JOIN`` query per feature view, keyed on the join keys and on the event
timestamp as integer nanoseconds since the epoch (so any precision, ns included, compares exactly;
naive timestamps are UTC). When a view has a created timestamp the ASOF key is the 128-bit pair
(event ns, created ns), which breaks ties inside the join. The ttl is a post-filter on the matched
row. Each query returns its rows unordered with the entity row's position; Arrow puts them back in
entity order (a linear scatter, not a sort). Only the entity frame passes through pandas/Arrow;
sources are scanned with ``read_parquet`` and the join runs inside DuckDB, out of core beyond
``memory_limit``.

Beyond the join: retrieval without an entity frame (``start_date``/``end_date``: the distinct
(join keys, event time) rows of the sources in that window, joined as above), ``offline_write_batch``
(pushes; a missing source is created), ``write_logged_features`` to a FileLoggingDestination, and
Feast's monitoring methods (stores.duckdb_monitoring).

An encrypted source (the package's feature tables: README "Security and compliance") is scanned
through a pyarrow dataset registered on the connection instead (``crypto.duckdb_scan``), decrypted
with the keyring of the repository's settings. Every file the store writes (a pushed row's
source, a served-feature log) is encrypted under the active data key with a readable footer:
Feast's own `write_to_offline_store` reads a source's schema with plain pyarrow before it calls
the store (README "Security and compliance").
"""

from __future__ import annotations

import glob
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from feast.data_format import ParquetFormat
from feast.data_source import DataSource
from feast.errors import EntityTimestampInferenceException, SavedDatasetLocationAlreadyExists
from feast.feature_logging import LoggingConfig, LoggingSource
from feast.feature_view import FeatureView
from feast.infra.offline_stores.file_source import FileLoggingDestination, FileSource, SavedDatasetFileStorage
from feast.infra.offline_stores.offline_store import OfflineStore, RetrievalJob, RetrievalMetadata
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import FeastConfigBaseModel, RepoConfig
from feast.saved_dataset import SavedDatasetStorage
from pydantic import StrictBool, StrictInt, StrictStr

from healthmate_features._feast import (
    DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL,
    DUMMY_ENTITY_ID,
    DUMMY_ENTITY_VAL,
    compute_non_entity_date_range,
    get_pyarrow_schema_from_batch_source,
    infer_event_timestamp_from_entity_df,
)
from healthmate_features.backends import repo_keyring
from healthmate_features.crypto import duckdb_scan, open_parquet, write_parquet
from healthmate_features.errors import OfflineStoreError, OfflineStoreUnsupportedError
from healthmate_features.stores.duckdb_monitoring import FeastDuckDBMonitoring

STORE_TYPE: Final = "healthmate_features.stores.duckdb_asof.HealthmateDuckDBOfflineStore"
LEGACY_STORE_TYPE: Final = (
    "healthmate_features.offline_store.HealthmateDuckDBOfflineStore"  # before 0.2; removed in 0.3
)

_ROW = "__hm_row"  # position of the entity row: restores input order
_TS = "__hm_ts"  # entity timestamp as int64 ns since the epoch (UTC)
_ORD = "__hm_ord"  # entity side of the (event, created) ASOF key
_TWO_64 = 1 << 64
_NATIVE_US: Final = {"TIMESTAMP": "", "TIMESTAMP WITH TIME ZONE": "::TIMESTAMPTZ"}  # type -> cast of a TIMESTAMP
_TWO_63 = 1 << 63


class HealthmateDuckDBOfflineStoreConfig(FeastConfigBaseModel):
    """The ``offline_store:`` block of feature_store.yaml for HealthmateDuckDBOfflineStore."""

    type: Literal[
        "healthmate_features.stores.duckdb_asof.HealthmateDuckDBOfflineStore",
        "healthmate_features.offline_store.HealthmateDuckDBOfflineStore",
    ] = STORE_TYPE
    memory_limit: StrictStr | None = None
    """DuckDB memory limit, e.g. "4GB"; beyond it joins and sorts spill to temp_directory."""
    temp_directory: StrictStr | None = None
    """Where DuckDB spills; relative to the repo root. Default: DuckDB's own (.tmp beside the db)."""
    threads: StrictInt | None = None
    """DuckDB worker threads; default one per core."""
    filter_by_created_timestamp: StrictBool = False
    """Project-wide default for Feast's filter_by_created_timestamp (a call can switch it on)."""


def _quote(identifier: str) -> str:
    """Quote a SQL identifier for DuckDB."""
    return '"' + identifier.replace('"', '""') + '"'


def _literal(text: str) -> str:
    """Quote a SQL string literal for DuckDB."""
    return "'" + text.replace("'", "''") + "'"


def _connect(config: RepoConfig) -> duckdb.DuckDBPyConnection:
    """Open an in-memory DuckDB connection set up from the store config (UTC, limits, paths)."""
    options = config.offline_store
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = false")
    if config.repo_path is not None:
        con.execute(f"SET file_search_path = {_literal(str(config.repo_path))}")
    if getattr(options, "memory_limit", None):
        con.execute(f"SET memory_limit = {_literal(options.memory_limit)}")
    if getattr(options, "temp_directory", None):
        temp = FileSource.get_uri_for_file_path(config.repo_path, options.temp_directory)
        con.execute(f"SET temp_directory = {_literal(str(temp))}")
    if getattr(options, "threads", None):
        con.execute(f"SET threads = {int(options.threads)}")
    return con


def _source_path(config: RepoConfig, source: DataSource) -> str:
    """Return the absolute path of a Parquet FileSource, refusing any other kind of source."""
    if not isinstance(source, FileSource):
        raise OfflineStoreError(
            f"data source {source.name!r} is a {type(source).__name__}; "
            "HealthmateDuckDBOfflineStore reads FileSource over Parquet only"
        )
    if source.file_format is not None and not isinstance(source.file_format, ParquetFormat):
        raise OfflineStoreError(
            f"data source {source.name!r} has file format {type(source.file_format).__name__}; "
            "HealthmateDuckDBOfflineStore reads Parquet only (file_format=ParquetFormat())"
        )
    return str(FileSource.get_uri_for_file_path(config.repo_path, source.path))


def _scan(config: RepoConfig, con: duckdb.DuckDBPyConnection, source: DataSource) -> str:
    """Return the DuckDB table expression that reads a Parquet FileSource (file or directory) on `con`.

    Plaintext files are read by DuckDB's ``read_parquet``; encrypted ones through a pyarrow dataset
    registered on `con` (crypto.duckdb_scan), with the keyring of the repository's settings."""
    path = _source_path(config, source)
    if "://" not in path and os.path.isdir(path):
        path = os.path.join(path, "**", "*.parquet")
    files = [] if "://" in path else sorted(glob.glob(path, recursive=True))  # a file, or a glob pattern
    if not files:
        return f"read_parquet({_literal(path)})"  # DuckDB's own error names what is missing
    return duckdb_scan(con, list(files), lambda: repo_keyring(str(config.repo_path)))


def _columns(con: duckdb.DuckDBPyConnection, relation: str, what: str) -> dict[str, str]:
    """Return {column: DuckDB type} of a relation; a source that cannot be read is an error."""
    try:
        rows = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    except duckdb.Error as exc:
        raise OfflineStoreError(f"cannot read {what} ({relation}): {exc}") from exc
    return {name: dtype for name, dtype, *_ in rows}


def _require(columns: dict[str, str], wanted: Sequence[str], what: str) -> None:
    """Raise OfflineStoreError naming the columns of `wanted` that a source lacks."""
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise OfflineStoreError(
            f"{what} has no column {', '.join(map(repr, missing))} "
            f"(columns: {', '.join(columns)}); fix the source or the view's field_mapping"
        )


def _ns(column: str, dtype: str) -> str:
    """SQL for a timestamp column as int64 ns since the epoch; naive values are UTC."""
    if dtype.upper().startswith(("TIMESTAMP", "DATE")):
        return f"epoch_ns({_quote(column)})"
    return f"epoch_ns(CAST({_quote(column)} AS TIMESTAMPTZ))"


def _to_ns(value: datetime) -> int:
    """Return a datetime as int ns since the epoch; naive datetimes are UTC."""
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.value)


def _ttl_ns(ttl: timedelta | None) -> int | None:
    """Return a view's ttl in ns, or None when it sets no lower bound (None or zero, as Feast)."""
    if not ttl:
        return None
    return (ttl // timedelta(microseconds=1)) * 1000


def _entity_ns(table: pa.Table, column: str) -> pa.Array:
    """Return the entity timestamps as int64 ns since the epoch (strings parsed, naive = UTC)."""
    values = table.column(column)
    if not pa.types.is_timestamp(values.type):
        try:
            parsed = pd.to_datetime(values.to_pandas(), utc=True)
        except (ValueError, TypeError) as exc:
            raise OfflineStoreError(
                f"entity column {column!r} of type {values.type} is not a timestamp; "
                "pass datetimes (naive values are taken as UTC)"
            ) from exc
        values = pa.chunked_array([pa.array(parsed)])
    try:
        nanos = pc.cast(values, pa.timestamp("ns", tz=values.type.tz))
    except pa.ArrowInvalid as exc:
        raise OfflineStoreError(
            f"entity column {column!r} holds timestamps outside 1677-2262, which ns cannot hold"
        ) from exc
    return pc.cast(nanos, pa.int64()).combine_chunks()


def _event_timestamp_column(columns: dict[str, Any]) -> str:
    """Name the entity frame's event timestamp column as Feast does (by name, else the only one)."""
    if DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL in columns:
        return DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL
    stamps = [c for c, t in columns.items() if str(t).upper().startswith("TIMESTAMP")]
    if len(stamps) == 1:
        return stamps[0]
    raise EntityTimestampInferenceException(DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL)


def _ns_range(nanos: pa.Array) -> tuple[int, int] | None:
    """Return (min, max) of the entity timestamps in ns, or None when all are null."""
    bounds = pc.min_max(nanos)
    if not bounds["min"].is_valid:
        return None
    return bounds["min"].as_py(), bounds["max"].as_py()


@dataclass(frozen=True)
class _EntityInput:
    """The entity frame: its column names, its event timestamp column, and how to load it."""

    columns: tuple[str, ...]
    timestamp: str
    load: Callable[[duckdb.DuckDBPyConnection], pa.Table]


def _entity_input(config: RepoConfig, entity_df: pd.DataFrame | str | None) -> _EntityInput:
    """Describe the entity frame; a DataFrame is copied to Arrow now, SQL runs when the job does."""
    if isinstance(entity_df, pd.DataFrame):
        frame = pa.Table.from_pandas(entity_df, preserve_index=False)
        timestamp = infer_event_timestamp_from_entity_df(dict(zip(entity_df.columns, entity_df.dtypes, strict=True)))
        return _EntityInput(tuple(map(str, entity_df.columns)), timestamp, lambda con: frame)
    if isinstance(entity_df, str):
        con = _connect(config)
        try:
            columns = _columns(con, f"({entity_df})", "entity SQL query")
        finally:
            con.close()
        return _EntityInput(
            tuple(columns), _event_timestamp_column(columns), lambda con: _entity_from_sql(con, entity_df)
        )
    raise OfflineStoreError(f"entity_df is a {type(entity_df).__name__}; pass a pandas DataFrame or a SQL string")


def _entityless_input(config: RepoConfig, views: list[_ViewJoin], start: datetime, end: datetime) -> _EntityInput:
    """The entity rows of a retrieval without an entity frame: every distinct (join keys, event
    time) that the views' sources hold with start <= event time <= end, ordered by time and keys."""
    key_sets = {tuple(sorted(ent for _, ent in view.keys)) for view in views}
    if len(key_sets) != 1:
        raise OfflineStoreError(
            f"retrieval without an entity frame needs feature views with the same join keys; "
            f"{', '.join(v.name for v in views)} have {len(key_sets)} different sets "
            f"({'; '.join(', '.join(keys) or 'none' for keys in sorted(key_sets))}); "
            "request them in separate calls, or pass an entity frame"
        )
    (entity_cols,) = key_sets
    timestamp = DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL
    low, high = _to_ns(start), _to_ns(end)

    def load(con: duckdb.DuckDBPyConnection) -> pa.Table:
        selects = []
        for view in views:
            scan = _scan(config, con, view.source)
            columns = _columns(con, scan, f"source of feature view {view.name!r}")
            _require(columns, [k for k, _ in view.keys] + [view.timestamp], scan)
            ts = _ns(view.timestamp, columns[view.timestamp])
            by_entity = dict((ent, src) for src, ent in view.keys)
            keys = [f"{_quote(by_entity[ent])} AS {_quote(ent)}" for ent in entity_cols]
            selects.append(
                f"SELECT {', '.join([*keys, f'{ts} AS {_quote(timestamp)}'])} "
                f"FROM {scan} WHERE {ts} BETWEEN {low} AND {high}"
            )
        order = ", ".join(map(_quote, [timestamp, *entity_cols]))
        sql = f"SELECT DISTINCT * FROM ({' UNION ALL '.join(selects)}) ORDER BY {order}"
        try:
            rows = con.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            raise OfflineStoreError(
                f"DuckDB could not list the entity rows of {', '.join(v.name for v in views)}: {exc}"
            ) from exc
        stamps = pc.cast(rows.column(timestamp), pa.timestamp("ns", tz="UTC"))  # int64 ns: exact at any precision
        return rows.set_column(rows.column_names.index(timestamp), timestamp, stamps)

    return _EntityInput((*entity_cols, timestamp), timestamp, load)


def _entity_from_sql(con: duckdb.DuckDBPyConnection, query: str) -> pa.Table:
    """Run the entity SQL query in DuckDB and return its rows as Arrow."""
    try:
        return con.sql(query).to_arrow_table()
    except duckdb.Error as exc:
        raise OfflineStoreError(f"entity SQL query failed in DuckDB: {exc}; query: {query!r}") from exc


@dataclass(frozen=True)
class _ViewJoin:
    """One feature view's share of a point-in-time join, in source-column terms."""

    name: str
    source: DataSource
    keys: tuple[tuple[str, str], ...]  # (source column, entity column)
    timestamp: str
    created: str | None
    features: tuple[tuple[str, str], ...]  # (source column, output column)
    ttl_ns: int | None


def _plan_view(view: FeatureView, feature_refs: list[str], full_feature_names: bool) -> _ViewJoin:
    """Resolve a (projected) feature view into source columns, entity columns and output names."""
    source = view.batch_source
    if source is None:
        raise OfflineStoreError(f"feature view {view.name!r} has no batch_source to read from")
    reverse = {new: old for old, new in (source.field_mapping or {}).items()}
    prefix = view.projection.name_to_use()
    names = [ref.split(":", 1)[1] for ref in feature_refs if ref.startswith(f"{prefix}:")]
    base = view.projection.name_alias or view.name
    join_key_map = view.projection.join_key_map or {}
    created = source.created_timestamp_column or None
    return _ViewJoin(
        name=view.name,
        source=source,
        keys=tuple((reverse.get(c.name, c.name), join_key_map.get(c.name, c.name)) for c in view.entity_columns),
        timestamp=reverse.get(source.timestamp_field, source.timestamp_field),
        created=reverse.get(created, created) if created else None,
        features=tuple((reverse.get(n, n), f"{base}__{n}" if full_feature_names else n) for n in names),
        ttl_ns=_ttl_ns(view.ttl),
    )


def _view_sql(
    config: RepoConfig,
    con: duckdb.DuckDBPyConnection,
    view: _ViewJoin,
    entity_keys: dict[str, str],
    ts_range: tuple[int, int] | None,
    exclude_created_later: bool,
) -> tuple[list[str], str]:
    """Return the CTEs (after the entity rows' ``e``) and the SELECT that give a view's features per
    entity row: ``__hm_row`` then one column per feature, null where no row qualifies. Without
    filter_by_created_timestamp every entity row comes once (an ASOF LEFT JOIN); with it, only the
    entity rows that matched."""
    scan = _scan(config, con, view.source)
    columns = _columns(con, scan, f"source of feature view {view.name!r}")
    needed = [k for k, _ in view.keys] + [view.timestamp] + [c for c, _ in view.features]
    _require(columns, needed + ([view.created] if view.created else []), scan)
    ts = _ns(view.timestamp, columns[view.timestamp])
    cr = _ns(view.created, columns[view.created]) if view.created else None
    # Microsecond timestamps without a created timestamp are compared as they are, against the
    # entity time floored to the microsecond (t_us * 1000 <= e_ns exactly when t_us <= floor(e_ns /
    # 1000)): converting every source row to ns cost 6-11% of the join query's CPU.
    native = _NATIVE_US.get(columns[view.timestamp].upper()) if cr is None else None
    where = [f"{_quote(view.timestamp)} IS NOT NULL"]
    if ts_range is None:
        where.append("FALSE")
    elif native:
        where.append(f"{_quote(view.timestamp)} <= make_timestamp({ts_range[1] // 1000}){native}")
        if view.ttl_ns is not None and ts_range[0] - view.ttl_ns > -_TWO_63:
            where.append(
                f"{_quote(view.timestamp)} >= make_timestamp({-((view.ttl_ns - ts_range[0]) // 1000)}){native}"
            )
    else:
        where.append(f"{ts} <= {ts_range[1]}")
        if view.ttl_ns is not None and ts_range[0] - view.ttl_ns > -_TWO_63:
            where.append(f"{ts} >= {ts_range[0] - view.ttl_ns}")
    feats = [f"{_quote(src)} AS __f{j}" for j, (src, _) in enumerate(view.features)]
    keys = [f"{_quote(src)} AS __k{j}" for j, (src, _) in enumerate(view.keys)]
    # Only the columns the join needs: the right side is sorted, and spilled beyond memory_limit,
    # with all of them. Without a created timestamp the ASOF key is the event time itself.
    stamp = f"{_quote(view.timestamp)} AS __ts" if native else f"{ts} AS __ts"
    inner = ", ".join(keys + [stamp] + ([f"{cr} AS __cr"] if cr else []) + feats)
    vsql = f"SELECT {inner} FROM {scan} WHERE {' AND '.join(where)}"
    if cr:
        vsql = f"SELECT *, __ts::HUGEINT * {_TWO_64} + COALESCE(__cr::HUGEINT + {_TWO_63}, 0) AS __ord FROM ({vsql})"
    on = [f"e.{_quote(entity_keys[ent])} = v.__k{j}" for j, (_, ent) in enumerate(view.keys)]
    on.append(f"e.{_ORD} >= v.__ord" if cr else "e.__hm_native >= v.__ts" if native else f"e.{_TS} >= v.__ts")
    matched_ns = "epoch_ns(v.__ts)" if native else "v.__ts"
    ok = None if view.ttl_ns is None else f"(e.{_TS}::HUGEINT - {matched_ns}) <= {view.ttl_ns}"
    fcols = [f"v.__f{j}" for j in range(len(view.features))]

    def guarded(ok_expr: str | None, prefix: str = "") -> str:
        """The features, null where ok_expr (a SQL boolean) is not true."""
        if ok_expr is None:
            return "".join(f", {prefix}__f{j}" for j in range(len(view.features)))
        return "".join(f", CASE WHEN {ok_expr} THEN {prefix}__f{j} END AS __f{j}" for j in range(len(view.features)))

    if not (cr and exclude_created_later):
        left = "e"
        if native:  # floor(ns / 1000), exact for negative times too
            micros = f"({_TS} - ({_TS} % 1000 + 1000) % 1000) // 1000"
            left = f"(SELECT *, make_timestamp({micros}){native} AS __hm_native FROM e) e"
        return [], f"SELECT e.{_ROW}{guarded(ok, 'v.')} FROM {left} ASOF LEFT JOIN ({vsql}) v ON {' AND '.join(on)}"
    # The ASOF match is the latest (event, created) row at or before the entity time; when it was
    # created after the entity time, redo those (few) rows with a range join over the candidates.
    candidates = [*on[:-1], f"v.__ts <= e.{_TS}", f"v.__cr <= e.{_TS}"]
    if view.ttl_ns is not None:
        candidates.append(f"v.__ts::HUGEINT >= e.{_TS}::HUGEINT - {view.ttl_ns}")
    picked = f"e.{_ROW}, e.{_TS}, v.__cr, {', '.join(fcols)}" if fcols else f"e.{_ROW}, e.{_TS}, v.__cr"
    ctes = [
        f"v AS ({vsql})",
        f"a AS (SELECT {picked}, {ok or 'TRUE'} AS __ok FROM e ASOF JOIN v ON {' AND '.join(on)})",
        f"bad AS (SELECT {_ROW} FROM a WHERE __ok AND (__cr IS NULL OR __cr > {_TS}))",
        f"fix AS (SELECT {picked}, TRUE AS __ok FROM e JOIN v ON {' AND '.join(candidates)} "
        f"WHERE e.{_ROW} IN (SELECT {_ROW} FROM bad) "
        f"QUALIFY row_number() OVER (PARTITION BY e.{_ROW} ORDER BY v.__ts DESC, v.__cr DESC) = 1)",
        f"j AS (SELECT * FROM a WHERE __cr <= {_TS} OR NOT __ok UNION ALL BY NAME SELECT * FROM fix)",
    ]
    return ctes, f"SELECT {_ROW}{guarded('__ok')} FROM j"


def _in_entity_order(rows: pa.ChunkedArray, features: list[pa.ChunkedArray], n: int) -> list[pa.ChunkedArray]:
    """Place feature values given per entity row id (`rows`, each id at most once) at their row:
    length-n columns in entity order, null for the ids absent. Linear, unlike an ORDER BY."""
    ids = rows.to_numpy(zero_copy_only=False)
    where = np.full(n, -1, dtype=np.int64)
    where[ids] = np.arange(len(ids), dtype=np.int64)
    if len(ids) == n:  # every row once: a permutation
        indices = pa.array(where)
    else:
        indices = pa.array(where, mask=where < 0)
    return [column.take(indices) for column in features]


def _point_in_time_join(
    config: RepoConfig,
    con: duckdb.DuckDBPyConnection,
    entity: pa.Table,
    event_timestamp_col: str,
    views: list[_ViewJoin],
    exclude_created_later: bool,
) -> pa.Table:
    """Run the ASOF joins for all views and return the entity table with the features appended.

    One query per view, unordered (preserve_insertion_order is off): each returns entity row ids
    with their features, which are put back in entity order in Arrow."""
    entity_cols = sorted({ent for view in views for _, ent in view.keys})
    entity_keys = {name: f"__hm_e{n}" for n, name in enumerate(entity_cols)}
    nanos = _entity_ns(entity, event_timestamp_col)
    keyed = pa.table(
        {_ROW: pa.array(range(entity.num_rows), pa.int64()), _TS: nanos}
        | {alias: entity.column(name) for name, alias in entity_keys.items()}
    )
    ts_range = _ns_range(nanos)
    any_created = any(view.created for view in views)
    ord_col = f", {_TS}::HUGEINT * {_TWO_64} + {_TWO_64 - 1} AS {_ORD}" if any_created else ""
    # A table, not a registered Arrow scan: DuckDB 1.5 plans an ASOF join against a registered
    # Arrow table ~80x slower (10.8 s against 0.14 s for 20,000 entity rows x 365,000 feature rows,
    # bench/pit_join.py); copying the few entity columns costs milliseconds.
    con.register("__hm_entity_arrow", keyed)
    con.execute("CREATE OR REPLACE TEMP TABLE __hm_entity AS SELECT * FROM __hm_entity_arrow")
    con.unregister("__hm_entity_arrow")
    result = entity
    for view in views:
        ctes, select = _view_sql(config, con, view, entity_keys, ts_range, exclude_created_later)
        sql = f"WITH {', '.join([f'e AS (SELECT *{ord_col} FROM __hm_entity)', *ctes])} {select}"
        try:
            features = con.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            raise OfflineStoreError(
                f"DuckDB could not run the point-in-time join for feature view {view.name!r}: {exc}"
            ) from exc
        placed = _in_entity_order(features.column(_ROW), features.columns[1:], entity.num_rows)
        for (_, name), column in zip(view.features, placed, strict=True):
            result = result.append_column(name, column)
    return result


class HealthmateDuckDBRetrievalJob(RetrievalJob):
    """A lazy result: to_df/to_arrow open a DuckDB connection and run the query then.

    On-demand feature views are applied by Feast's RetrievalJob.to_arrow on top of the result.
    """

    def __init__(
        self,
        run: Callable[[duckdb.DuckDBPyConnection], pa.Table],
        *,
        config: RepoConfig,
        full_feature_names: bool = False,
        on_demand_feature_views: list[OnDemandFeatureView] | None = None,
        metadata: Callable[[], RetrievalMetadata] | None = None,
    ) -> None:
        self._run = run
        self._config = config
        self._full_feature_names = full_feature_names
        self._on_demand_feature_views = on_demand_feature_views or []
        self._metadata_fn = metadata
        self._metadata: RetrievalMetadata | None = None

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        return self._on_demand_feature_views

    @property
    def metadata(self) -> RetrievalMetadata | None:
        if self._metadata is None and self._metadata_fn is not None:
            self._metadata = self._metadata_fn()
        return self._metadata

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        con = _connect(self._config)
        try:
            return self._run(con)
        finally:
            con.close()

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout).to_pandas()

    def persist(
        self,
        storage: SavedDatasetStorage,
        allow_overwrite: bool = False,
        timeout: int | None = None,
    ) -> None:
        """Run the job and write its result (with on-demand features) to a Parquet saved dataset.

        Side effect: writes a file (or a directory when the path does not end in .parquet).
        """
        if not isinstance(storage, SavedDatasetFileStorage):
            raise OfflineStoreError(
                f"saved dataset storage {type(storage).__name__} is not supported; "
                "use SavedDatasetFileStorage(path=...parquet)"
            )
        path = str(FileSource.get_uri_for_file_path(self._config.repo_path, storage.file_options.uri))
        if not allow_overwrite and os.path.exists(path):
            raise SavedDatasetLocationAlreadyExists(location=storage.file_options.uri)
        table = self.to_arrow(timeout=timeout)
        if path.endswith(".parquet"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
        else:
            pq.write_to_dataset(table, root_path=path)

    def supports_remote_storage_export(self) -> bool:
        return False


def _query_job(config: RepoConfig, sql_for: Callable[[duckdb.DuckDBPyConnection], str]) -> RetrievalJob:
    """Wrap SQL (built once a connection exists) into a job that returns its result as Arrow."""

    def run(con: duckdb.DuckDBPyConnection) -> pa.Table:
        sql = sql_for(con)
        try:
            return con.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            raise OfflineStoreError(f"DuckDB could not run {sql!r}: {exc}") from exc

    return HealthmateDuckDBRetrievalJob(run, config=config)


class HealthmateDuckDBOfflineStore(FeastDuckDBMonitoring, OfflineStore):
    """Feast offline store over Parquet FileSources whose point-in-time joins are DuckDB ASOF joins."""

    supports_filter_by_created_timestamp = True

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str | None,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
        **kwargs: Any,
    ) -> RetrievalJob:
        """Return a lazy job joining each entity row to its point-in-time feature values.

        entity_df is a DataFrame or a DuckDB SQL query (relative file paths in it resolve against
        the repo root). Rows created after the entity timestamp are ignored when
        filter_by_created_timestamp is passed or set in the store config.
        """
        exclude = filter_by_created_timestamp or config.offline_store.filter_by_created_timestamp
        views = [_plan_view(fv, feature_refs, full_feature_names) for fv in feature_views]
        if entity_df is None:
            start, end = compute_non_entity_date_range(
                feature_views, start_date=kwargs.get("start_date"), end_date=kwargs.get("end_date")
            )
            entity = _entityless_input(config, views, start, end)
        else:
            entity = _entity_input(config, entity_df)
        for view in views:
            missing = [ent for _, ent in view.keys if ent not in entity.columns]
            if missing:
                raise OfflineStoreError(
                    f"entity frame is missing column {', '.join(map(repr, missing))} needed by "
                    f"feature view {view.name!r} (columns: {', '.join(entity.columns)}); add it, "
                    "or map the view's join key onto an existing column with fv.with_join_key_map()"
                )

        def run(con: duckdb.DuckDBPyConnection) -> pa.Table:
            table = entity.load(con)
            return _point_in_time_join(config, con, table, entity.timestamp, views, bool(exclude))

        def metadata() -> RetrievalMetadata:
            con = _connect(config)
            try:
                bounds = _ns_range(_entity_ns(entity.load(con), entity.timestamp))
            finally:
                con.close()

            def as_datetime(ns: int) -> datetime:
                return pd.Timestamp(ns, tz="UTC").to_pydatetime()

            return RetrievalMetadata(
                features=feature_refs,
                keys=[c for c in entity.columns if c != entity.timestamp],
                min_event_timestamp=as_datetime(bounds[0]) if bounds else None,
                max_event_timestamp=as_datetime(bounds[1]) if bounds else None,
            )

        return HealthmateDuckDBRetrievalJob(
            run,
            config=config,
            full_feature_names=full_feature_names,
            on_demand_feature_views=OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry),
            metadata=metadata,
        )

    @staticmethod
    def pull_latest_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None,
        start_date: datetime,
        end_date: datetime,
    ) -> RetrievalJob:
        """Return a job with the latest row per join key with start_date <= event time <= end_date.

        Ties on the event timestamp go to the latest created timestamp (materialization).
        """
        return _pull(
            config,
            data_source,
            join_key_columns,
            feature_name_columns,
            timestamp_field,
            created_timestamp_column,
            start_date,
            end_date,
            latest=True,
        )

    @staticmethod
    def pull_all_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
    ) -> RetrievalJob:
        """Return a job with every row whose event time lies in [start_date, end_date] (both optional)."""
        return _pull(
            config,
            data_source,
            join_key_columns,
            feature_name_columns,
            timestamp_field,
            created_timestamp_column,
            start_date,
            end_date,
            latest=False,
        )

    @staticmethod
    def offline_write_batch(
        config: RepoConfig,
        feature_view: FeatureView,
        table: pa.Table,
        progress: Callable[[int], Any] | None,
    ) -> None:
        """Append an Arrow table to a feature view's Parquet source (Feast's push and write_to_offline_store).

        The columns must be the source's, in its order (Feast's contract); rows are appended as
        they come, duplicates included (a point-in-time join picks one of equal rows). A source
        that does not exist yet is created with the table's columns when they are the view's own
        (join keys, timestamp fields, features), so a push source needs no prior build; an empty
        table creates a missing source and changes nothing else.
        Side effect: a directory source gains a new file; a single file is rewritten through a
        temporary file in the same directory and renamed into place (DuckDB streams the copy).
        """
        source = feature_view.batch_source
        if source is None:
            raise OfflineStoreError(f"feature view {feature_view.name!r} has no batch_source to write to")
        path = _source_path(config, source)
        table = _source_names(table, source)
        if "://" not in path and not os.path.exists(path):
            _create_source(config, path, feature_view, table)
        elif table.num_rows:
            _append_source(config, path, source, table)
        if progress:
            progress(table.num_rows)

    @staticmethod
    def write_logged_features(
        config: RepoConfig,
        data: pa.Table | Path,
        source: LoggingSource,
        logging_config: LoggingConfig,
        registry: BaseRegistry,
    ) -> None:
        """Write feature-server logs (Arrow, or a directory of Parquet files) to a FileLoggingDestination.

        Side effect: one new Parquet file per call under the destination directory, written to a
        temporary name and renamed, so `feast validate` and `feast monitor run --source-type log`
        never read half a file. Any other destination raises OfflineStoreUnsupportedError.
        """
        write_log_files(config, data, logging_config, "HealthmateDuckDBOfflineStore")


def write_log_files(config: RepoConfig, data: pa.Table | Path, logging_config: LoggingConfig, store: str) -> None:
    """Feast's `write_logged_features` to a FileLoggingDestination, for our offline store `store`:
    one new Parquet file per call under the destination directory (relative to the repository),
    encrypted under the active data key with a readable footer, written to a temporary name and
    renamed. Any other destination raises OfflineStoreUnsupportedError."""
    destination = logging_config.destination
    if not isinstance(destination, FileLoggingDestination):
        raise OfflineStoreUnsupportedError(
            "write_logged_features",
            store,
            f"logging destination {type(destination).__name__} is not a file; "
            "use LoggingConfig(destination=FileLoggingDestination(path=...))",
        )
    if destination.partition_by:
        raise OfflineStoreUnsupportedError(
            "write_logged_features",
            store,
            f"FileLoggingDestination partition_by={destination.partition_by!r} is not supported; "
            "leave partition_by unset (the log files carry the partition columns)",
        )
    table = pq.read_table(data) if isinstance(data, Path) else data
    if table.num_rows == 0:
        return
    root = Path(FileSource.get_uri_for_file_path(config.repo_path, destination.path))
    root.mkdir(parents=True, exist_ok=True)
    _write_new_file(config, root / f"{uuid.uuid4().hex}.parquet", table)


def _source_names(table: pa.Table, source: DataSource) -> pa.Table:
    """`table` as the source holds it: without the pandas index Feast's write_to_offline_store keeps
    (`pa.Table.from_pandas(df)` of a filtered frame adds `__index_level_0__`), and with the source's
    own column names (Feast's provider renames to the field-mapped ones before the write)."""
    table = drop_pandas_index(table)
    reverse = {new: old for old, new in (source.field_mapping or {}).items()}
    if not reverse:
        return table
    return table.rename_columns([reverse.get(c, c) for c in table.column_names])


def drop_pandas_index(table: pa.Table) -> pa.Table:
    """`table` without the index columns pandas adds when converted to Arrow (`__index_level_N__`)."""
    index = [c for c in table.column_names if c.startswith("__index_level_") and c.endswith("__")]
    return table.drop_columns(index) if index else table


def _view_columns(feature_view: FeatureView) -> list[str]:
    """The columns a feature view's batch source has, by Feast's definitions: join keys, timestamps, features."""
    source = feature_view.batch_source
    reverse = {new: old for old, new in (source.field_mapping or {}).items()} if source else {}
    names = [c.name for c in feature_view.entity_columns]
    names += [source.timestamp_field] if source else []
    names += [source.created_timestamp_column] if source and source.created_timestamp_column else []
    names += [f.name for f in feature_view.features]
    return [reverse.get(n, n) for n in dict.fromkeys(names)]


def _create_source(config: RepoConfig, path: str, feature_view: FeatureView, table: pa.Table) -> None:
    """Create a missing Parquet source from the first batch written to it (a file, or a directory's first part)."""
    expected = _view_columns(feature_view)
    if sorted(table.column_names) != sorted(expected):
        raise OfflineStoreError(
            f"cannot create the source of feature view {feature_view.name!r} at {path}: columns "
            f"{table.column_names} are not the view's {expected}; write the view's columns"
        )
    target = Path(path)
    if not path.endswith(".parquet"):
        target = target / f"part-{uuid.uuid4().hex}.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_new_file(config, target, table)


def _append_source(config: RepoConfig, path: str, source: DataSource, table: pa.Table) -> None:
    """Append `table` to an existing Parquet source: a new part file, or the file rewritten atomically."""
    schema, expected = get_pyarrow_schema_from_batch_source(config, source)
    if table.column_names != expected:
        raise OfflineStoreError(
            f"cannot append to {path}: columns {table.column_names} differ from the source's "
            f"{expected}; reorder or rename the input to match"
        )
    if os.path.isdir(path):
        _write_new_file(config, Path(path) / f"part-{uuid.uuid4().hex}.parquet", table)
        return
    # Rewritten whole under the active key with a readable footer (Feast reads the source's schema
    # with plain pyarrow before every write); a plaintext source becomes encrypted here.
    keyring = repo_keyring(str(config.repo_path))
    existing = open_parquet(keyring, path)
    try:
        merged = pa.concat_tables([existing.read(), table.cast(existing.schema_arrow)])
    finally:
        existing.close()
    write_parquet(keyring, merged, path, plaintext_footer=True)


def _write_new_file(config: RepoConfig, target: Path, table: pa.Table) -> None:
    """Write a new Parquet source file, encrypted under the repository's active data key with a
    readable footer (see _append_source), atomically."""
    write_parquet(repo_keyring(str(config.repo_path)), table, target, plaintext_footer=True)


def _pull(
    config: RepoConfig,
    data_source: DataSource,
    join_key_columns: list[str],
    feature_name_columns: list[str],
    timestamp_field: str,
    created_timestamp_column: str | None,
    start_date: datetime | None,
    end_date: datetime | None,
    *,
    latest: bool,
) -> RetrievalJob:
    """Build the materialization query (columns are source names; field mapping is the caller's)."""

    def sql_for(con: duckdb.DuckDBPyConnection) -> str:
        scan = _scan(config, con, data_source)
        columns = _columns(con, scan, f"data source {data_source.name!r}")
        stamps = [timestamp_field] + ([created_timestamp_column] if created_timestamp_column else [])
        _require(columns, join_key_columns + feature_name_columns + stamps, scan)
        # No feature columns means "every column": Feast's compute engine asks for raw inputs so.
        wanted = join_key_columns + feature_name_columns + stamps if feature_name_columns else columns
        select = [_quote(c) for c in dict.fromkeys(wanted)]
        if not join_key_columns:  # entityless view: the online store keys it by Feast's dummy entity
            select.append(f"{_literal(DUMMY_ENTITY_VAL)} AS {_quote(DUMMY_ENTITY_ID)}")
        ts = _ns(timestamp_field, columns[timestamp_field])
        where = [f"{_quote(timestamp_field)} IS NOT NULL"]
        if start_date is not None:
            where.append(f"{ts} >= {_to_ns(start_date)}")
        if end_date is not None:
            where.append(f"{ts} <= {_to_ns(end_date)}")
        sql = f"SELECT {', '.join(select)} FROM {scan} WHERE {' AND '.join(where)}"
        if latest:
            order = [f"{ts} DESC"]
            if created_timestamp_column:
                created = _ns(created_timestamp_column, columns[created_timestamp_column])
                order.append(f"{created} DESC NULLS LAST")
            keys = ", ".join(map(_quote, join_key_columns))
            partition = f"PARTITION BY {keys} " if keys else ""
            sql += f" QUALIFY row_number() OVER ({partition}ORDER BY {', '.join(order)}) = 1"
        return sql

    return _query_job(config, sql_for)
