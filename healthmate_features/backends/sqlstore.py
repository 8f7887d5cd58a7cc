"""One SQL store for model tracking, API keys and audit: SQLite (embedded) or Postgres (production).

`backends.open_sql_store(settings)` connects (with a timeout) and applies the package's numbered migrations,
recorded in `schema_migrations`, so both backends hold the same tables. Callers write SQL once,
with `?` placeholders; this module is the only place that knows how the two drivers differ
(paramstyle, column types, timestamps, JSON, inserted ids, transactions).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from healthmate_features.config import Settings
from healthmate_features.errors import NotIngestedError, ServiceUnavailableError, StoreError

# Column types that differ between dialects; migration statements name them as {id}, {ts}, ...
TYPES = {
    "sqlite": {
        "id": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "bigint": "INTEGER",
        "float": "REAL",
        "ts": "TEXT",  # ISO 8601 in UTC with microseconds: sorts like time
        "json": "TEXT",
    },
    "postgres": {
        "id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "bigint": "BIGINT",
        "float": "DOUBLE PRECISION",
        "ts": "TIMESTAMPTZ",
        "json": "JSONB",
    },
}

_APPEND_ONLY = "audit_log is append-only"


@dataclass(frozen=True)
class Migration:
    """One numbered schema change: shared statements, then the dialect's own ones."""

    number: int
    name: str
    statements: tuple[str, ...]
    sqlite: tuple[str, ...] = ()
    postgres: tuple[str, ...] = ()

    def statements_for(self, dialect: str) -> list[str]:
        extra = self.sqlite if dialect == "sqlite" else self.postgres
        return [s.format(**TYPES[dialect]) for s in self.statements] + list(extra)


# Tables whose changes bump a revision (migration 5): a process that caches what it read from
# one of them (API keys, model runs) re-reads it when the revision moved (`SqlStore.revisions`).
WATCHED_TABLES = ("api_keys", "model_runs")

