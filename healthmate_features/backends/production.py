"""The production profile: raw and feature tables, Feast's registry and the SQL store in Postgres; Redis online.

`feature_store.production.yaml` holds `${HM_...}` placeholders instead of hosts and passwords;
`feast_variables()` gives their values from the Settings (environment variables with localhost
defaults), so nothing secret is ever committed and one settings object configures both the
package and Feast. For the plain `feast` CLI, `healthmate-features env` prints the same values
as `export` lines (Feast substitutes `${VAR}` from the environment itself, but knows no defaults).

Tables are replaced atomically: everything is written to new tables and swapped in by DROP +
RENAME inside ONE transaction, so readers see the old tables or the new ones, a re-run never
duplicates rows, and an interrupted run (error, kill, lost connection) leaves the previous
tables untouched. A transaction-scoped advisory lock serializes concurrent runs.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from healthmate_features.backends import postgres, redis
from healthmate_features.backends.base import (
    INGEST_MANIFEST,
    USER_STATE_TABLES,
    Backend,
    Broker,
    BuildCounts,
    FeatureBuild,
    RawTable,
    redis_broker,
)
from healthmate_features.config import Settings
from healthmate_features.errors import FeatureRepoError, NotIngestedError
from healthmate_features.util.sql import quote_ident

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.data_source import DataSource

    from healthmate_features.backends.locks import Leases
    from healthmate_features.backends.sqlstore import SqlStore

BATCH_ROWS = 100_000  # rows per COPY chunk: bounds memory whatever the table size
MANIFEST_TABLE = "_ingest"
STATE_PREFIX = "_build_"  # <schema>._build_<name>: the last feature build's fingerprints of the raw tables
KEPT_PREFIX = "_build_ingest_"  # <schema>._build_ingest_<name>: the loaded ingest's (keep_raw_fingerprints)
KEPT_STAMP = "_build_ingest"  # which ingest (and build version, and last build's state) they were made from
KEPT_DIRTY = "dirty"  # <schema>._build_ingest_dirty: the changed users, compared with that state
_PG_TYPES = {"int": "BIGINT", "float": "DOUBLE PRECISION", "string": "TEXT", "timestamp": "TIMESTAMPTZ"}
_LOCK = "hashtext('healthmate_features.postgres')"


def _copy_parquet(
    cur: Any, dest: str, columns: list[str], path: Path, *, batch_rows: int, progress: Any, keyring: Any
) -> int:
    """COPY a Parquet file (decrypted with `keyring`) into `dest` in chunks of `batch_rows` rows (CSV by Arrow)."""
    import pyarrow.csv as pacsv

    from healthmate_features.crypto import open_parquet

    rows = 0
    cols = ", ".join(quote_ident(c) for c in columns)
    options = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")  # "" is text, bare empty NULL
    with cur.copy(f"COPY {dest} ({cols}) FROM STDIN (FORMAT csv)") as copy:
        for batch in open_parquet(keyring, path).iter_batches(batch_size=batch_rows, columns=columns):
            buf = io.BytesIO()
            pacsv.write_csv(batch, buf, options)
            copy.write(buf.getbuffer())
            rows += batch.num_rows
            progress.update(batch.num_rows)
    return rows


class PostgresRedisBackend(Backend):
    """What the production and spark profiles share: the SQL store and Feast's SQL registry in
    Postgres (HM_PG_*); the online store, the job broker and the locks in Redis (HM_REDIS_URL).
    Each profile adds where its raw and feature tables live."""

    # --- messages ----------------------------------------------------------------------------

    def command(self, args: str) -> str:
        verb, _, rest = args.partition(" ")
        return f"healthmate-features {verb} --profile {self.name}" + (f" {rest}" if rest else "")

    def describe(self) -> str:
        s = self.settings
        return (
            f"profile {self.name}: postgres {s.pg_host}:{s.pg_port}/{s.pg_database} (schema {s.pg_schema}), "
            f"redis {redis.redis_address(s)}"
        )

    def _where(self) -> str:
        s = self.settings
        return f"Postgres ({s.pg_host}:{s.pg_port}/{s.pg_database}, schema {s.pg_schema})"

    # --- servers -----------------------------------------------------------------------------

    def check_services(self) -> None:
        """Fail fast, within the connect timeouts, when Postgres or Redis does not answer."""
        with postgres.connect(self.settings):
            pass
        redis.check_redis(self.settings)

    def prepare_servers(self) -> None:
        """Create the database if needed, then check that Postgres and Redis answer."""
        postgres.ensure_database(self.settings)
        self.check_services()

    @contextmanager
    def service_errors(self) -> Iterator[None]:
        """Turn connection failures raised inside Feast (psycopg, redis, SQLAlchemy) into ServiceUnavailableError."""
        import psycopg
        import redis as redis_py

        try:
            yield
        except (redis_py.exceptions.ConnectionError, redis_py.exceptions.TimeoutError) as exc:
            raise redis.redis_unavailable(self.settings, exc) from exc
        except psycopg.OperationalError as exc:
            raise postgres.postgres_unavailable(self.settings, exc) from exc
        except Exception as exc:
            from sqlalchemy.exc import OperationalError

            if isinstance(exc, OperationalError):
                raise postgres.postgres_unavailable(self.settings, exc) from exc
            raise

    # --- Feast -------------------------------------------------------------------------------

    def feast_variables(self) -> dict[str, str]:
        """The values of every `${...}` placeholder of feature_store.production.yaml, from the settings."""
        s = self.settings
        return {
            "HM_PG_HOST": s.pg_host,
            "HM_PG_PORT": str(s.pg_port),
            "HM_PG_USER": s.pg_user,
            "HM_PG_PASSWORD": s.pg_password,
            "HM_PG_DATABASE": s.pg_database,
            "HM_PG_SCHEMA": s.pg_schema,
            "HM_PG_SSLMODE": s.pg_sslmode,
            "HM_PG_SSLROOTCERT": s.pg_sslrootcert,
            "HM_PG_SSLCERT": s.pg_sslcert,
            "HM_PG_SSLKEY": s.pg_sslkey,
            # Derived: the registry's SQLAlchemy URL needs a URL-quoted password and an integer timeout.
            "HM_FEAST_PG_PASSWORD_URL": quote(s.pg_password, safe=""),
            "HM_FEAST_PG_CONNECT_TIMEOUT": str(postgres.connect_timeout(s)),
            # The registry URL's TLS files (only those set), URL-quoted: "&sslrootcert=...".
            "HM_FEAST_PG_SSL_FILES": "".join(
                f"&{name}={quote(value, safe='')}"
                for name, value in postgres.ssl_options(s).items()
                if name != "sslmode"
            ),
            "HM_FEAST_REDIS": redis.redis_connection_string(
                s.redis_url, timeout_s=s.connect_timeout_s, socket_timeout_s=s.redis_timeout_s, ca_cert=s.redis_ca_cert
            ),
        }

    def feast_env(self) -> dict[str, str]:
        self.feast_config()  # a bad setting fails here, with our message
        self.check_services()
        return super().feast_env()

    def open_feature_store(self) -> FeatureStore:
        """The configuration's placeholders filled from the settings; Postgres and Redis must answer
        within the connect timeout (else ServiceUnavailableError)."""
        from feast import FeatureStore

        config = self.feast_config()
        self.check_services()
        return self.bind_keyring(FeatureStore(repo_path=str(self.settings.repo_path), config=config))

    #: Feast's SQL registry tables the dashboard reads (views with their materializations, services).
    _REGISTRY_TABLES = ("feature_views", "on_demand_feature_views", "feature_services", "entities")

    def __init__(self, settings: Settings) -> None:
        import threading

        super().__init__(settings)
        self._stamp_lock = threading.Lock()
        self._stamp_conn: Any = None
        self._project: str | None = None

    def registry_stamp(self) -> Any:
        """Feast's SQL registry: per registry table of the project, its row count and newest row
        version (`xmin`, the transaction that last wrote a row): every apply and materialization
        rewrites a row, so the pair changes exactly when the registry does. One query on a
        connection kept for it (reconnected after a failure)."""
        with self._stamp_lock:
            if self._project is None:
                self._project = self.feast_config().project
            conn = self._stamp_conn
            try:
                if conn is None or conn.closed:
                    conn = self._stamp_conn = postgres.connect(self.settings, autocommit=True)
                parts = " UNION ALL ".join(
                    f"SELECT '{t}', count(*), max(xmin::text::bigint) FROM {t} WHERE project_id = %(p)s"
                    for t in self._REGISTRY_TABLES
                )
                return tuple(conn.execute(parts, {"p": self._project}).fetchall())
            except Exception as exc:
                if conn is not None:
                    conn.close()
                self._stamp_conn = None
                if "does not exist" in str(exc):  # no `feast apply` yet: no registry tables
                    return None
                raise postgres.postgres_unavailable(self.settings, exc) from exc

    # --- the SQL store -----------------------------------------------------------------------

    def connect_sql_store(self) -> SqlStore:
        from healthmate_features.backends.sqlstore import SqlStore

        return SqlStore.postgres(self.settings)

    def migrate_sql_store(self, store: SqlStore) -> None:
        """Apply pending migrations; with an owner role (HM_PG_OWNER_USER), as the owner on a connection of its own.

        The application role cannot create tables (backends.roles): when every migration is
        applied already, nothing connects as the owner."""
        from healthmate_features.backends import roles
        from healthmate_features.backends.sqlstore import MIGRATIONS, SqlStore

        if not roles.separate_owner(self.settings):
            store.migrate()
            return
        try:
            if set(store.applied_migrations()) >= {m.number for m in MIGRATIONS}:
                return
        except Exception:  # no schema_migrations yet (or not readable): the owner finds out
            pass
        with SqlStore.postgres(roles.owner_settings(self.settings)) as owner:
            owner.migrate()
        roles.grant_application(self.settings)

    # --- background jobs ---------------------------------------------------------------------

    def default_broker(self) -> Broker:
        """The profile's Redis (HM_REDIS_URL), keys under HM_REDIS_PREFIX."""
        return redis_broker(self.settings.redis_url, self.settings)

    def leases(self) -> Leases:
        """Locks as Redis keys (SET NX PX) under HM_REDIS_PREFIX.

        A lock command is tiny: it waits at most HM_CONNECT_TIMEOUT_S (or HM_REDIS_TIMEOUT_S if
        smaller), and a release right after a command timed out gives up at once
        (`redis.answered_within(fail_fast=True)`): a run on a hung Redis waits one lock timeout, not one per lock."""
        from healthmate_features.backends.locks import RedisLeases

        s = self.settings
        timeout, setting = min((s.connect_timeout_s, "HM_CONNECT_TIMEOUT_S"), (s.redis_timeout_s, "HM_REDIS_TIMEOUT_S"))
        return RedisLeases(
            redis.connect(s, timeout_s=timeout),
            prefix=s.redis_prefix,
            description=f"Redis {redis.redis_address(s)}",
            errors=lambda fail_fast=False: redis.answered_within(
                s, timeout_s=timeout, setting=setting, fail_fast=fail_fast
            ),
        )

    # --- the online store ----------------------------------------------------------------------

    def erase_online_rows(self, store: FeatureStore, user_id: int, *, count_only: bool = False) -> dict[str, int]:
        """DEL the user's Redis hash (Feast keeps one per entity and project, holding every view's fields)."""
        from healthmate_features._feast import feast_redis_key

        key = feast_redis_key(store.project, "user_id", int(user_id))
        client = redis.connect(self.settings)
        try:
            with self.service_errors():
                found = int(client.exists(key))
                if found and not count_only:
                    client.delete(key)
        finally:
            client.close()
        return {f"redis hash (Feast project {store.project})": found}


