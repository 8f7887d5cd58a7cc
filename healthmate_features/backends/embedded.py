"""The embedded profile: files under `data/`, DuckDB, SQLite. No server needed.

- raw tables: the ingested Parquet files in `data/ingested/` (ingest writes them; nothing to load);
- feature tables: `data/features/<table>.parquet`, built by DuckDB, each replaced atomically;
- Feast: `feature_store.yaml` (our DuckDB ASOF offline store over those files, SQLite online store);
- SQL store: SQLite at `data/healthmate.db`;
- Celery broker: kombu's SQLAlchemy transport over SQLite at `data/broker.db` (a file of its own:
  SQLite drops a process's locks on a file when the process closes any handle to it, so nothing
  but the SQL store ever opens the store's file).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from healthmate_features.backends.base import (
    INGEST_MANIFEST,
    USER_STATE_TABLES,
    Backend,
    Broker,
    BuildCounts,
    FeatureBuild,
)
from healthmate_features.crypto import duckdb_scan, write_parquet
from healthmate_features.errors import FeatureRepoError, NotIngestedError
from healthmate_features.util.files import atomic_write_text
from healthmate_features.util.sql import quote_literal
from healthmate_features.util.text import repo_relative

if TYPE_CHECKING:
    import duckdb
    from feast import FeatureStore
    from feast.data_source import DataSource

    from healthmate_features.backends.sqlstore import SqlStore


STATE_DIR = "_build"  # under data/features: the last build's fingerprints of the raw tables
STATE_FILE = "state.json"
KEPT_PREFIX = "ingest_"  # _build/ingest_<name>.parquet: the fingerprints of the ingest (keep_raw_fingerprints)
KEPT_FILE = "ingest.json"  # which ingest (and build version) they were made from


def source_path(table: str) -> str:
    """Path of a feature table's Parquet file, relative to the repository root."""
    return f"data/features/{table}.parquet"


