"""The production offline store: Feast's Postgres store with a faster point-in-time join.

Sources, saved datasets and monitoring (`feast monitor run`) are Feast's own PostgreSQLOfflineStore.
Materialization pulls are Feast's too, except the latest row per user of a long window (the whole
history), read by index probes when the planner expects many rows per user in the window
(`pull_latest_from_table_or_query`, `latest_rows_query`). Added here: `offline_write_batch` (Feast's
store has none: pushes and `write_to_offline_store` COPY rows in, creating a missing table),
retrieval without an entity frame (the distinct (join keys, event time) rows of the views in
[start_date, end_date], then the join below, as our DuckDB store answers it), and a clear
OfflineStoreUnsupportedError for `write_logged_features`. For a training frame given as a DataFrame,
the join is one query over the (user_id, event_timestamp) index of each feature table instead of
Feast's generic query, which joins every entity row to every feature row of its user in the TTL
window and then ranks them:

    SELECT e._row, f0.<features>, f1.<features>, ...
    FROM <entity rows sorted by key and time> e
    LEFT JOIN LATERAL (SELECT <features> FROM <table> s
                       WHERE s.user_id = e.user_id AND s.event_timestamp <= e.event_timestamp
                         AND s.event_timestamp >= e.event_timestamp - <ttl>
                       ORDER BY s.event_timestamp DESC LIMIT 1) f0 ON true
    ...
    ORDER BY e._row

The entity rows go up with COPY (Feast inserts them row by row) and the result comes back with
COPY ... TO STDOUT, parsed by Arrow (Feast builds Python lists cell by cell). Semantics are
Feast's, and the result equals its store's (tests/test_production.py; bench/materialize.py
checks it at 100k rows): per view, the latest row at or before the entity time within the
view's TTL, ties broken by created timestamp. Rows come back in entity-frame order, entity
columns as given. Anything unusual (an SQL entity query, a column type Arrow cannot parse from
CSV) goes to Feast's own implementation.

Select it in feature_store.production.yaml with
`type: healthmate_features.stores.postgres_lateral.LateralPostgreSQLOfflineStore`.
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import (
    PostgreSQLOfflineStore,
    PostgreSQLOfflineStoreConfig,
    PostgreSQLRetrievalJob,
)
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.infra.offline_stores.offline_store import RetrievalMetadata
from feast.on_demand_feature_view import OnDemandFeatureView

from healthmate_features import _feast
from healthmate_features.errors import OfflineStoreError
from healthmate_features.stores.duckdb_asof import drop_pandas_index

ROW = "_hm_entity_row"
ENTITY_TABLE = "hm_entity_rows"  # a TEMP table: lives in the connection that runs the join
_CSV_TYPES = ("int16", "int32", "int64", "float", "double", "string", "bool")


class LateralPostgreSQLOfflineStoreConfig(PostgreSQLOfflineStoreConfig):
    """Feast's Postgres offline store settings (host, port, database, db_schema, user, sslmode...)."""

    # Feast selects the store class by this field, so a subclass replaces Feast's Literal["postgres"].
    type: Literal[
        "healthmate_features.stores.postgres_lateral.LateralPostgreSQLOfflineStore",
        "healthmate_features.pg_offline_store.LateralPostgreSQLOfflineStore",  # before 0.2; removed in 0.3
    ] = "healthmate_features.stores.postgres_lateral.LateralPostgreSQLOfflineStore"  # type: ignore[assignment]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _output_name(context, feature: str, full_feature_names: bool) -> str:
    name = context.field_mapping.get(feature, feature)
    return f"{context.name}__{name}" if full_feature_names else name


