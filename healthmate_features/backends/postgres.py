"""The production profile's tables in Postgres: load ingested raw data, build the feature tables.

- `ingest(raw_dir, settings)` validates exactly like the embedded path (`ingest.ingest`: DuckDB,
  rejects file per table, counts per reason), then `load_raw` COPYs the accepted rows into
  `<schema>.users`, `health_readings`, `app_events` and `labels`.
- `build_features(raw_dir, settings)` runs the feature SQL of `features.py` (the same SQL DuckDB
  runs) inside Postgres and writes `<schema>.<feature table>`, indexed on (user_id, event_timestamp)
  for point-in-time joins and on event_timestamp for incremental materialization.

Both replace their tables atomically: everything is written to new tables and swapped in by
DROP + RENAME inside ONE transaction, so readers see the old tables or the new ones, a re-run
never duplicates rows, and an interrupted run (error, kill, lost connection) leaves the previous
tables untouched. A transaction-scoped advisory lock serializes concurrent runs.
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from pathlib import Path

from healthmate_features.config import Settings
from healthmate_features.errors import FeatureRepoError, NotIngestedError
from healthmate_features.features.catalog import FEATURE_TABLES, PREPARE_SQL
from healthmate_features.raw.schemas import RAW_TABLES

BATCH_ROWS = 100_000  # rows per COPY chunk: bounds memory whatever the table size
MANIFEST_TABLE = "_ingest"
_PG_TYPES = {"int": "BIGINT", "float": "DOUBLE PRECISION", "string": "TEXT", "timestamp": "TIMESTAMPTZ"}
_LOCK = "hashtext('healthmate_features.backends.postgres')"


def connect(settings: Settings, *, database: str | None = None, autocommit: bool = False):
    """A psycopg connection to the settings' database (session time zone UTC), within the timeout.

    Raises ServiceUnavailableError, naming the server and the fix, when it cannot connect, and
    NotIngestedError when the server answers but the database does not exist yet.
    """
    import psycopg

    from healthmate_features.backends.profiles import connect_timeout, postgres_unavailable

    try:
        return psycopg.connect(
            host=settings.pg_host,
            port=settings.pg_port,
            user=settings.pg_user,
            password=settings.pg_password or None,
            dbname=database or settings.pg_database,
            sslmode=settings.pg_sslmode,
            connect_timeout=connect_timeout(settings),
            application_name="healthmate-features",
            options="-c TimeZone=UTC",
            autocommit=autocommit,
        )
    except psycopg.OperationalError as exc:
        name = database or settings.pg_database
        if f'database "{name}" does not exist' in str(exc):
            raise NotIngestedError(
                f"database {name!r} does not exist on {settings.pg_host}:{settings.pg_port}; "
                "`healthmate-features ingest --profile production --raw DIR` creates it (or fix HM_PG_DATABASE)"
            ) from exc
        raise postgres_unavailable(settings, exc) from exc


def _q(name: str) -> str:
    """Quote an identifier."""
    return '"' + name.replace('"', '""') + '"'


def table_name(settings: Settings, table: str) -> str:
    """Schema-qualified, quoted name of one of our tables."""
    return f"{_q(settings.pg_schema)}.{_q(table)}"


def ensure_database(settings: Settings) -> None:
    """Create the settings' database if it does not exist yet (connecting to `postgres` for that).

    Raises ServiceUnavailableError when the server cannot be reached.
    """
    import psycopg

    try:
        with connect(settings):
            return
    except NotIngestedError:  # connect's error for a database that does not exist
        pass
    with connect(settings, database="postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (settings.pg_database,)).fetchone()
        if not exists:
            try:
                conn.execute(f"CREATE DATABASE {_q(settings.pg_database)}")
            except psycopg.errors.DuplicateDatabase:  # created concurrently
                pass


def _copy_parquet(cur, dest: str, columns: list[str], path: Path, *, batch_rows: int, progress) -> int:
    """COPY a Parquet file into `dest` in chunks of `batch_rows` rows (CSV rendered by Arrow)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    rows = 0
    cols = ", ".join(_q(c) for c in columns)
    options = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")  # "" is text, bare empty NULL
    with cur.copy(f"COPY {dest} ({cols}) FROM STDIN (FORMAT csv)") as copy:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
            buf = io.BytesIO()
            pacsv.write_csv(batch, buf, options)
            copy.write(buf.getbuffer())
            rows += batch.num_rows
            progress.update(batch.num_rows)
    return rows


