"""Run the feature SQL of `features.py` in DuckDB over ingested tables; write the feature tables.

`build_features(raw_dir, settings)` refuses raw data that was not ingested (or changed since),
then writes one Parquet file per feature table into `settings.features_dir`, each replaced
atomically. The same SQL runs inside Postgres in the production profile.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import duckdb

from healthmate_features.config import Settings
from healthmate_features.features.catalog import FEATURE_TABLES, PREPARE_SQL
from healthmate_features.raw.ingest import check_ingested

SOURCE_NAMES = {"users": "users", "readings": "health_readings", "events": "app_events"}


def render(sql: str, tables: dict[str, str]) -> str:
    """Substitute the engine's table names for the `{users}`, `{readings}`, `{events}` placeholders."""
    return sql.format(**tables)


def build_features(
    raw_dir: str | Path,
    settings: Settings,
    *,
    progress: bool = False,
    memory_limit: str | None = None,
) -> dict[str, int]:
    """Compute every feature table from the ingest of `raw_dir`; return row counts per table.

    Side effects: writes `<features_dir>/<table>.parquet` for each table in FEATURE_TABLES.
    Raises NotIngestedError when `raw_dir` was not ingested into `settings.ingested_dir`.
    """
    check_ingested(raw_dir, settings.ingested_dir)
    out_dir = settings.features_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET preserve_insertion_order = false")
        if memory_limit:
            con.execute(f"SET memory_limit = '{memory_limit}'")
        tables = {}
        for placeholder, name in SOURCE_NAMES.items():
            path = settings.ingested_dir / f"{name}.parquet"
            con.execute(f"CREATE VIEW raw_{name} AS SELECT * FROM read_parquet('{path}')")
            tables[placeholder] = f"raw_{name}"
        from tqdm import tqdm

        steps = tqdm(
            total=len(PREPARE_SQL) + len(FEATURE_TABLES), desc="build-features", unit="step", disable=not progress
        )
        for sql in PREPARE_SQL:
            con.execute(render(sql, tables))
            steps.update()
        counts = {}
        for table in FEATURE_TABLES.values():
            steps.set_postfix_str(table.name)
            dest = out_dir / f"{table.name}.parquet"
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=out_dir)
            os.close(fd)
            try:
                con.execute(f"COPY ({render(table.typed_sql(), tables)}) TO '{tmp}' (FORMAT parquet, COMPRESSION zstd)")
                counts[table.name] = con.execute(f"SELECT count(*) FROM read_parquet('{tmp}')").fetchone()[0]
                os.replace(tmp, dest)
            finally:
                Path(tmp).unlink(missing_ok=True)
            steps.update()
        steps.close()
    finally:
        con.close()
    return counts