def build_query(contexts, *, keys: list[str], timestamp: str, full_feature_names: bool) -> str:
    """The LATERAL point-in-time join of ENTITY_TABLE with every feature view of `contexts`."""
    selects, joins = [f"e.{_q(ROW)}"], []
    for i, ctx in enumerate(contexts):
        alias = f"f{i}"
        selects += [f"{alias}.{_q(f)} AS {_q(_output_name(ctx, f, full_feature_names))}" for f in ctx.features]
        pairs = _feast.entity_selections(ctx)  # (source column, join key)
        where = [f"s.{_q(src)} = e.{_q(key)}" for src, key in pairs]
        where.append(f"s.{_q(ctx.timestamp_field)} <= e.{_q(timestamp)}")
        if ctx.ttl:
            where.append(f"s.{_q(ctx.timestamp_field)} >= e.{_q(timestamp)} - {int(ctx.ttl)} * interval '1 second'")
        order = [f"s.{_q(ctx.timestamp_field)} DESC"]
        if ctx.created_timestamp_column:
            order.append(f"s.{_q(ctx.created_timestamp_column)} DESC")
        columns = ", ".join(f"s.{_q(f)}" for f in ctx.features) or "1"
        joins.append(
            f"LEFT JOIN LATERAL (SELECT {columns} FROM {ctx.table_subquery} AS s WHERE {' AND '.join(where)} "
            f"ORDER BY {', '.join(order)} LIMIT 1) AS {alias} ON true"
        )
    probe_order = ", ".join(_q(c) for c in [*keys, timestamp])  # neighbouring probes hit neighbouring pages
    return (
        f"SELECT {', '.join(selects)}\nFROM (SELECT * FROM {ENTITY_TABLE} ORDER BY {probe_order}) AS e\n"
        + "\n".join(joins)
        + f"\nORDER BY e.{_q(ROW)}"
    )


class LateralRetrievalJob(PostgreSQLRetrievalJob):
    """Runs the LATERAL join in one connection: COPY entity rows in, COPY the result out."""

    def __init__(
        self,
        *,
        config,
        entity_df: pd.DataFrame,
        keys: list[str],
        timestamp: str,
        query: str,
        full_feature_names: bool,
        on_demand_feature_views,
        metadata,
    ):
        super().__init__(
            query=query,
            config=config,
            full_feature_names=full_feature_names,
            on_demand_feature_views=on_demand_feature_views,
            metadata=metadata,
        )
        self._entity_df, self._keys, self._timestamp, self._sql = entity_df, keys, timestamp, query

    def _upload(self, cur) -> None:
        df = self._entity_df
        upload = pa.table(
            {
                ROW: pa.array(range(len(df)), pa.int64()),
                **{k: pa.Array.from_pandas(df[k]) for k in self._keys},
                self._timestamp: pa.Array.from_pandas(pd.to_datetime(df[self._timestamp], utc=True)),
            }
        )
        columns = ", ".join(f"{_q(f.name)} {_feast.arrow_to_pg_type(str(f.type))}" for f in upload.schema)
        cur.execute(f"CREATE TEMP TABLE {ENTITY_TABLE} ({columns}) ON COMMIT DROP")
        buf = io.BytesIO()
        pacsv.write_csv(upload, buf, pacsv.WriteOptions(include_header=False, quoting_style="all_valid"))
        with cur.copy(f"COPY {ENTITY_TABLE} FROM STDIN (FORMAT csv)") as copy:
            copy.write(buf.getbuffer())
        cur.execute(f"ANALYZE {ENTITY_TABLE}")

    def _to_arrow_internal(self, timeout=None) -> pa.Table:
        with _feast.pg_connect(self.config.offline_store) as conn, conn.transaction(), conn.cursor() as cur:
            self._upload(cur)
            cur.execute(f"SELECT * FROM ({self._sql}) AS q LIMIT 0")
            assert cur.description is not None  # a SELECT describes its columns
            types = {c.name: _feast.pg_type_code_to_arrow(c.type_code) for c in cur.description}
            out = io.BytesIO()
            with cur.copy(f"COPY ({self._sql}) TO STDOUT (FORMAT csv, HEADER)") as copy:
                for chunk in copy:
                    out.write(chunk)
        out.seek(0)
        features = pacsv.read_csv(
            out,
            convert_options=pacsv.ConvertOptions(
                column_types=types,
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,  # "" is text, a bare empty field NULL
                true_values=["t"],
                false_values=["f"],
            ),
        )
        entities = pa.Table.from_pandas(self._entity_df, preserve_index=False)
        for name in features.column_names[1:]:
            entities = entities.append_column(name, features.column(name))
        return entities

    def _to_df_internal(self, timeout=None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout).to_pandas()