def load_raw(
    settings: Settings,
    ingested_dir: str | Path,
    *,
    batch_rows: int = BATCH_ROWS,
    progress: bool = False,
) -> dict[str, int]:
    """Replace the raw tables in Postgres with the accepted rows of an ingest; return rows per table.

    Side effects: creates the database and schema if needed; in one transaction, COPYs each
    `<ingested_dir>/<table>.parquet` into a new table, swaps it in for `<schema>.<table>`, and
    records the ingest manifest in `<schema>._ingest` (what `build_features` checks).
    """
    from tqdm import tqdm

    from healthmate_features.raw.ingest import MANIFEST

    ingested_dir = Path(ingested_dir)
    manifest_path = ingested_dir / MANIFEST
    if not manifest_path.exists():
        raise NotIngestedError(
            f"{ingested_dir} holds no ingest ({manifest_path} is missing); run `healthmate-features ingest --raw DIR`"
        )
    manifest = json.loads(manifest_path.read_text())
    tables = [name for name in RAW_TABLES if name in manifest["tables"]]
    total = sum(manifest["tables"][name]["accepted"] for name in tables)
    ensure_database(settings)
    counts: dict[str, int] = {}
    bar = tqdm(total=total, desc="load into postgres", unit="row", unit_scale=True, disable=not progress)
    with connect(settings) as conn, conn.transaction(), conn.cursor() as cur:
        cur.execute(f"SELECT pg_advisory_xact_lock({_LOCK})")
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {_q(settings.pg_schema)}")
        for name in tables:
            schema = RAW_TABLES[name]
            final, staging = table_name(settings, name), table_name(settings, f"{name}__load")
            columns = ", ".join(f"{_q(c.name)} {_PG_TYPES[c.dtype]}" for c in schema.columns)
            cur.execute(f"DROP TABLE IF EXISTS {staging}")
            cur.execute(f"CREATE TABLE {staging} ({columns})")
            bar.set_postfix_str(name)
            counts[name] = _copy_parquet(
                cur, staging, schema.column_names, ingested_dir / f"{name}.parquet", batch_rows=batch_rows, progress=bar
            )
            cur.execute(f"DROP TABLE IF EXISTS {final}")
            cur.execute(f"ALTER TABLE {staging} RENAME TO {_q(name)}")
            if name == "users":
                cur.execute(f"ALTER TABLE {final} ADD PRIMARY KEY (user_id)")
            cur.execute(f"ANALYZE {final}")
        manifest["loaded_at"] = datetime.now(timezone.utc).isoformat()
        manifest["loaded_rows"] = counts
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {table_name(settings, MANIFEST_TABLE)} "
            "(id INT PRIMARY KEY CHECK (id = 1), manifest JSONB NOT NULL)"
        )
        cur.execute(
            f"INSERT INTO {table_name(settings, MANIFEST_TABLE)} VALUES (1, %s) "
            "ON CONFLICT (id) DO UPDATE SET manifest = EXCLUDED.manifest",
            (json.dumps(manifest),),
        )
    bar.close()
    return counts


def ingest(
    raw_dir: str | Path,
    settings: Settings,
    *,
    out_dir: str | Path | None = None,
    batch_rows: int = BATCH_ROWS,
    progress: bool = False,
):
    """Validate the raw tables like the embedded path, then load the accepted rows into Postgres.

    Returns (ingest reports, rows loaded per table). Side effects: the rejects files and the
    ingest manifest in `out_dir` (default: settings.ingested_dir), and the raw tables in Postgres.
    Checks Postgres first (creating the database if needed), so a down server fails before the
    validation runs.
    """
    from healthmate_features.raw.ingest import ingest as validate

    ensure_database(settings)
    out_dir = Path(out_dir or settings.ingested_dir)
    reports = validate(raw_dir, out_dir, progress=progress)
    return reports, load_raw(settings, out_dir, batch_rows=batch_rows, progress=progress)


def loaded_manifest(settings: Settings) -> dict | None:
    """The manifest of the ingest currently loaded into Postgres, or None if nothing was loaded."""
    with connect(settings) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (f"{_q(settings.pg_schema)}.{MANIFEST_TABLE}",)).fetchone()[0]
        if not exists:
            return None
        row = conn.execute(f"SELECT manifest FROM {table_name(settings, MANIFEST_TABLE)} WHERE id = 1").fetchone()
    return row[0] if row else None