def duckdb_connect(*, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection in UTC, for table work over Parquet files."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if memory_limit:
        con.execute(f"SET memory_limit = {quote_literal(memory_limit)}")
    return con


class EmbeddedBackend(Backend):
    """Files, DuckDB and SQLite under the repository's `data/` directory."""

    name = "embedded"
    feature_store_file = "feature_store.yaml"
    sql_dialect = "duckdb"

    # --- Feast -------------------------------------------------------------------------------

    def batch_source(self, table: str, *, description: str) -> DataSource:
        from feast import FileSource

        return FileSource(
            name=f"{table}_source", timestamp_field="event_timestamp", description=description, path=source_path(table)
        )

    # --- the SQL store -----------------------------------------------------------------------

    def connect_sql_store(self) -> SqlStore:
        from healthmate_features.backends.sqlstore import SqlStore

        self.settings.sql_path.parent.mkdir(parents=True, exist_ok=True)
        return SqlStore.sqlite(self.settings.sql_path, timeout_s=self.settings.connect_timeout_s)

    # --- background jobs ---------------------------------------------------------------------

    def default_broker(self) -> Broker:
        """kombu's SQLAlchemy transport over `data/broker.db`: a queue that needs no server."""
        path = self.settings.broker_path
        # create_engine() options: wait for SQLite's write lock instead of failing at once
        return Broker(f"sqla+sqlite:///{path}", {"connect_args": {"timeout": 30}}, f"SQLite broker {path}")

    def clean_broker(self) -> int:
        """Delete delivered messages: kombu's SQLAlchemy transport keeps them forever (invisible).

        A delivered message is never delivered again by the transport (an unacknowledged one is
        re-published as a new row when its consumer gives it back), so deleting them is safe
        while workers run."""
        import sqlite3

        path = self.settings.broker_path
        if not path.exists():
            return 0
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'kombu_message'").fetchone():
                return 0
            return conn.execute("DELETE FROM kombu_message WHERE visible = 0").rowcount
        finally:
            conn.close()

    # --- raw tables --------------------------------------------------------------------------

    def raw_table_label(self, table: str) -> str:
        return str(self.settings.ingested_dir / f"{table}.parquet")

    def loaded_ingest(self, raw_dir: Path) -> tuple[dict[str, Any], str, str]:
        root = self.settings.repo_path
        raw, where = repo_relative(raw_dir, root), repo_relative(self.settings.ingested_dir, root)
        fix = f"run `{self.command(f'ingest --raw {raw}')}` first"
        path = self.settings.ingested_dir / INGEST_MANIFEST
        if not path.exists():
            raise NotIngestedError(f"raw data in {raw} was not ingested (no {where}/{INGEST_MANIFEST}); {fix}")
        return json.loads(path.read_text()), where, fix

    # --- feature tables ----------------------------------------------------------------------

    def build_feature_tables(
        self, build: FeatureBuild, *, progress: bool = False, memory_limit: str | None = None
    ) -> BuildCounts:
        """Run the build in DuckDB over the ingested Parquet files; write `data/features/<table>.parquet`.

        Incremental: each file is rewritten as its kept rows plus the rebuilt ones. Each file is
        written under a temporary name and renamed into place when complete; the build's state
        (`data/features/_build/`) is written after every table, so an interrupted build is
        simply redone by the next one.
        """
        from tqdm import tqdm

        out_dir = self.settings.features_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        state_dir = out_dir / STATE_DIR
        con = duckdb_connect(memory_limit=memory_limit)
        try:
            con.execute("SET preserve_insertion_order = false")
            for sql in build.setup_sql:
                con.execute(sql)
            raw_names = self._raw_views(con, build)
            steps = tqdm(
                total=len(build.fingerprint_sql) + len(build.prepare_sql) + len(build.tables) + 1,
                desc="build-features",
                unit="step",
                disable=not progress,
            )
            kept = self._kept_fingerprints(con, build)  # made at the ingest: loaded, not computed again
            for sql in build.fingerprint_statements(raw_names, kept):
                con.execute(sql)
                steps.update()
            incremental = self._continues_state(con, build)
            names = dict(raw_names)
            users = None
            if incremental:
                prev = {f"prev_{k}": self._state_expression(con, k) for k in build.state_tables}
                for sql in build.incremental_sql:
                    con.execute(sql.format(**raw_names, **prev))
                names = dict(build.incremental_sources)
                row = con.execute("SELECT count(*) FROM hm_dirty").fetchone()
                users = int(row[0]) if row else 0
            else:
                for sql in build.full_sql:
                    con.execute(sql)
            for sql in build.prepare_sql:
                con.execute(sql.format(**names))
                steps.update()
            counts: dict[str, int] = {}
            for table, sql in build.tables.items():
                steps.set_postfix_str(table)
                path = out_dir / f"{table}.parquet"
                query = sql.format(**names)
                if incremental:  # the file's kept rows and the rebuilt ones, written over it atomically
                    affected = build.affected[table]
                    query = (
                        f"SELECT x.* FROM {self._table_expression(con, table)} x "
                        "LEFT JOIN hm_dirty d ON d.user_id = x.user_id "
                        f"WHERE d.user_id IS NULL OR NOT coalesce({affected}, FALSE)\n"
                        f"UNION ALL\nSELECT x.* FROM ({query}) x JOIN hm_dirty d ON d.user_id = x.user_id "
                        f"WHERE coalesce({affected}, FALSE)"
                    )
                counts[table] = self._write_feature_file(con, query, path)
                steps.update()
            state_dir.mkdir(exist_ok=True)
            for name, scratch in build.state_tables.items():
                self._write_feature_file(con, f"SELECT * FROM {scratch}", state_dir / f"{name}.parquet")
            atomic_write_text(state_dir / STATE_FILE, json.dumps({"version": build.version}), durable=False)
            steps.update()
            steps.close()
        finally:
            con.close()
        return BuildCounts(counts, incremental=incremental, users=users, kept_fingerprints=bool(kept))

    def _raw_views(self, con: duckdb.DuckDBPyConnection, build: FeatureBuild) -> dict[str, str]:
        """Views `raw_<table>` on `con` over the ingested Parquet files; their names by the build's placeholders."""
        raw_names = {}
        for placeholder, raw in build.sources.items():
            path = self.settings.ingested_dir / f"{raw}.parquet"
            con.execute(f"CREATE VIEW raw_{raw} AS SELECT * FROM {duckdb_scan(con, path, self.keyring)}")
            raw_names[placeholder] = f"raw_{raw}"
        return raw_names

    def _ingest_identity(self) -> str | None:
        """A hash of the ingest manifest: it changes whenever the ingested files do (an ingest, an
        erasure or a retention run rewrites it with them)."""
        import hashlib

        path = self.settings.ingested_dir / INGEST_MANIFEST
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None

    def keep_raw_fingerprints(self, build: FeatureBuild) -> None:
        """Fingerprint the ingested files and keep the tables as `data/features/_build/ingest_<name>.parquet`
        (encrypted), stamped in `_build/ingest.json` with the manifest's hash and the build version."""
        state_dir = self.settings.features_dir / STATE_DIR
        identity = self._ingest_identity()
        if identity is None:  # nothing ingested here: nothing to fingerprint
            return
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / KEPT_FILE).unlink(missing_ok=True)  # no stamp while the files change
        con = duckdb_connect()
        try:
            con.execute("SET preserve_insertion_order = false")
            raw_names = self._raw_views(con, build)
            for sql in build.fingerprint_sql:
                con.execute(sql.format(**raw_names))
            for name, scratch in build.fingerprint_tables.items():
                self._write_feature_file(con, f"SELECT * FROM {scratch}", state_dir / f"{KEPT_PREFIX}{name}.parquet")
        finally:
            con.close()
        stamp = {"ingest": identity, "version": build.version}
        atomic_write_text(state_dir / KEPT_FILE, json.dumps(stamp), durable=False)

    def _kept_fingerprints(self, con: duckdb.DuckDBPyConnection, build: FeatureBuild) -> dict[str, str] | None:
        """The kept fingerprint tables as table expressions on `con`, when they describe the
        ingested files as they are now and were made by this build's SQL; else None."""
        state_dir = self.settings.features_dir / STATE_DIR
        stamp_path = state_dir / KEPT_FILE
        if not build.grid_sql or not stamp_path.exists():
            return None
        stamp = json.loads(stamp_path.read_text())
        if stamp.get("version") != build.version or stamp.get("ingest") != self._ingest_identity():
            return None
        files = {name: state_dir / f"{KEPT_PREFIX}{name}.parquet" for name in build.fingerprint_tables}
        if not all(f.exists() for f in files.values()):
            return None
        return {name: duckdb_scan(con, path, self.keyring) for name, path in files.items()}

    def _state_expression(self, con: duckdb.DuckDBPyConnection, name: str) -> str:
        """The last build's state table `name` on `con` (encrypted like the feature files: it holds
        per-day counts and the day's weight of every user)."""
        return duckdb_scan(con, self.settings.features_dir / STATE_DIR / f"{name}.parquet", self.keyring)

    def _continues_state(self, con: duckdb.DuckDBPyConnection, build: FeatureBuild) -> bool:
        """Whether the last build's state (and every table) is there, made by the same SQL, and can be built on."""
        state_dir = self.settings.features_dir / STATE_DIR
        if build.full or not (state_dir / STATE_FILE).exists():
            return False
        files = [state_dir / f"{n}.parquet" for n in build.state_tables]
        files += [self.settings.features_dir / f"{t}.parquet" for t in build.tables]
        if not all(f.exists() for f in files):
            return False
        if json.loads((state_dir / STATE_FILE).read_text()).get("version") != build.version:
            return False
        row = con.execute(build.needs_full_sql.format(prev_grid=self._state_expression(con, "grid"))).fetchone()
        return row is not None and int(row[0]) == 0

    def _write_feature_file(self, con: duckdb.DuckDBPyConnection, query: str, path: Path) -> int:
        """Stream the rows of `query` into the Parquet file `path`, encrypted under the active data
        key (crypto.write_parquet; atomically); the row count. Every feature file is written here."""
        return write_parquet(self.keyring(), con.execute(query).to_arrow_reader(), path)

    def feature_table_label(self, table: str) -> str:
        return str(self.settings.features_dir / f"{table}.parquet")

    def _table_expression(self, con: duckdb.DuckDBPyConnection, table: str) -> str:
        """The feature table as a DuckDB table expression on `con` (decrypted as it is scanned)."""
        return duckdb_scan(con, self.settings.features_dir / f"{table}.parquet", self.keyring)

    def feature_time_range(self, tables: Sequence[str]) -> tuple[datetime, datetime]:
        """The earliest and latest event_timestamp over the feature tables `tables`. Cached per
        process by the files' identity (inode, size, mtime): every write replaces a file by a
        rename, so a changed table is read again; an unchanged one is not decrypted again (the
        metrics' freshness gauges ask at every scrape)."""
        files = [t for t in tables if (self.settings.features_dir / f"{t}.parquet").exists()]
        if not files:
            raise FeatureRepoError(
                f"no feature tables in {self.settings.features_dir}; run `{self.command('build-features --raw DIR')}`"
            )
        identity = tuple(_file_identity(self.settings.features_dir / f"{t}.parquet") for t in files)
        cached = _TIME_RANGES.get(identity)
        if cached is not None:
            return cached
        found = self._feature_time_range(files)
        if len(_TIME_RANGES) > 256:
            _TIME_RANGES.clear()
        _TIME_RANGES[identity] = found
        return found

    def _feature_time_range(self, files: Sequence[str]) -> tuple[datetime, datetime]:
        con = duckdb_connect()
        try:
            union = " UNION ALL ".join(
                f"SELECT min(event_timestamp) lo, max(event_timestamp) hi FROM {self._table_expression(con, t)}"
                for t in files
            )
            row = con.execute(f"SELECT min(lo), max(hi) FROM ({union})").fetchone()
        finally:
            con.close()
        if row is None or row[0] is None:
            where = repo_relative(self.settings.features_dir, self.settings.repo_path)
            raise FeatureRepoError(f"the feature tables in {where} are empty; rebuild them")
        return row[0].astimezone(timezone.utc), row[1].astimezone(timezone.utc)

    def erase_feature_rows(self, tables: Sequence[str], user_id: int, *, count_only: bool = False) -> dict[str, int]:
        """Rewrite each `data/features/<table>.parquet` that holds the user's rows without them (atomically),
        and the build's state files (`_build/<name>.parquet`: the user's fingerprints)."""
        state = [f"{STATE_DIR}/{prefix}{name}" for name in USER_STATE_TABLES for prefix in ("", KEPT_PREFIX)]
        return self._delete_feature_rows([*tables, *state], f"user_id = {int(user_id)}", count_only=count_only)

    def expire_feature_rows(
        self, tables: Sequence[str], cutoff: datetime, *, count_only: bool = False
    ) -> dict[str, int]:
        """Rewrite each `data/features/<table>.parquet` holding rows older than `cutoff` without them (atomically)."""
        at = quote_literal(cutoff.astimezone(timezone.utc).isoformat())
        return self._delete_feature_rows(tables, f"event_timestamp < CAST({at} AS TIMESTAMPTZ)", count_only=count_only)

    def _delete_feature_rows(self, tables: Sequence[str], where: str, *, count_only: bool) -> dict[str, int]:
        """Count the rows matching `where` (SQL of our own making) in each feature file; rewrite it without them."""
        counts: dict[str, int] = {}
        con = duckdb_connect()
        try:
            for table in tables:
                path = self.settings.features_dir / f"{table}.parquet"
                if not path.exists():
                    continue
                source = self._table_expression(con, table)
                row = con.execute(f"SELECT count(*) FROM {source} WHERE {where}").fetchone()
                counts[table] = int(row[0]) if row else 0
                if counts[table] and not count_only:
                    self._write_feature_file(con, f"SELECT * FROM {source} WHERE ({where}) IS NOT TRUE", path)
        finally:
            con.close()
        return counts

    def erase_online_rows(self, store: FeatureStore, user_id: int, *, count_only: bool = False) -> dict[str, int]:
        """Delete the user's rows from every table of Feast's SQLite online store, through Feast's connection."""
        from healthmate_features import _feast

        path = Path(store.config.online_store.path)
        if not (path if path.is_absolute() else self.settings.repo_path / path).exists():
            return {}  # never materialized: nothing to delete (and no file to create)
        conn = _feast.sqlite_connection(store)
        key = _feast.int64_entity_key("user_id")(int(user_id))
        prefix = f"{store.project}_"
        counts: dict[str, int] = {}
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()]
        for table in tables:
            if not table.startswith(prefix):
                continue
            columns = {r[1] for r in conn.execute(f'PRAGMA table_info("{table}")').fetchall()}
            if "entity_key" not in columns:
                continue
            row = conn.execute(f'SELECT count(*) FROM "{table}" WHERE entity_key = ?', (key,)).fetchone()
            counts[table] = int(row[0]) if row else 0
            if counts[table] and not count_only:
                with conn:  # one transaction per table, committed by Feast's connection
                    conn.execute(f'DELETE FROM "{table}" WHERE entity_key = ?', (key,))
        return counts

    def query_feature_tables(self, sql: str, *tables: str) -> list[tuple[Any, ...]]:
        missing = [t for t in tables if not (self.settings.features_dir / f"{t}.parquet").exists()]
        if missing:
            raise FeatureRepoError(
                f"feature table(s) {', '.join(missing)} missing in {self.settings.features_dir}; "
                f"run `{self.command('build-features --raw DIR')}`"
            )
        con = duckdb_connect()
        try:
            return con.execute(sql.format(*(self._table_expression(con, t) for t in tables))).fetchall()
        finally:
            con.close()


_TIME_RANGES: dict[tuple, tuple[datetime, datetime]] = {}


def _file_identity(path: Path) -> tuple:
    stat = path.stat()
    return (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