class RowsJob(PostgreSQLRetrievalJob):
    """Feast's Postgres retrieval job of a query, its rows turned into Arrow columns at once.

    Feast's job (`_to_arrow_internal`) fetches the rows as text and copies them into per-column
    lists one cell at a time in Python, most of a materialization pull's time in our process;
    this one fetches them in Postgres's binary format (no text formatting of every double on the
    server, no parsing here: a third less time per pull) and transposes them with `zip`. The
    same Python values (binary and text both carry a double exactly), so the same Arrow arrays
    and the same schema."""

    def __init__(self, *, query: str, **kwargs):
        super().__init__(query=query, **kwargs)
        self._sql = query

    def _to_arrow_internal(self, timeout=None) -> pa.Table:
        with _feast.pg_connect(self.config.offline_store) as conn, conn.cursor(binary=True) as cur:
            conn.read_only = True
            cur.execute(self._sql)
            if not cur.description:
                raise OfflineStoreError(f"the materialization query returned no columns: {self._sql[:200]}")
            fields = [(c.name, _feast.pg_type_code_to_arrow(c.type_code)) for c in cur.description]
            data = cur.fetchall()
        columns = [list(column) for column in zip(*data, strict=True)] if data else [[] for _ in fields]
        return pa.Table.from_arrays([pa.array(column) for column in columns], schema=pa.schema(fields))