def check_loaded(raw_dir: str | Path, settings: Settings) -> dict:
    """Return the loaded manifest if `raw_dir`, unchanged, is what Postgres holds; else NotIngestedError."""
    from healthmate_features.raw.ingest import verify_manifest

    raw_dir = Path(raw_dir)
    where = f"Postgres ({settings.pg_host}:{settings.pg_port}/{settings.pg_database}, schema {settings.pg_schema})"
    fix = f"run `healthmate-features ingest --profile production --raw {raw_dir}` first"
    manifest = loaded_manifest(settings)
    if manifest is None:
        raise NotIngestedError(f"no raw data was loaded into {where}; {fix}")
    return verify_manifest(manifest, raw_dir, where=where, fix=fix)


def build_features(
    raw_dir: str | Path,
    settings: Settings,
    *,
    progress: bool = False,
    work_mem: str = "256MB",
) -> dict[str, int]:
    """Compute every feature table inside Postgres from the loaded raw tables; return rows per table.

    Runs PREPARE_SQL and each table's `typed_sql()` from features.py (the SQL the embedded
    profile runs in DuckDB). Side effects: replaces `<schema>.<table>` for every table in
    FEATURE_TABLES in one transaction, each indexed on (user_id, event_timestamp) and event_timestamp.
    Raises NotIngestedError when `raw_dir` is not what was loaded (see `check_loaded`).
    """
    from tqdm import tqdm

    from healthmate_features.features.build import SOURCE_NAMES, render

    check_loaded(raw_dir, settings)
    sources = {placeholder: table_name(settings, name) for placeholder, name in SOURCE_NAMES.items()}
    steps = tqdm(
        total=len(PREPARE_SQL) + 2 * len(FEATURE_TABLES),
        desc="build-features (postgres)",
        unit="step",
        disable=not progress,
    )
    counts: dict[str, int] = {}
    with connect(settings) as conn, conn.transaction(), conn.cursor() as cur:
        cur.execute(f"SELECT pg_advisory_xact_lock({_LOCK})")
        cur.execute("SELECT set_config('work_mem', %s, true)", (work_mem,))
        for sql in PREPARE_SQL:
            cur.execute(render(sql, sources))
            steps.update()
        cur.execute("ANALYZE hm_user_day")
        cur.execute("ANALYZE hm_health_daily")
        for table in FEATURE_TABLES.values():
            steps.set_postfix_str(table.name)
            staging = table_name(settings, f"{table.name}__build")
            cur.execute(f"DROP TABLE IF EXISTS {staging}")
            cur.execute(f"CREATE TABLE {staging} AS {render(table.typed_sql(), sources)}")
            counts[table.name] = cur.rowcount
            steps.update()
        for table in FEATURE_TABLES.values():  # swap all in at the end: still one transaction
            final = table_name(settings, table.name)
            cur.execute(f"DROP TABLE IF EXISTS {final}")
            cur.execute(f"ALTER TABLE {table_name(settings, table.name + '__build')} RENAME TO {_q(table.name)}")
            # (user_id, event_timestamp): point-in-time joins; (event_timestamp): incremental materialization windows
            cur.execute(
                f"CREATE INDEX {_q(table.name + '_user_id_event_timestamp_idx')} ON {final} (user_id, event_timestamp)"
            )
            cur.execute(f"CREATE INDEX {_q(table.name + '_event_timestamp_idx')} ON {final} (event_timestamp)")
            cur.execute(f"ANALYZE {final}")
            steps.update()
        cur.execute("DROP TABLE hm_health_daily")
        cur.execute("DROP TABLE hm_user_day")
    steps.close()
    return counts


def feature_time_range(settings: Settings) -> tuple[datetime, datetime]:
    """Earliest and latest event_timestamp over the feature tables in Postgres."""
    union = " UNION ALL ".join(
        f"SELECT min(event_timestamp) AS lo, max(event_timestamp) AS hi FROM {table_name(settings, name)}"
        for name in FEATURE_TABLES
    )
    with connect(settings) as conn:
        missing = [
            name
            for name in FEATURE_TABLES
            if conn.execute("SELECT to_regclass(%s)", (f"{_q(settings.pg_schema)}.{_q(name)}",)).fetchone()[0] is None
        ]
        if missing:
            raise FeatureRepoError(
                f"feature table(s) {', '.join(missing)} missing in Postgres schema {settings.pg_schema}; "
                "run `healthmate-features build-features --profile production --raw DIR`"
            )
        lo, hi = conn.execute(f"SELECT min(lo), max(hi) FROM ({union}) AS t").fetchone()
    if lo is None:
        raise FeatureRepoError(f"the feature tables in Postgres schema {settings.pg_schema} are empty; rebuild them")
    return lo.astimezone(timezone.utc), hi.astimezone(timezone.utc)