_REVISIONS = Migration(
    5,
    "change revisions of api_keys and model_runs",
    (
        """CREATE TABLE revisions (
            name TEXT PRIMARY KEY,
            revision {bigint} NOT NULL
        )""",
        *(f"INSERT INTO revisions (name, revision) VALUES ('{t}', 0)" for t in WATCHED_TABLES),
    ),
    # The bump is in the changing statement's own transaction: a reader never sees the change
    # without the new revision, nor the revision without the change.
    sqlite=tuple(
        f"""CREATE TRIGGER {table}_revision_{op.lower()} AFTER {op} ON {table}
            BEGIN UPDATE revisions SET revision = revision + 1 WHERE name = '{table}'; END"""
        for table in WATCHED_TABLES
        for op in ("INSERT", "UPDATE", "DELETE")
    ),
    postgres=(
        """CREATE FUNCTION bump_revision() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                EXECUTE format('UPDATE %I.revisions SET revision = revision + 1 WHERE name = $1', TG_TABLE_SCHEMA)
                    USING TG_TABLE_NAME;
                RETURN NULL;
            END $$""",
        *(
            f"""CREATE TRIGGER {table}_revision AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}
                FOR EACH STATEMENT EXECUTE FUNCTION bump_revision()"""
            for table in WATCHED_TABLES
        ),
    ),
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "model tracking",
        (
            """CREATE TABLE model_runs (
                id {id},
                model_name TEXT NOT NULL,
                model_version TEXT NOT NULL,
                dataset_name TEXT NOT NULL,
                dataset_version TEXT NOT NULL,
                environment TEXT NOT NULL
                    CHECK (environment IN ('development', 'staging', 'production')),
                logged_at {ts} NOT NULL,
                params {json} NOT NULL
            )""",
            "CREATE INDEX model_runs_model_idx ON model_runs (model_name, logged_at)",
            """CREATE TABLE model_metrics (
                run_id {bigint} NOT NULL REFERENCES model_runs (id),
                metric TEXT NOT NULL,
                value {float} NOT NULL,
                PRIMARY KEY (run_id, metric)
            )""",
        ),
    ),
    Migration(
        2,
        "api keys",
        (
            """CREATE TABLE api_keys (
                key_id TEXT PRIMARY KEY,
                secret_sha256 TEXT NOT NULL UNIQUE,
                role TEXT NOT NULL CHECK (role IN ('admin', 'user')),
                user_id {bigint},
                name TEXT,
                created_at {ts} NOT NULL,
                revoked_at {ts},
                CHECK ((role = 'user' AND user_id IS NOT NULL)
                       OR (role = 'admin' AND user_id IS NULL))
            )""",
        ),
    ),
    Migration(
        3,
        "append-only audit log",
        (
            """CREATE TABLE audit_log (
                id {id},
                at {ts} NOT NULL,
                key_id TEXT,
                role TEXT CHECK (role IN ('admin', 'user')),
                endpoint TEXT NOT NULL,
                target TEXT,
                status INTEGER NOT NULL,
                latency_ms {float} NOT NULL
            )""",
            "CREATE INDEX audit_log_at_idx ON audit_log (at)",
        ),
        sqlite=(
            f"""CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
                BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END""",
            f"""CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
                BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END""",
        ),
        postgres=(
            f"""CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN RAISE EXCEPTION '{_APPEND_ONLY} (% refused)', TG_OP; END $$""",
            """CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
                FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()""",
            """CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
                FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()""",
        ),
    ),
    Migration(
        4,
        "background jobs and leases",
        (
            # One row per job, written before its message is published (jobs.store.JobStore).
            # `attempts` counts executions started and fences every write of an execution;
            # `lease_until` is renewed while a worker holds the job and lapses when it dies.
            """CREATE TABLE jobs (
                job_id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                target TEXT,
                submitted_by TEXT,
                params {json} NOT NULL,
                status TEXT NOT NULL
                    CHECK (status IN ('queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled')),
                attempts INTEGER NOT NULL DEFAULT 0,
                max_attempts INTEGER NOT NULL,
                created_at {ts} NOT NULL,
                started_at {ts},
                finished_at {ts},
                lease_until {ts},
                worker TEXT,
                result {json},
                error TEXT
            )""",
            "CREATE INDEX jobs_created_idx ON jobs (created_at)",
            "CREATE INDEX jobs_status_idx ON jobs (status, lease_until)",
            # Named leases (backends.locks.SqlLeases): a row is a held lock until `expires_at`.
            """CREATE TABLE leases (
                name TEXT PRIMARY KEY,
                holder TEXT NOT NULL,
                acquired_at {ts} NOT NULL,
                expires_at {ts} NOT NULL
            )""",
        ),
    ),
    _REVISIONS,
    Migration(
        6,
        "erasure ledger",
        (
            # One row per erased person (backends.ledger): `subject` is HMAC-SHA256 of the user id
            # under the key `key_id` names (never the id itself); `status` pending until every
            # store is done; `report` the certificate (counts per store, versions redacted; no
            # health values).
            """CREATE TABLE erasures (
                erasure_id TEXT PRIMARY KEY,
                subject TEXT NOT NULL,
                key_id TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('pending', 'complete')),
                reason TEXT,
                actor TEXT,
                requested_at {ts} NOT NULL,
                completed_at {ts},
                report {json} NOT NULL
            )""",
            "CREATE UNIQUE INDEX erasures_subject_idx ON erasures (key_id, subject)",
        ),
    ),
    Migration(
        7,
        "audit hash chain",
        (
            # Every audit row written from now on carries `prev_hash` (the row_hash of the row
            # before it, or 64 zeros for the first) and `row_hash` (access.audit.chain_hash).
            # Rows up to `unchained_through` were written before this migration: "unchained".
            # The unique index refuses a fork (two rows after the same one) at write time.
            "ALTER TABLE audit_log ADD COLUMN prev_hash TEXT",
            "ALTER TABLE audit_log ADD COLUMN row_hash TEXT",
            "CREATE UNIQUE INDEX audit_log_prev_hash_idx ON audit_log (prev_hash)",
            """CREATE TABLE audit_chain (
                name TEXT PRIMARY KEY,
                unchained_through {bigint} NOT NULL,
                started_at {ts} NOT NULL
            )""",
        ),
        sqlite=(
            """INSERT INTO audit_chain (name, unchained_through, started_at)
                SELECT 'audit_log', COALESCE(MAX(id), 0), strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now')
                FROM audit_log""",
            f"""CREATE TRIGGER audit_chain_no_update BEFORE UPDATE ON audit_chain
                BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END""",
            f"""CREATE TRIGGER audit_chain_no_delete BEFORE DELETE ON audit_chain
                BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END""",
        ),
        postgres=(
            """INSERT INTO audit_chain (name, unchained_through, started_at)
                SELECT 'audit_log', COALESCE(MAX(id), 0), now() FROM audit_log""",
            """CREATE TRIGGER audit_chain_no_update_delete BEFORE UPDATE OR DELETE ON audit_chain
                FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()""",
            """CREATE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON audit_chain
                FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()""",
        ),
    ),
    Migration(
        8,
        "data keys",
        (
            # The keyring of encryption at rest (crypto.keyring, backends.keystore): data keys,
            # only ever wrapped under the master key `master_key_id` (base64 in `wrapped`). At most
            # one is active (the partial unique index), the one everything new is encrypted under.
            """CREATE TABLE data_keys (
                key_id TEXT PRIMARY KEY,
                wrapped TEXT NOT NULL,
                master_key_id TEXT NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('active', 'rotating', 'retired')),
                created_at {ts} NOT NULL,
                retired_at {ts}
            )""",
            "CREATE UNIQUE INDEX data_keys_one_active_idx ON data_keys (state) WHERE state = 'active'",
        ),
    ),
)

_MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at {ts} NOT NULL
)"""
_PG_MIGRATION_LOCK = 0x686D6D67  # advisory lock key: one migrating process at a time
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (what the store writes by default)."""
    return datetime.now(timezone.utc)


def read_ts(value: Any) -> datetime:
    """A timestamp column's value as an aware UTC datetime, whichever backend returned it."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(timezone.utc)


def read_json(value: Any) -> Any:
    """A JSON column's value as Python objects (SQLite returns text, Postgres parsed JSONB)."""
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _enable_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """Switch a SQLite database to WAL mode, waiting out other first users.

    Changing the journal mode needs an exclusive lock, and SQLite reports "database is locked"
    at once instead of calling its busy handler when several connections open a new file
    together; so retry until `timeout_s` (a database already in WAL mode needs no lock).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


class SqlStore:
    """A DB-API connection and its dialect ("sqlite" or "postgres"). Build with `backends.open_sql_store(settings)`.

    Calls are serialized by a lock, so one store may be shared by a web app's threads.

    `revisions()` reads the change revisions of WATCHED_TABLES on a second connection of its own
    (opened on first use, closed with the store), so that a per-request "did anything change?"
    never waits behind a write on the main one. On SQLite both connections are SQLite's own
    handles of the one file: SQLite keeps a process's POSIX locks across them, which a handle
    opened any other way and closed while the process runs would drop; so nothing else in a
    process opens the store's file, and the store's handles close only with the store.
    """

    def __init__(
        self, connect, dialect: str, description: str, *, schema: str | None = None, connect_async: Any = None
    ) -> None:
        self._connect = connect
        self._connect_async = connect_async  # Postgres: an AsyncConnection, for `current_revisions`
        self.dialect = dialect
        self.description = description
        self.schema = schema  # Postgres only: where the tables live
        self._lock = threading.RLock()
        self._depth = 0  # transactions open on the main connection (an inner one joins the outer)
        self._conn = connect()
        self._watch_lock = threading.Lock()
        self._watch: Any = None
        self._data_version: int | None = None  # SQLite: PRAGMA data_version at the last revision read
        self._revisions: dict[str, int] = {}
        self._flights: Any = None  # Postgres: concurrent async reads share one (`current_revisions`)
        self._async_watches: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()  # per event loop

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def sqlite(cls, path: str | Path, *, timeout_s: float = 5.0) -> SqlStore:
        """Open (creating if needed) the SQLite file at `path`; waits `timeout_s` on locks."""
        path = Path(path)

        def connect() -> sqlite3.Connection:
            try:
                conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA foreign_keys = ON")
                _enable_wal(conn, timeout_s)  # the API reads while the CLI writes
            except sqlite3.Error as exc:
                raise StoreError(
                    f"cannot open the SQLite store {path}: {exc}; check that its directory "
                    "exists and is writable (HM_REPO_PATH)"
                ) from exc
            return conn

        return cls(connect, "sqlite", f"SQLite {path}")

    @classmethod
    def postgres(cls, settings: Settings) -> SqlStore:
        """Connect to the settings' Postgres (backends.postgres.connect); tables live in HM_PG_SCHEMA.

        Raises ServiceUnavailableError naming host:port and the fix when the server cannot be
        reached within the connect timeout, StoreError for a schema name that is not a plain identifier."""
        from psycopg.rows import dict_row

        from healthmate_features.backends import postgres

        schema = settings.pg_schema
        if not _IDENTIFIER.match(schema):
            raise StoreError(
                f"Postgres schema name {schema!r} (HM_PG_SCHEMA) is not a plain identifier; "
                "use lowercase letters, digits and underscores"
            )

        def connect() -> Any:
            try:
                return postgres.connect(settings, autocommit=True, search_path=schema, row_factory=dict_row)
            except NotIngestedError as exc:  # the database does not exist: the server is there, the store is not
                raise ServiceUnavailableError(str(exc)) from exc

        async def connect_async() -> Any:
            return await postgres.connect_async(settings, autocommit=True, search_path=schema)

        return cls(
            connect,
            "postgres",
            f"PostgreSQL {settings.pg_host}:{settings.pg_port}/{settings.pg_database}",
            schema=schema,
            connect_async=connect_async,
        )

    # -- statements -------------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement written with `?` placeholders; return the affected row count."""
        with self._cursor(sql, params) as cur:
            return cur.rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run one SELECT (or RETURNING) statement; return its rows as dicts."""
        with self._cursor(sql, params) as cur:
            return [dict(row) for row in cur.fetchall()]

    def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one INSERT into a table with an `id` column; return the new row's id."""
        if self.dialect == "sqlite":
            with self._cursor(sql, params) as cur:
                return int(cur.lastrowid)
        return int(self.query(sql + " RETURNING id", params)[0]["id"])

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement written with `?` placeholders once per row of parameters, in one transaction.

        Side effect: all rows are committed together (one commit, one fsync) or none is."""
        if not rows:
            return
        adapted = [[self._adapt(v) for v in row] for row in rows]
        with self.transaction():
            if self.dialect == "sqlite":
                self._conn.executemany(sql, adapted)
                return
            with self._conn.cursor() as cur:
                cur.executemany(sql.replace("%", "%%").replace("?", "%s"), adapted)

    # -- change revisions -------------------------------------------------------------------

    def revisions(self) -> dict[str, int]:
        """The change revision of each watched table (WATCHED_TABLES), as of now.

        A revision moves in the same transaction as any change of its table (migration 5's
        triggers), so a value read from a table is current while the revision read before it is.
        SQLite: `PRAGMA data_version` on the watch connection tells whether any other connection
        committed since the last call; only then are the revisions read again (a few microseconds
        either way). Postgres: one query on the watch connection (a round trip)."""
        with self._watch_lock:
            try:
                if self._watch is None:
                    self._watch = self._connect()
                    self._data_version = None
                if self.dialect == "sqlite":
                    version = int(self._watch.execute("PRAGMA data_version").fetchone()[0])
                    if version == self._data_version and self._revisions:
                        return dict(self._revisions)
                    rows = self._watch.execute("SELECT name, revision FROM revisions").fetchall()
                    self._data_version = version
                else:
                    rows = self._watch.execute("SELECT name, revision FROM revisions").fetchall()
                    rows = [(r["name"], r["revision"]) for r in rows]
            except (StoreError, ServiceUnavailableError):
                self._close_watch()
                raise
            except Exception as exc:
                self._close_watch()
                raise self._revisions_unreadable(exc) from exc
            return self._keep_revisions(rows)

    def _revisions_unreadable(self, exc: Exception) -> ServiceUnavailableError:
        """The 503 of a revision read that failed with a driver's error `exc`."""
        return ServiceUnavailableError(
            f"cannot read the change revisions of {self.description}: {exc}; check that the "
            "server is running (the next request reconnects)"
        )

    def _keep_revisions(self, rows: Any) -> dict[str, int]:
        self._revisions = {str(name): int(revision) for name, revision in rows}
        return dict(self._revisions)

    async def current_revisions(self) -> dict[str, int]:
        """`revisions()` from a read that started after this call, without blocking the event loop.

        SQLite reads in place (microseconds, no I/O wait). Postgres reads on an AsyncConnection of
        the running loop (no thread: a hop to one and back cost more than the round trip); calls
        that arrive while a read runs share the next read, so N concurrent requests cost about
        one round trip each way, not N."""
        if self.dialect == "sqlite":
            return self.revisions()
        import asyncio

        loop = asyncio.get_running_loop()
        if self._flights is None or self._flights[0] is not loop:
            self._flights = (loop, {"next": None, "running": False})
        state = self._flights[1]
        if state["next"] is None:
            state["next"] = loop.create_future()
        mine = state["next"]
        if not state["running"]:
            state["running"] = True

            async def run() -> None:
                try:
                    while state["next"] is not None:
                        waiting, state["next"] = state["next"], None  # later callers wait for the next read
                        try:
                            result = await self._read_revisions_async(loop)
                        except BaseException as exc:  # noqa: BLE001 (handed to every waiter)
                            if not waiting.done():
                                waiting.set_exception(exc)
                            if not isinstance(exc, Exception):
                                raise
                        else:
                            if not waiting.done():
                                waiting.set_result(result)
                finally:
                    state["running"] = False

            loop.create_task(run())
        return dict(await asyncio.shield(mine))

    async def _read_revisions_async(self, loop: Any) -> dict[str, int]:
        """Postgres: `revisions()` read on the loop's own AsyncConnection (opened on first use)."""
        if self._connect_async is None:
            from anyio import to_thread

            return await to_thread.run_sync(self.revisions)
        conn = self._async_watches.get(loop)
        try:
            if conn is None or conn.closed:
                conn = self._async_watches[loop] = await self._connect_async()
            cursor = await conn.execute("SELECT name, revision FROM revisions")
            rows = await cursor.fetchall()
        except Exception as exc:
            broken = self._async_watches.pop(loop, None)
            if broken is not None:
                await _close_quietly(broken)
            if isinstance(exc, (StoreError, ServiceUnavailableError)):
                raise
            raise self._revisions_unreadable(exc) from exc
        return self._keep_revisions(rows)

    async def close_async(self) -> None:
        """Close the running loop's AsyncConnection (`current_revisions`), if it has one."""
        import asyncio

        conn = self._async_watches.pop(asyncio.get_running_loop(), None)
        if conn is not None:
            await _close_quietly(conn)

    def _close_watch(self) -> None:
        watch, self._watch, self._revisions = self._watch, None, {}
        if watch is not None:
            try:
                watch.close()
            except Exception:  # noqa: BLE001 (a broken connection: nothing left to close)
                pass

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the statements of the block atomically (commit on success, roll back on error).

        A transaction opened inside another one (same thread) joins it: it commits with the outer one."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._depth = 1
            try:
                with self._transaction():
                    yield
            finally:
                self._depth = 0

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            if self.dialect == "postgres":
                self._reconnect_if_broken()
                with self._conn.transaction():
                    yield
                return
            self._conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Close the connections (idempotent)."""
        with self._watch_lock:
            self._close_watch()
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- migrations -------------------------------------------------------------------------

    def applied_migrations(self) -> list[int]:
        """Numbers of the migrations recorded in schema_migrations, ascending."""
        rows = self.query("SELECT version FROM schema_migrations ORDER BY version")
        return [int(r["version"]) for r in rows]

    def migrate(self) -> list[int]:
        """Apply pending migrations in order, in one transaction; return the numbers applied.

        Idempotent: a second call applies nothing. Refuses a database migrated by a newer
        package (StoreError), rather than guessing at tables it does not know."""
        applied_now: list[int] = []
        with self.transaction():
            if self.dialect == "postgres":
                self.execute("SELECT pg_advisory_xact_lock(?)", (_PG_MIGRATION_LOCK,))
                self.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            self.execute(_MIGRATIONS_TABLE.format(**TYPES[self.dialect]))
            applied = set(self.applied_migrations())
            known = {m.number for m in MIGRATIONS}
            if applied - known:
                raise StoreError(
                    f"{self.description} has migrations {sorted(applied - known)} that this "
                    f"package does not know (it knows 1..{max(known)}); upgrade healthmate-features"
                )
            for migration in MIGRATIONS:
                if migration.number in applied:
                    continue
                try:
                    for statement in migration.statements_for(self.dialect):
                        self.execute(statement)
                except Exception as exc:
                    raise StoreError(
                        f"migration {migration.number} ({migration.name}) failed on {self.description}: {exc}"
                    ) from exc
                self.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.number, migration.name, utcnow()),
                )
                applied_now.append(migration.number)
        return applied_now

    # -- driver differences -----------------------------------------------------------------

    def _adapt(self, value: Any) -> Any:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise StoreError(f"timestamp {value.isoformat()} has no time zone; pass an aware datetime")
            value = value.astimezone(timezone.utc)
            return value if self.dialect == "postgres" else value.isoformat(timespec="microseconds")
        if isinstance(value, (dict, list)):
            if self.dialect == "postgres":
                from psycopg.types.json import Jsonb

                return Jsonb(value)
            return json.dumps(value, sort_keys=True)
        return value

    def _reconnect_if_broken(self) -> None:
        if self.dialect == "postgres" and self._conn.closed:
            self._conn = self._connect()

    @contextmanager
    def _cursor(self, sql: str, params: Sequence[Any]):
        values = [self._adapt(v) for v in params]
        with self._lock:
            self._reconnect_if_broken()
            if self.dialect == "sqlite":
                cur = self._conn.execute(sql, values)
                try:
                    yield cur
                finally:
                    cur.close()
                return
            import psycopg

            if values:  # psycopg's paramstyle is %s; a literal % must then be doubled
                sql = sql.replace("%", "%%").replace("?", "%s")
            try:
                with self._conn.cursor() as cur:
                    cur.execute(sql, values or None)
                    yield cur
            except psycopg.OperationalError as exc:
                if self._conn.closed:
                    raise ServiceUnavailableError(
                        f"lost the connection to {self.description}: {exc}; check that the "
                        "server is running (the next call reconnects)"
                    ) from exc
                raise


async def _close_quietly(conn: Any) -> None:
    try:
        await conn.close()
    except Exception:  # noqa: BLE001 (a broken connection: nothing left to close)
        pass