class LateralPostgreSQLOfflineStore(PostgreSQLOfflineStore):
    """Feast's Postgres offline store, with the point-in-time join done by `build_query`."""

    @staticmethod
    def get_historical_features(
        config,
        feature_views,
        feature_refs,
        entity_df,
        registry,
        project,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
        **kwargs,
    ):
        fallback = lambda: PostgreSQLOfflineStore.get_historical_features(  # noqa: E731  (entity_df as it is then)
            config,
            feature_views,
            feature_refs,
            entity_df,
            registry,
            project,
            full_feature_names=full_feature_names,
            filter_by_created_timestamp=filter_by_created_timestamp,
            **kwargs,
        )
        if entity_df is None:  # Feast's non-entity retrieval: the rows the views hold in [start, end]
            start, end = _feast.compute_non_entity_date_range(
                feature_views, start_date=kwargs.pop("start_date", None), end_date=kwargs.pop("end_date", None)
            )
            entity_df = _entityless_frame(config, feature_views, start, end)
        if not isinstance(entity_df, pd.DataFrame) or filter_by_created_timestamp or kwargs.get("start_date"):
            return fallback()
        schema = dict(zip(entity_df.columns, entity_df.dtypes, strict=True))
        timestamp = _feast.infer_event_timestamp_from_entity_df(schema)
        keys = sorted(_feast.get_expected_join_keys(project, feature_views, registry))
        _feast.assert_expected_columns_in_entity_df(schema, set(keys), timestamp)
        times = pd.to_datetime(entity_df[timestamp], utc=True)
        span = (times.min().to_pydatetime(), times.max().to_pydatetime())
        contexts = _feast.get_feature_view_query_context(feature_refs, feature_views, registry, project, span)
        if not _csv_safe(feature_views, contexts):
            return fallback()
        query = build_query(contexts, keys=keys, timestamp=timestamp, full_feature_names=full_feature_names)
        return LateralRetrievalJob(
            config=config,
            entity_df=entity_df,
            keys=keys,
            timestamp=timestamp,
            query=query,
            full_feature_names=full_feature_names,
            on_demand_feature_views=OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry),
            metadata=RetrievalMetadata(
                features=feature_refs, keys=keys, min_event_timestamp=span[0], max_event_timestamp=span[1]
            ),
        )

    @staticmethod
    def pull_latest_from_table_or_query(
        config,
        data_source,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None,
        start_date: datetime,
        end_date: datetime,
    ):
        """The latest row per entity in [start_date, end_date] (materialization), Feast's rows.

        Feast ranks every row of the window (`ROW_NUMBER() OVER (PARTITION BY key ...)`): over a
        year of daily rows, a scan and sort of every row to keep one per user. When the window holds
        many rows per entity (`probes_pay`: the planner's estimates) and the source is a table with
        an index led by its single join key, the keys are walked through that index instead (a
        recursive skip scan, one probe per key) and each key's latest row in the window is one
        index probe (`latest_rows_query`). Anything else, or a short window (few rows per key:
        Feast's query is the cheaper one there), is Feast's query. Same rows, ties broken by the
        created timestamp; rows with a NULL join key are left out (there is no entity to write).
        Either query's rows come back through `RowsJob`."""
        table = data_source.get_table_query_string() if isinstance(data_source, PostgreSQLSource) else "("
        args = (join_key_columns, feature_name_columns, timestamp_field, created_timestamp_column, start_date, end_date)
        if (
            len(join_key_columns) == 1
            and feature_name_columns
            and not table.lstrip().startswith("(")
            and probes_pay(config, table, join_key_columns[0], timestamp_field, start_date, end_date)
        ):
            query = latest_rows_query(table, join_key_columns[0], *args[1:])
        else:
            query = PostgreSQLOfflineStore.pull_latest_from_table_or_query(config, data_source, *args).to_sql()
        return RowsJob(query=query, config=config, full_feature_names=False, on_demand_feature_views=None)

    @staticmethod
    def offline_write_batch(config, feature_view, table: pa.Table, progress) -> None:
        """Append an Arrow table to a feature view's Postgres table (Feast's push and write_to_offline_store).

        Feast's Postgres store has no offline writes. Columns must be the table's, in its order (as
        Feast's other stores demand); rows go in with one COPY in one transaction, duplicates kept
        (a point-in-time join picks one of equal rows). A table that does not exist yet is created
        from the view's columns, with an index on (join keys, event time); an empty table creates a
        missing table and changes nothing else."""
        _write_batch(config, feature_view, table)
        if progress:
            progress(table.num_rows)

    @staticmethod
    def write_logged_features(config, data, source, logging_config, registry) -> None:
        """Served-feature logs to a FileLoggingDestination, as on the embedded profile (encrypted
        Parquet files under the repository; duckdb_asof.write_log_files): Feast 0.67 has no Postgres
        logging destination. Any other destination raises OfflineStoreUnsupportedError."""
        from healthmate_features.stores.duckdb_asof import write_log_files

        write_log_files(config, data, logging_config, "LateralPostgreSQLOfflineStore")


PROBES_FROM_ROWS_PER_KEY = 4  # index probes per key beat ranking the window from this many rows per key on


def probes_pay(config, table: str, key: str, timestamp: str, start: datetime, end: datetime) -> bool:
    """Whether `latest_rows_query` is the cheaper way to the latest row per key of a window.

    True when `table` has an index whose first column is `key` and the planner expects at least
    PROBES_FROM_ROWS_PER_KEY rows per distinct key in the window (its statistics: `pg_stats`
    n_distinct of the key, the row estimate of the window's filter); False without statistics."""
    with _feast.pg_connect(config.offline_store) as conn:
        indexed = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = i.indkey[0] WHERE i.indrelid = to_regclass(%s) AND a.attname = %s)",
            (table, key),
        ).fetchone()
        if not indexed or not indexed[0]:
            return False
        stats = conn.execute(
            "SELECT s.n_distinct, c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = %s "
            "WHERE c.oid = to_regclass(%s)",
            (key, table),
        ).fetchone()
        if not stats or stats[0] is None or not stats[1] or stats[1] <= 0:
            return False
        keys = stats[0] if stats[0] > 0 else -stats[0] * stats[1]
        plan = conn.execute(
            f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {table} a WHERE a.{_q(timestamp)} BETWEEN %s AND %s", (start, end)
        ).fetchone()
    rows = plan[0][0]["Plan"]["Plan Rows"] if plan else 0
    return keys > 0 and rows >= PROBES_FROM_ROWS_PER_KEY * keys


