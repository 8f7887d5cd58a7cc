"""Build the feature tables: the catalog's SQL, run by the profile's backend over the ingested raw tables.

`build_features(raw_dir, settings)` refuses raw data that was not ingested (or changed since),
then hands the catalog's SQL (features.catalog) and the incremental plan (features.incremental)
to the backend: DuckDB writing `data/features/<table>.parquet` (embedded), the very same SQL
inside Postgres replacing rows of `<HM_PG_SCHEMA>.<table>` (production), or as Spark SQL
writing Parquet directories in HM_SPARK_WAREHOUSE (spark). A build rebuilds only
the rows that the raw data changed since the last build can alter (`full=True`: all of them);
either way the tables change atomically.
"""

from __future__ import annotations

from pathlib import Path

from healthmate_features.backends import BuildCounts, FeatureBuild, backend_for
from healthmate_features.config import Settings
from healthmate_features.features import incremental, pushed
from healthmate_features.features.catalog import DIALECTS, FEATURE_TABLES, PREPARE_SQL, SCRATCH_TABLES
from healthmate_features.raw.ingest import check_raw_store

# The raw tables the feature SQL reads, by the placeholder it names them with.
SOURCE_NAMES = {"users": "users", "readings": "health_readings", "events": "app_events"}


def feature_build(dialect: str = "duckdb", *, full: bool = False) -> FeatureBuild:
    """What a build runs in engine `dialect`: fingerprints, the incremental plan, the catalog's SQL,
    every statement in that engine's SQL (`Dialect.translate`)."""
    d = DIALECTS[dialect]
    sql = d.translate
    return FeatureBuild(
        setup_sql=d.setup_sql,
        prepare_sql=tuple(sql(s) for s in PREPARE_SQL),
        scratch_tables=SCRATCH_TABLES,
        tables={table.name: sql(table.typed_sql()) for table in FEATURE_TABLES.values()},
        sources=SOURCE_NAMES,
        fingerprint_sql=tuple(sql(s) for s in incremental.fingerprint_sql(d)),
        full_sql=tuple(sql(s) for s in incremental.FULL_SQL),
        incremental_sql=tuple(sql(s) for s in incremental.INCREMENTAL_SQL),
        needs_full_sql=sql(incremental.NEEDS_FULL_SQL),
        incremental_sources=incremental.INCREMENTAL_SOURCES,
        affected={name: sql(incremental.affected_rows(name)) for name in FEATURE_TABLES},
        state_tables=incremental.STATE_TABLES,
        version=incremental.build_version(d),
        full=full,
        grid_sql=sql(incremental.GRID_SQL),
    )


def keep_raw_fingerprints(settings: Settings) -> None:
    """Fingerprint the raw tables the last ingest wrote and keep them for the next build (README
    "Incremental builds"): `healthmate-features ingest` calls it, so a build does not read every
    raw row again to find what changed. Side effect: the fingerprint tables next to the build's
    state, replaced (atomically), stamped with the ingest they describe."""
    backend = backend_for(settings)
    backend.keep_raw_fingerprints(feature_build(backend.sql_dialect))


def build_features(
    raw_dir: str | Path,
    settings: Settings,
    *,
    full: bool = False,
    progress: bool = False,
    memory_limit: str | None = None,
) -> BuildCounts:
    """Bring every feature table up to date with the ingest of `raw_dir`; return row counts per table.

    Rebuilds only the rows the raw data changed since the last build can alter (README
    "Incremental builds"); `full` rebuilds everything. The counts say whether it was
    `incremental` and for how many `users`. Side effects: replaces those rows of every table of
    FEATURE_TABLES in the profile's feature store (`backend.feature_table_label(table)` says
    where) atomically, and the build's state next to them. `memory_limit` bounds DuckDB (embedded).
    Raises NotIngestedError when `raw_dir`, as it is now, is not what the raw tables hold.
    """
    check_raw_store(raw_dir, settings)
    backend = backend_for(settings)
    build = feature_build(backend.sql_dialect, full=full)
    counts = backend.build_feature_tables(build, progress=progress, memory_limit=memory_limit)
    backend.ensure_feature_table(pushed.PUSHED_TABLE, pushed.offline_schema())  # Feast's source checks read it
    return counts