class ProductionBackend(PostgresRedisBackend):
    """Postgres (HM_PG_*) and Redis (HM_REDIS_URL)."""

    name = "production"
    feature_store_file = "feature_store.production.yaml"
    sql_dialect = "postgres"

    # --- Feast -------------------------------------------------------------------------------

    def batch_source(self, table: str, *, description: str) -> DataSource:
        from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource

        return PostgreSQLSource(
            name=f"{table}_source",
            timestamp_field="event_timestamp",
            description=description,
            table=f"{self.settings.pg_schema}.{table}",
        )

    # --- raw tables --------------------------------------------------------------------------

    def prepare_raw_store(self) -> None:
        postgres.ensure_database(self.settings)

    def raw_table_label(self, table: str) -> str:
        return f"postgres table {self.settings.pg_schema}.{table}"

    def store_raw(
        self, ingested_dir: Path, tables: Sequence[RawTable], *, batch_rows: int = BATCH_ROWS, progress: bool = False
    ) -> dict[str, int]:
        """Replace the raw tables in Postgres with the accepted rows of an ingest; return rows per table.

        Side effects: creates the database and schema if needed; in one transaction, COPYs each
        `<ingested_dir>/<table>.parquet` into a new table, swaps it in for `<schema>.<table>`, and
        records the ingest manifest in `<schema>._ingest` (what `loaded_ingest` reads).
        """
        from tqdm import tqdm

        settings = self.settings
        ingested_dir = Path(ingested_dir)
        manifest_path = ingested_dir / INGEST_MANIFEST
        if not manifest_path.exists():
            raise NotIngestedError(
                f"{ingested_dir} holds no ingest ({manifest_path} is missing); run `{self.command('ingest --raw DIR')}`"
            )
        manifest = json.loads(manifest_path.read_text())
        present = [t for t in tables if t.name in manifest["tables"]]
        total = sum(manifest["tables"][t.name]["accepted"] for t in present)
        postgres.ensure_database(settings)
        counts: dict[str, int] = {}
        bar = tqdm(total=total, desc="load into postgres", unit="row", unit_scale=True, disable=not progress)
        with postgres.connect(settings) as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(f"SELECT pg_advisory_xact_lock({_LOCK})")
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(settings.pg_schema)}")
            for table in present:
                final = postgres.table_name(settings, table.name)
                staging = postgres.table_name(settings, f"{table.name}__load")
                columns = ", ".join(f"{quote_ident(c)} {_PG_TYPES[t]}" for c, t in table.columns)
                cur.execute(f"DROP TABLE IF EXISTS {staging}")
                cur.execute(f"CREATE TABLE {staging} ({columns})")
                bar.set_postfix_str(table.name)
                counts[table.name] = _copy_parquet(
                    cur,
                    staging,
                    [c for c, _ in table.columns],
                    ingested_dir / f"{table.name}.parquet",
                    batch_rows=batch_rows,
                    progress=bar,
                    keyring=self.keyring,
                )
                cur.execute(f"DROP TABLE IF EXISTS {final}")
                cur.execute(f"ALTER TABLE {staging} RENAME TO {quote_ident(table.name)}")
                if table.primary_key:
                    cur.execute(f"ALTER TABLE {final} ADD PRIMARY KEY ({quote_ident(table.primary_key)})")
                cur.execute(f"ANALYZE {final}")
            manifest["loaded_at"] = datetime.now(timezone.utc).isoformat()
            manifest["loaded_rows"] = counts
            manifest_table = postgres.table_name(settings, MANIFEST_TABLE)
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {manifest_table} "
                "(id INT PRIMARY KEY CHECK (id = 1), manifest JSONB NOT NULL)"
            )
            cur.execute(
                f"INSERT INTO {manifest_table} VALUES (1, %s) "
                "ON CONFLICT (id) DO UPDATE SET manifest = EXCLUDED.manifest",
                (json.dumps(manifest),),
            )
        bar.close()
        return counts

    def erase_raw_rows(
        self,
        tables: Sequence[str],
        user_id: int,
        *,
        manifest: Mapping[str, Any] | None = None,
        count_only: bool = False,
    ) -> dict[str, int]:
        """Delete the user's rows from the raw tables in Postgres and record `manifest`, in one transaction."""
        where = ("user_id = %s", (int(user_id),))
        return self._delete_rows(dict.fromkeys(tables, where), manifest=manifest, count_only=count_only)

    def expire_raw_rows(
        self,
        time_columns: Mapping[str, str],
        cutoff: datetime,
        *,
        manifest: Mapping[str, Any] | None = None,
        count_only: bool = False,
    ) -> dict[str, int]:
        """DELETE the raw tables' rows whose event time is before `cutoff` and record `manifest`, in one transaction."""
        wheres = {t: (f"{quote_ident(c)} < %s", (cutoff,)) for t, c in time_columns.items()}
        return self._delete_rows(wheres, manifest=manifest, count_only=count_only)

    def expire_feature_rows(
        self, tables: Sequence[str], cutoff: datetime, *, count_only: bool = False
    ) -> dict[str, int]:
        """DELETE the feature tables' rows with event_timestamp before `cutoff` (one transaction)."""
        return self._delete_rows(
            dict.fromkeys(tables, ("event_timestamp < %s", (cutoff,))), count_only=count_only, forget_counts=True
        )

    def _delete_rows(
        self,
        wheres: Mapping[str, tuple[str, tuple[Any, ...]]],
        *,
        manifest: Mapping[str, Any] | None = None,
        count_only: bool = False,
        forget_counts: bool = False,
    ) -> dict[str, int]:
        """DELETE (or count) the rows matching each table's condition, in our schema's tables; one transaction.
        `forget_counts`: feature tables lose rows, so the last build's rows per table are dropped."""
        settings = self.settings
        counts: dict[str, int] = {}
        try:
            conn = postgres.connect(settings)
        except NotIngestedError:  # no database yet: nothing was ever loaded
            return counts
        with conn, conn.transaction(), conn.cursor() as cur:
            for table, (where, params) in wheres.items():
                regclass = f"{quote_ident(settings.pg_schema)}.{quote_ident(table)}"
                found = cur.execute("SELECT to_regclass(%s)", (regclass,)).fetchone()
                if not found or found[0] is None:
                    continue
                name = postgres.table_name(settings, table)
                if count_only:
                    row = cur.execute(f"SELECT count(*) FROM {name} WHERE {where}", params).fetchone()
                    counts[table] = int(row[0]) if row else 0
                else:
                    counts[table] = cur.execute(f"DELETE FROM {name} WHERE {where}", params).rowcount
            if forget_counts and not count_only and any(counts.values()):
                self._forget_counts(cur)
            if manifest is not None and not count_only:
                regclass = f"{quote_ident(settings.pg_schema)}.{MANIFEST_TABLE}"
                found = cur.execute("SELECT to_regclass(%s)", (regclass,)).fetchone()
                if found and found[0] is not None:
                    cur.execute(
                        f"UPDATE {postgres.table_name(settings, MANIFEST_TABLE)} SET manifest = %s WHERE id = 1",
                        (json.dumps(dict(manifest)),),
                    )
        return counts

    def erase_feature_rows(self, tables: Sequence[str], user_id: int, *, count_only: bool = False) -> dict[str, int]:
        """DELETE the user's rows from the feature tables and the build's state (`_build_*`), one transaction."""
        state = [f"{prefix}{name}" for name in USER_STATE_TABLES for prefix in (STATE_PREFIX, KEPT_PREFIX)]
        state.append(f"{KEPT_PREFIX}{KEPT_DIRTY}")
        return self._delete_rows(
            dict.fromkeys([*tables, *state], ("user_id = %s", (int(user_id),))),
            count_only=count_only,
            forget_counts=True,
        )

    def loaded_manifest(self) -> dict[str, Any] | None:
        """The manifest of the ingest currently loaded into Postgres, or None if nothing was loaded."""
        settings = self.settings
        with postgres.connect(settings) as conn:
            regclass = f"{quote_ident(settings.pg_schema)}.{MANIFEST_TABLE}"
            exists = conn.execute("SELECT to_regclass(%s)", (regclass,)).fetchone()
            if not exists or not exists[0]:
                return None
            row = conn.execute(
                f"SELECT manifest FROM {postgres.table_name(settings, MANIFEST_TABLE)} WHERE id = 1"
            ).fetchone()
        return row[0] if row else None

    def loaded_ingest(self, raw_dir: Path) -> tuple[dict[str, Any], str, str]:
        where, fix = self._where(), f"run `{self.command(f'ingest --raw {raw_dir}')}` first"
        manifest = self.loaded_manifest()
        if manifest is None:
            raise NotIngestedError(f"no raw data was loaded into {where}; {fix}")
        return manifest, where, fix

    # --- feature tables ----------------------------------------------------------------------

    def build_feature_tables(
        self,
        build: FeatureBuild,
        *,
        progress: bool = False,
        memory_limit: str | None = None,
        work_mem: str = "256MB",
    ) -> BuildCounts:
        """Run the build inside Postgres from the loaded raw tables; return rows per table.

        Side effects, all in one transaction: a full build replaces `<schema>.<table>` for every
        table of the build, each indexed on (user_id, event_timestamp) (point-in-time joins) and
        event_timestamp (incremental materialization windows); an incremental one deletes the
        rows it rebuilds and inserts them anew. The build's state (`<schema>._build_*`) is
        updated in the same transaction. `memory_limit` is DuckDB's and unused here; `work_mem`
        is Postgres's per-sort memory.
        """
        from tqdm import tqdm

        settings = self.settings
        raw_names = {p: postgres.table_name(settings, raw) for p, raw in build.sources.items()}
        steps = tqdm(
            total=len(build.fingerprint_sql) + len(build.prepare_sql) + 2 * len(build.tables),
            desc="build-features (postgres)",
            unit="step",
            disable=not progress,
        )
        counts: dict[str, int] = {}
        users = None
        with postgres.connect(settings) as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(f"SELECT pg_advisory_xact_lock({_LOCK})")
            cur.execute("SELECT set_config('work_mem', %s, true)", (work_mem,))
            for sql in build.setup_sql:
                cur.execute(sql)
            kept = self._kept_fingerprints(cur, build)  # made at the ingest: read where they are
            tables = {name: self._kept_table(name) for name in build.fingerprint_tables} if kept else None
            for sql in build.fingerprint_statements(raw_names, tables, create="TEMP VIEW"):
                cur.execute(sql)
                steps.update()
            for name, scratch in build.state_tables.items():
                if not (kept and name in build.fingerprint_tables):
                    cur.execute(f"ANALYZE {quote_ident(scratch)}")
            incremental, previous_counts = self._continues_state(cur, build)
            names = dict(raw_names)
            if incremental:
                # few rows through large queries: compiling them (JIT) took longer than running them
                cur.execute("SELECT set_config('jit', 'off', true)")
                prev = {f"prev_{k}": self._state_table(k) for k in build.state_tables}
                statements = build.incremental_sql
                if kept and self._kept_dirty(cur):  # compared at the ingest with this very state
                    cur.execute(f"CREATE TEMP TABLE hm_dirty AS SELECT * FROM {self._kept_table(KEPT_DIRTY)}")
                    statements = statements[1:]
                for sql in statements:
                    cur.execute(sql.format(**raw_names, **prev))
                cur.execute("ANALYZE hm_dirty")
                cur.execute("ANALYZE hm_carry")
                names = dict(build.incremental_sources)
                row = cur.execute("SELECT count(*) FROM hm_dirty").fetchone()
                users = int(row[0]) if row else 0
            else:
                for sql in build.full_sql:
                    cur.execute(sql)
            for sql in build.prepare_sql:
                cur.execute(sql.format(**names))
                steps.update()
            for scratch in build.scratch_tables:
                cur.execute(f"ANALYZE {quote_ident(scratch)}")
            for table, sql in build.tables.items():
                steps.set_postfix_str(table)
                if incremental:
                    final, affected = postgres.table_name(settings, table), build.affected[table]
                    deleted = cur.execute(
                        f"DELETE FROM {final} AS x USING hm_dirty d "
                        f"WHERE d.user_id = x.user_id AND coalesce({affected}, FALSE)"
                    ).rowcount
                    inserted = cur.execute(
                        f"INSERT INTO {final} SELECT x.* FROM ({sql.format(**names)}) AS x "
                        f"JOIN hm_dirty d ON d.user_id = x.user_id WHERE coalesce({affected}, FALSE)"
                    ).rowcount
                    if previous_counts is not None:
                        counts[table] = previous_counts[table] - deleted + inserted
                    else:
                        row = cur.execute(f"SELECT count(*) FROM {final}").fetchone()
                        counts[table] = int(row[0]) if row else 0
                else:
                    staging = postgres.table_name(settings, f"{table}__build")
                    cur.execute(f"DROP TABLE IF EXISTS {staging}")
                    cur.execute(f"CREATE TABLE {staging} AS {sql.format(**names)}")
                    counts[table] = cur.rowcount
                steps.update()
            for table in build.tables:  # swap all in at the end: still one transaction
                final = postgres.table_name(settings, table)
                if incremental:  # a few rows replaced: statistics stay valid (autovacuum renews them)
                    steps.update()
                    continue
                cur.execute(f"DROP TABLE IF EXISTS {final}")
                cur.execute(
                    f"ALTER TABLE {postgres.table_name(settings, table + '__build')} RENAME TO {quote_ident(table)}"
                )
                cur.execute(
                    f"CREATE INDEX {quote_ident(table + '_user_id_event_timestamp_idx')} "
                    f"ON {final} (user_id, event_timestamp)"
                )
                cur.execute(f"CREATE INDEX {quote_ident(table + '_event_timestamp_idx')} ON {final} (event_timestamp)")
                cur.execute(f"ANALYZE {final}")
                steps.update()
            self._save_state(cur, build, incremental=incremental, counts=counts)
            for view in build.incremental_sources.values() if incremental else ():
                cur.execute(f"DROP VIEW {quote_ident(view)}")
            for scratch in (*reversed(build.scratch_tables), *build.state_tables.values(), "hm_carry"):
                is_view = kept and scratch in build.fingerprint_tables.values()
                cur.execute(f"DROP {'VIEW' if is_view else 'TABLE'} {quote_ident(scratch)}")
            if incremental:
                cur.execute("DROP TABLE hm_dirty")
        steps.close()
        return BuildCounts(counts, incremental=incremental, users=users, kept_fingerprints=kept)

    def _kept_table(self, name: str) -> str:
        return postgres.table_name(self.settings, f"{KEPT_PREFIX}{name}")

    def keep_raw_fingerprints(self, build: FeatureBuild) -> None:
        """Fingerprint the loaded raw tables into `<schema>._build_ingest_<name>`, stamped in
        `<schema>._build_ingest` with the loaded ingest's manifest and the build version; one transaction."""
        settings = self.settings
        raw_names = {p: postgres.table_name(settings, raw) for p, raw in build.sources.items()}
        stamp = postgres.table_name(settings, KEPT_STAMP)
        with postgres.connect(settings) as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(f"SELECT pg_advisory_xact_lock({_LOCK})")
            cur.execute("SELECT set_config('work_mem', '256MB', true)")
            for sql in build.fingerprint_sql:
                cur.execute(sql.format(**raw_names))
            for name, scratch in build.fingerprint_tables.items():
                kept = self._kept_table(name)
                cur.execute(f"DROP TABLE IF EXISTS {kept}")
                cur.execute(f"CREATE TABLE {kept} AS SELECT * FROM {quote_ident(scratch)}")
            # The changed users against the last build's state, if the next build can continue it
            # (the first statement of incremental_sql: hm_dirty), kept for the build that state
            # (its build_id) is still the last one.
            dirty, state_id = self._kept_table(KEPT_DIRTY), None
            cur.execute(f"DROP TABLE IF EXISTS {dirty}")
            if build.incremental_sql and self._continues_state(cur, build)[0]:
                cur.execute("SELECT set_config('jit', 'off', true)")
                prev = {f"prev_{k}": self._state_table(k) for k in build.state_tables}
                cur.execute(build.incremental_sql[0].format(**raw_names, **prev))
                cur.execute(f"CREATE TABLE {dirty} AS SELECT * FROM hm_dirty")
                row = cur.execute(
                    f"SELECT max(to_jsonb(g) ->> 'build_id') FROM {self._state_table('grid')} g"
                ).fetchone()
                state_id = row[0] if row else None
            cur.execute(f"DROP TABLE IF EXISTS {stamp}")
            cur.execute(
                f"CREATE TABLE {stamp} AS SELECT md5(manifest::text) AS ingest, CAST(%s AS TEXT) AS version, "
                f"CAST(%s AS TEXT) AS state FROM {postgres.table_name(settings, MANIFEST_TABLE)} WHERE id = 1",
                (build.version, state_id),
            )

    def _kept_dirty(self, cur: Any) -> bool:
        """Whether the changed users kept at the ingest were compared with the state of the last build."""
        found = cur.execute("SELECT to_regclass(%s)", (self._kept_table(KEPT_DIRTY),)).fetchone()
        if not found or found[0] is None:
            return False
        row = cur.execute(
            f"SELECT max(to_jsonb(s) ->> 'state') = (SELECT max(to_jsonb(g) ->> 'build_id') FROM "
            f"{self._state_table('grid')} g) FROM {postgres.table_name(self.settings, KEPT_STAMP)} s"
        ).fetchone()
        return bool(row and row[0])

    def _kept_fingerprints(self, cur: Any, build: FeatureBuild) -> bool:
        """Whether fingerprints kept from the ingest describe the raw tables as they are now (the
        manifest they were stamped with is still the loaded one) and were made by this build's SQL."""
        if not build.grid_sql:
            return False
        schema = self.settings.pg_schema
        names = [KEPT_STAMP, MANIFEST_TABLE, *(f"{KEPT_PREFIX}{n}" for n in USER_STATE_TABLES)]
        for name in names:
            found = cur.execute("SELECT to_regclass(%s)", (f"{quote_ident(schema)}.{quote_ident(name)}",)).fetchone()
            if not found or found[0] is None:
                return False
        row = cur.execute(
            f"SELECT s.version, s.ingest = (SELECT md5(m.manifest::text) FROM "
            f"{postgres.table_name(self.settings, MANIFEST_TABLE)} m WHERE m.id = 1) "
            f"FROM {postgres.table_name(self.settings, KEPT_STAMP)} s"
        ).fetchone()
        return row is not None and row[0] == build.version and bool(row[1])

    def _state_table(self, name: str) -> str:
        return postgres.table_name(self.settings, f"{STATE_PREFIX}{name}")

    def _continues_state(self, cur: Any, build: FeatureBuild) -> tuple[bool, dict[str, int] | None]:
        """Whether the last build's state (and every table) is there, made by the same SQL, and can be
        built on; and the rows per table it left (None: unknown, rows were deleted since)."""
        if build.full:
            return False, None
        schema = self.settings.pg_schema
        for name in [f"{STATE_PREFIX}{n}" for n in build.state_tables] + list(build.tables):
            found = cur.execute("SELECT to_regclass(%s)", (f"{quote_ident(schema)}.{quote_ident(name)}",)).fetchone()
            if not found or found[0] is None:
                return False, None
        # to_jsonb: the counts column is dropped when rows are deleted outside a build (_forget_counts)
        row = cur.execute(
            f"SELECT max(version), max(to_jsonb(g) ->> 'counts') FROM {self._state_table('grid')} AS g"
        ).fetchone()
        if not row or row[0] != build.version:
            return False, None
        counts = json.loads(row[1]) if row[1] is not None else None
        row = cur.execute(build.needs_full_sql.format(prev_grid=self._state_table("grid"))).fetchone()
        if row is None or int(row[0]) != 0:
            return False, None
        if counts is None or set(counts) != set(build.tables):
            return True, None
        return True, {table: int(n) for table, n in counts.items()}

    def _forget_counts(self, cur: Any) -> None:
        """The rows per table the last build left are no longer right (rows were deleted): drop them."""
        grid = f"{quote_ident(self.settings.pg_schema)}.{quote_ident(STATE_PREFIX + 'grid')}"
        found = cur.execute("SELECT to_regclass(%s)", (grid,)).fetchone()
        if found and found[0] is not None:
            cur.execute(f"ALTER TABLE {self._state_table('grid')} DROP COLUMN IF EXISTS counts")

    def _save_state(self, cur: Any, build: FeatureBuild, *, incremental: bool, counts: Mapping[str, int]) -> None:
        """The fingerprints of this build, for the next: replaced, or (incremental) the changed users' days;
        the grid with the build's version and rows per table (the next build counts from them)."""
        kept = {"readings": "d.r_lo", "events": "d.e_lo"}  # fingerprints differ only from these days on
        for name, scratch in build.state_tables.items():
            state = self._state_table(name)
            if incremental and name in kept:
                changed = f"d.user_id = s.user_id AND (d.whole OR s.day >= {kept[name]})"
                cur.execute(f"DELETE FROM {state} AS s USING hm_dirty d WHERE {changed}")
                cur.execute(
                    f"INSERT INTO {state} SELECT s.* FROM {quote_ident(scratch)} s JOIN hm_dirty d ON {changed}"
                )
                continue
            cur.execute(f"DROP TABLE IF EXISTS {state}")
            if name == "grid":
                cur.execute(
                    f"CREATE TABLE {state} AS SELECT *, CAST(%s AS TEXT) AS version, CAST(%s AS TEXT) AS counts, "
                    f"CAST(%s AS TEXT) AS build_id FROM {quote_ident(scratch)}",
                    (build.version, json.dumps(dict(counts)), uuid.uuid4().hex),
                )
            else:
                cur.execute(f"CREATE TABLE {state} AS SELECT * FROM {quote_ident(scratch)}")

    def feature_table_label(self, table: str) -> str:
        return f"postgres table {self.settings.pg_schema}.{table}"

    def feature_time_range(self, tables: Sequence[str]) -> tuple[datetime, datetime]:
        settings = self.settings
        union = " UNION ALL ".join(
            f"SELECT min(event_timestamp) AS lo, max(event_timestamp) AS hi FROM {postgres.table_name(settings, name)}"
            for name in tables
        )
        with postgres.connect(settings) as conn:
            missing = []
            for name in tables:
                regclass = f"{quote_ident(settings.pg_schema)}.{quote_ident(name)}"
                found = conn.execute("SELECT to_regclass(%s)", (regclass,)).fetchone()
                if not found or found[0] is None:
                    missing.append(name)
            if missing:
                raise FeatureRepoError(
                    f"feature table(s) {', '.join(missing)} missing in Postgres schema {settings.pg_schema}; "
                    f"run `{self.command('build-features --raw DIR')}`"
                )
            row = conn.execute(f"SELECT min(lo), max(hi) FROM ({union}) AS t").fetchone()
        if row is None or row[0] is None:
            raise FeatureRepoError(
                f"the feature tables in Postgres schema {settings.pg_schema} are empty; rebuild them"
            )
        return row[0].astimezone(timezone.utc), row[1].astimezone(timezone.utc)

    def query_feature_tables(self, sql: str, *tables: str) -> list[tuple[Any, ...]]:
        import psycopg

        with postgres.connect(self.settings) as conn:
            try:
                return conn.execute(sql.format(*(postgres.table_name(self.settings, t) for t in tables))).fetchall()
            except psycopg.errors.UndefinedTable as exc:
                raise FeatureRepoError(
                    f"feature table(s) {', '.join(tables)} missing in Postgres schema {self.settings.pg_schema}; "
                    f"run `{self.command('build-features --raw DIR')}`"
                ) from exc