def latest_rows_query(
    table: str,
    key: str,
    features: list[str],
    timestamp: str,
    created: str | None,
    start: datetime,
    end: datetime,
) -> str:
    """The latest row per `key` of `table` in [start, end] by index probes: the distinct keys walked
    through the key's index (a recursive skip scan), then per key one probe for its latest row."""
    stamps = [timestamp, *([created] if created else [])]
    columns = ", ".join(f"a.{_q(c)}" for c in [key, *features, *stamps])
    order = ", ".join(f"a.{_q(c)} DESC" for c in stamps)
    k = _q(key)
    return f"""
        WITH RECURSIVE k(v) AS (
            (SELECT a.{k} FROM {table} a WHERE a.{k} IS NOT NULL ORDER BY a.{k} LIMIT 1)
            UNION ALL
            SELECT (SELECT a.{k} FROM {table} a WHERE a.{k} > k.v ORDER BY a.{k} LIMIT 1) FROM k WHERE k.v IS NOT NULL
        )
        SELECT b.* FROM k CROSS JOIN LATERAL (
            SELECT {columns} FROM {table} a
            WHERE a.{k} = k.v AND a.{_q(timestamp)} BETWEEN '{start}'::timestamptz AND '{end}'::timestamptz
            ORDER BY {order} LIMIT 1
        ) b
        WHERE k.v IS NOT NULL
    """


def _write_batch(config, feature_view, table: pa.Table) -> None:
    """Append `table` to the view's Postgres table in one transaction (COPY), creating a missing table."""
    source = feature_view.batch_source
    if not isinstance(source, PostgreSQLSource):
        raise OfflineStoreError(
            f"feature view {feature_view.name!r} has a {type(source).__name__} batch source; "
            "LateralPostgreSQLOfflineStore writes to PostgreSQLSource tables only"
        )
    name = source.get_table_query_string()
    table = drop_pandas_index(table)  # Feast's write_to_offline_store keeps a filtered frame's index
    reverse = {new: old for old, new in (source.field_mapping or {}).items()}
    if reverse:  # Feast's write_to_offline_store hands over field-mapped names; the table has the source's
        table = table.rename_columns([reverse.get(c, c) for c in table.column_names])
    with _feast.pg_connect(config.offline_store) as conn, conn.transaction(), conn.cursor() as cur:
        _ensure_table(cur, feature_view, table)
        if table.num_rows == 0:
            return
        cur.execute(f"SELECT * FROM {name} LIMIT 0")
        assert cur.description is not None  # a SELECT describes its columns
        expected = [c.name for c in cur.description]
        if table.column_names != expected:
            raise OfflineStoreError(
                f"cannot append to {name}: columns {table.column_names} differ from the table's "
                f"{expected}; reorder or rename the input to match"
            )
        buf = io.BytesIO()
        pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False, quoting_style="all_valid"))
        columns = ", ".join(_q(c) for c in table.column_names)
        with cur.copy(f"COPY {name} ({columns}) FROM STDIN (FORMAT csv)") as copy:
            copy.write(buf.getbuffer())


def _csv_safe(feature_views, contexts) -> bool:
    """True when every requested feature column has a type Arrow parses from Postgres CSV as Feast would."""
    by_name = {fv.projection.name_to_use(): fv for fv in feature_views}
    for ctx in contexts:
        fields = {f.name: f for f in by_name[ctx.name].features}
        for feature in ctx.features:
            field = fields.get(ctx.field_mapping.get(feature, feature))
            if field is None or str(_feast.from_feast_to_pyarrow_type(field.dtype)) not in _CSV_TYPES:
                return False
    return True


