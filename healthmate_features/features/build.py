"""Build the feature tables: the catalog's SQL, run by the profile's backend over the ingested raw tables.

`build_features(raw_dir, settings)` refuses raw data that was not ingested (or changed since),
then hands PREPARE_SQL and every table's typed SELECT of `features.catalog` to the backend:
DuckDB writing `data/features/<table>.parquet` (embedded), or the very same SQL inside Postgres
replacing `<HM_PG_SCHEMA>.<table>` (production). Either way every table is replaced atomically.
"""

from __future__ import annotations

from pathlib import Path

from healthmate_features.backends import FeatureBuild, backend_for
from healthmate_features.config import Settings
from healthmate_features.features.catalog import FEATURE_TABLES, PREPARE_SQL, SCRATCH_TABLES
from healthmate_features.raw.ingest import check_raw_store

# The raw tables the feature SQL reads, by the placeholder it names them with.
SOURCE_NAMES = {"users": "users", "readings": "health_readings", "events": "app_events"}


def feature_build() -> FeatureBuild:
    """What a build runs: the catalog's preparation SQL and one typed SELECT per feature table."""
    return FeatureBuild(
        prepare_sql=tuple(PREPARE_SQL),
        scratch_tables=SCRATCH_TABLES,
        tables={table.name: table.typed_sql() for table in FEATURE_TABLES.values()},
        sources=SOURCE_NAMES,
    )


def build_features(
    raw_dir: str | Path,
    settings: Settings,
    *,
    progress: bool = False,
    memory_limit: str | None = None,
) -> dict[str, int]:
    """Compute every feature table from the ingest of `raw_dir`; return row counts per table.

    Side effects: replaces every table of FEATURE_TABLES in the profile's feature store
    (`backend.feature_table_label(table)` says where). `memory_limit` bounds DuckDB (embedded).
    Raises NotIngestedError when `raw_dir`, as it is now, is not what the raw tables hold.
    """
    check_raw_store(raw_dir, settings)
    return backend_for(settings).build_feature_tables(feature_build(), progress=progress, memory_limit=memory_limit)