def _entityless_frame(config, feature_views, start: datetime, end: datetime) -> pd.DataFrame:
    """The entity rows of a retrieval without an entity frame: every distinct (join keys, event time)
    the views' tables hold with start <= event time <= end, ordered by time and keys (as our DuckDB store)."""
    plans = []
    for view in feature_views:
        source = view.batch_source
        reverse = {new: old for old, new in (source.field_mapping or {}).items()}
        join_key_map = view.projection.join_key_map or {}
        keys = {join_key_map.get(c.name, c.name): reverse.get(c.name, c.name) for c in view.entity_columns}
        plans.append((view.name, source, keys, reverse.get(source.timestamp_field, source.timestamp_field)))
    key_sets = {tuple(sorted(keys)) for _, _, keys, _ in plans}
    if len(key_sets) != 1:
        raise OfflineStoreError(
            f"retrieval without an entity frame needs feature views with the same join keys; "
            f"{', '.join(name for name, *_ in plans)} have {len(key_sets)} different sets; "
            "request them in separate calls, or pass an entity frame"
        )
    (entity_cols,) = key_sets
    timestamp = _feast.DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL
    selects = [
        f"SELECT {', '.join([*(f'{_q(keys[k])} AS {_q(k)}' for k in entity_cols), f'{_q(ts)} AS {_q(timestamp)}'])} "
        f"FROM {source.get_table_query_string()} AS s WHERE {_q(ts)} BETWEEN %(start)s AND %(end)s"
        for _, source, keys, ts in plans
    ]
    order = ", ".join(_q(c) for c in [timestamp, *entity_cols])
    sql = f"SELECT DISTINCT * FROM ({' UNION ALL '.join(selects)}) AS u ORDER BY {order}"
    with _feast.pg_connect(config.offline_store) as conn, conn.cursor() as cur:
        cur.execute(sql, {"start": start, "end": end})
        rows = cur.fetchall()
    frame = pd.DataFrame(rows, columns=[*entity_cols, timestamp])
    frame[timestamp] = pd.to_datetime(frame[timestamp], utc=True)
    for key in entity_cols:
        if frame[key].dtype == object and len(frame):
            frame[key] = frame[key].infer_objects()
    return frame


def _ensure_table(cur, feature_view, table: pa.Table) -> None:
    """Create a push destination that does not exist yet, from the view's columns, with the index
    the point-in-time join probes ((join keys, event time))."""
    source = feature_view.batch_source
    name = source.get_table_query_string()
    cur.execute("SELECT to_regclass(%s)", (name,))
    row = cur.fetchone()
    if row is not None and row[0] is not None:
        return
    reverse = {new: old for old, new in (source.field_mapping or {}).items()}
    expected = [reverse.get(n, n) for n in _view_column_names(feature_view)]
    if sorted(table.column_names) != sorted(expected):
        raise OfflineStoreError(
            f"cannot create table {name} for feature view {feature_view.name!r}: columns "
            f"{table.column_names} are not the view's {expected}; write the view's columns"
        )
    columns = ", ".join(f"{_q(f.name)} {_feast.arrow_to_pg_type(str(f.type))}" for f in table.schema)
    keys = [reverse.get(c.name, c.name) for c in feature_view.entity_columns]
    index_cols = ", ".join(_q(c) for c in [*keys, reverse.get(source.timestamp_field, source.timestamp_field)])
    cur.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns})")
    cur.execute(f"CREATE INDEX IF NOT EXISTS {_q(name.split('.')[-1] + '_pit')} ON {name} ({index_cols})")


def _view_column_names(feature_view) -> list[str]:
    """A view's batch-source columns by its definitions: join keys, timestamps, features (Feast's names)."""
    source = feature_view.batch_source
    names = [c.name for c in feature_view.entity_columns] + [source.timestamp_field]
    names += [source.created_timestamp_column] if source.created_timestamp_column else []
    return list(dict.fromkeys(names + [f.name for f in feature_view.features]))
