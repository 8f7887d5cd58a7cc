"""The spark profile: raw and feature tables as encrypted Parquet in HM_SPARK_WAREHOUSE, built by Spark SQL.

- raw tables: `<warehouse>/raw/<table>`, the accepted rows of an ingest (validated as on every
  profile, rejects in data/ingested/), copied batch by batch into Parquet Spark reads;
- feature tables: `<warehouse>/features/<table>`, the catalog's SQL run as Spark SQL
  (features.catalog's `spark` Dialect) on HM_SPARK_MASTER, written by the executors;
- Feast: `feature_store.spark.yaml` (Spark offline store and compute engine, the Postgres SQL
  registry, the encrypted Redis online store); SQL store, job broker and locks as on production
  (backends.production.PostgresRedisBackend).

Every file is Parquet encrypted under the keyring's data keys (crypto.spark_kms): Spark writes it
through the session's settings (backends.spark_session), pyarrow through `write_kms_parquet`.

Each table is a directory name that is a symbolic link to its current generation
(`<table>@<ns>/`, the Parquet files of one write): a write goes to a new generation and the link
is replaced by a rename, so readers see the old table or the new one, and an interrupted write
leaves the old one in place (its half-written generation is removed by the next write).
Feature builds are full rebuilds (README "Scaling out").
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from healthmate_features.backends import postgres
from healthmate_features.backends.base import INGEST_MANIFEST, BuildCounts, FeatureBuild, RawTable
from healthmate_features.backends.production import PostgresRedisBackend
from healthmate_features.backends.spark_session import require_pyspark, spark_session
from healthmate_features.errors import FeatureRepoError, NotIngestedError
from healthmate_features.util.files import atomic_write_text
from healthmate_features.util.spark_sql import spark_sql

if TYPE_CHECKING:
    from feast.data_source import DataSource
    from pyspark.sql import DataFrame, SparkSession

RAW, FEATURES = "raw", "features"  # the warehouse's two areas
# <table>@<ns>: a generation of a table (not `.` or `_`: Spark ignores paths named so)
GENERATION = "@"


class SparkBackend(PostgresRedisBackend):
    """Spark (HM_SPARK_MASTER) over Parquet in HM_SPARK_WAREHOUSE; Postgres (HM_PG_*) and Redis (HM_REDIS_URL)."""

    name = "spark"
    feature_store_file = "feature_store.spark.yaml"
    sql_dialect = "spark"

    # --- messages ----------------------------------------------------------------------------

    def describe(self) -> str:
        s = self.settings
        return f"{super().describe()}, spark {s.spark_master} (warehouse {s.spark_warehouse_path})"

    # --- Spark -------------------------------------------------------------------------------

    def spark(self) -> SparkSession:
        """The profile's SparkSession (backends.spark_session), started on first use."""
        return spark_session(self.settings, self.keyring())

    def feast_variables(self) -> dict[str, str]:
        """Production's placeholders, and the cluster and warehouse of feature_store.spark.yaml."""
        s = self.settings
        return {
            **super().feast_variables(),
            "HM_SPARK_MASTER": s.spark_master,
            "HM_SPARK_WAREHOUSE": str(s.spark_warehouse_path),
            "HM_SPARK_DRIVER_MEMORY": s.spark_driver_memory,
        }

    def batch_source(self, table: str, *, description: str) -> DataSource:
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        return SparkSource(
            name=f"{table}_source",
            timestamp_field="event_timestamp",
            description=description,
            path=str(self._path(FEATURES, table)),
            file_format="parquet",
        )

    # --- tables as generations ---------------------------------------------------------------

    def _path(self, area: str, table: str) -> Path:
        return self.settings.spark_warehouse_path / area / table

    def _exists(self, area: str, table: str) -> bool:
        return self._path(area, table).exists()

    def _publish(self, area: str, table: str, generation: Path) -> None:
        """Make `generation` the table `table`: replace the link by a rename, then drop the old generation
        and any left by interrupted writes."""
        link = self._path(area, table)
        tmp = link.with_name(f"{table}{GENERATION}link-{time.time_ns()}")
        os.symlink(generation.name, tmp)
        os.replace(tmp, link)
        for old in link.parent.glob(f"{table}{GENERATION}*"):
            if old.name != generation.name:
                shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()

    def _generation(self, area: str, table: str) -> Path:
        """A new, empty generation directory's path for `table` (not created)."""
        parent = self.settings.spark_warehouse_path / area
        parent.mkdir(parents=True, exist_ok=True)
        return parent / f"{table}{GENERATION}{time.time_ns()}"

    def _write(self, area: str, table: str, frame: DataFrame) -> int:
        """Write `frame` (encrypted, by the executors) as the new generation of `table`; its row count."""
        generation = self._generation(area, table)
        frame.write.parquet(str(generation))
        rows = frame.sparkSession.read.parquet(str(generation)).count()
        self._publish(area, table, generation)
        return rows

    def _read(self, spark: SparkSession, area: str, table: str) -> DataFrame:
        return spark.read.parquet(str(self._path(area, table)))

    # --- raw tables --------------------------------------------------------------------------

    def prepare_raw_store(self) -> None:
        """PySpark must be installed, and the SQL store's database exist (it holds the data keys)."""
        require_pyspark()
        postgres.ensure_database(self.settings)

    def raw_table_label(self, table: str) -> str:
        return str(self._path(RAW, table))

    def store_raw(
        self, ingested_dir: Path, tables: Sequence[RawTable], *, batch_rows: int = 100_000, progress: bool = False
    ) -> dict[str, int]:
        """Copy the accepted rows of the ingest in `ingested_dir` into `<warehouse>/raw/<table>` (batches of
        `batch_rows`, re-encrypted for Spark); record its manifest in `<warehouse>/raw/_ingest.json`."""
        import pyarrow as pa
        from tqdm import tqdm

        from healthmate_features.crypto import open_parquet
        from healthmate_features.crypto.spark_kms import write_kms_parquet

        manifest_path = Path(ingested_dir) / INGEST_MANIFEST
        if not manifest_path.exists():
            raise NotIngestedError(
                f"{ingested_dir} holds no ingest ({manifest_path} is missing); run `{self.command('ingest --raw DIR')}`"
            )
        manifest = json.loads(manifest_path.read_text())
        present = [t for t in tables if t.name in manifest["tables"]]
        total = sum(manifest["tables"][t.name]["accepted"] for t in present)
        bar = tqdm(total=total, desc="copy into the spark warehouse", unit="row", unit_scale=True, disable=not progress)
        counts: dict[str, int] = {}
        for table in present:
            source = open_parquet(self.keyring, Path(ingested_dir) / f"{table.name}.parquet")
            columns = [c for c, _ in table.columns]
            batches = source.iter_batches(batch_size=batch_rows, columns=columns)
            schema = pa.schema([source.schema_arrow.field(c) for c in columns])
            reader = pa.RecordBatchReader.from_batches(schema, batches)
            generation = self._generation(RAW, table.name)
            generation.mkdir()
            counts[table.name] = write_kms_parquet(self.keyring(), reader, generation / "part-00000.parquet")
            self._publish(RAW, table.name, generation)
            bar.update(counts[table.name])
        bar.close()
        manifest["loaded_at"] = datetime.now(timezone.utc).isoformat()
        manifest["loaded_rows"] = counts
        self._write_manifest(manifest)
        return counts

    def _write_manifest(self, manifest: Mapping[str, Any]) -> None:
        path = self.settings.spark_warehouse_path / RAW / INGEST_MANIFEST
        atomic_write_text(path, json.dumps(dict(manifest), indent=2), durable=True)

    def loaded_ingest(self, raw_dir: Path) -> tuple[dict[str, Any], str, str]:
        where = f"the Spark warehouse {self.settings.spark_warehouse_path / RAW}"
        fix = f"run `{self.command(f'ingest --raw {raw_dir}')}` first"
        path = self.settings.spark_warehouse_path / RAW / INGEST_MANIFEST
        if not path.exists():
            raise NotIngestedError(f"no raw data was loaded into {where}; {fix}")
        return json.loads(path.read_text()), where, fix

    def erase_raw_rows(
        self,
        tables: Sequence[str],
        user_id: int,
        *,
        manifest: Mapping[str, Any] | None = None,
        count_only: bool = False,
    ) -> dict[str, int]:
        """Rewrite each raw table holding the user's rows without them (a new generation each); record `manifest`."""
        counts = self._delete_rows(RAW, dict.fromkeys(tables, f"user_id = {int(user_id)}"), count_only=count_only)
        if manifest is not None and not count_only and self._exists(RAW, INGEST_MANIFEST):
            self._write_manifest(manifest)
        return counts

    def expire_raw_rows(
        self,
        time_columns: Mapping[str, str],
        cutoff: datetime,
        *,
        manifest: Mapping[str, Any] | None = None,
        count_only: bool = False,
    ) -> dict[str, int]:
        """Rewrite each raw table without its rows older than `cutoff`, then record `manifest`."""
        at = _timestamp(cutoff)
        wheres = {t: f"`{c}` < {at}" for t, c in time_columns.items()}
        counts = self._delete_rows(RAW, wheres, count_only=count_only)
        if manifest is not None and not count_only and self._exists(RAW, INGEST_MANIFEST):
            self._write_manifest(manifest)
        return counts

    def _delete_rows(self, area: str, wheres: Mapping[str, str], *, count_only: bool) -> dict[str, int]:
        """Count the rows matching each table's condition (Spark SQL of our own making); rewrite the
        table without them unless `count_only`. Tables that do not exist are skipped."""
        counts: dict[str, int] = {}
        present = {t: w for t, w in wheres.items() if self._exists(area, t)}
        if not present:
            return counts
        spark = self.spark()
        for table, where in present.items():
            frame = self._read(spark, area, table)
            counts[table] = frame.where(where).count()
            if counts[table] and not count_only:
                self._write(area, table, frame.where(f"({where}) IS NOT TRUE"))
        return counts

    # --- feature tables ----------------------------------------------------------------------

    def build_feature_tables(
        self, build: FeatureBuild, *, progress: bool = False, memory_limit: str | None = None
    ) -> BuildCounts:
        """Run the build as Spark SQL over the raw tables; write `<warehouse>/features/<table>` (a new generation each).

        Always a full build: the fingerprints are computed (the day grid needs them), the state is
        not kept. Scratch tables are cached on the executors (memory and disk) for the build and
        released after it; nothing is collected on the driver but row counts. `memory_limit` is
        DuckDB's and unused (HM_SPARK_DRIVER_MEMORY bounds the driver).
        """
        from tqdm import tqdm

        spark = self.spark().newSession()  # the build's own temporary views and settings
        raw_names = {}
        for placeholder, raw in build.sources.items():
            if not self._exists(RAW, raw):
                raise NotIngestedError(
                    f"raw table {raw} is missing in {self._path(RAW, raw).parent}; "
                    f"run `{self.command('ingest --raw DIR')}`"
                )
            self._read(spark, RAW, raw).createOrReplaceTempView(f"raw_{raw}")
            raw_names[placeholder] = f"raw_{raw}"
        steps = tqdm(
            total=len(build.fingerprint_sql) + len(build.prepare_sql) + len(build.tables),
            desc="build-features (spark)",
            unit="step",
            disable=not progress,
        )
        cached = [*build.state_tables.values(), "hm_carry", *build.scratch_tables]
        counts: dict[str, int] = {}
        try:
            for sql in build.setup_sql:
                spark.sql(sql)
            for sql in build.fingerprint_sql:
                spark.sql(sql.format(**raw_names))
                steps.update()
            for sql in build.full_sql:
                spark.sql(sql)
            for sql in build.prepare_sql:
                spark.sql(sql.format(**raw_names))
                steps.update()
            for table, sql in build.tables.items():
                steps.set_postfix_str(table)
                counts[table] = self._write(FEATURES, table, spark.sql(sql.format(**raw_names)))
                steps.update()
        finally:
            for name in cached:
                spark.sql(f"UNCACHE TABLE IF EXISTS {name}")
            steps.close()
        return BuildCounts(counts, incremental=False)

    def ensure_feature_table(self, table: str, schema: Any) -> None:
        """An empty `<warehouse>/features/<table>` with `schema` (one encrypted Parquet file) unless it exists."""
        from healthmate_features.crypto.spark_kms import write_kms_parquet

        if self._exists(FEATURES, table):
            return
        generation = self._generation(FEATURES, table)
        generation.mkdir()
        write_kms_parquet(self.keyring(), schema.empty_table(), generation / "part-00000.parquet")
        self._publish(FEATURES, table, generation)

    def feature_table_label(self, table: str) -> str:
        return str(self._path(FEATURES, table))

    def _require_features(self, tables: Sequence[str]) -> None:
        missing = [t for t in tables if not self._exists(FEATURES, t)]
        if missing:
            raise FeatureRepoError(
                f"feature table(s) {', '.join(missing)} missing in {self.settings.spark_warehouse_path / FEATURES}; "
                f"run `{self.command('build-features --raw DIR')}`"
            )

    def feature_time_range(self, tables: Sequence[str]) -> tuple[datetime, datetime]:
        self._require_features(tables)
        spark = self.spark()
        lo: int | None = None
        hi: int | None = None
        for table in tables:
            row = (
                self._read(spark, FEATURES, table)
                .selectExpr("unix_micros(min(event_timestamp)) AS lo", "unix_micros(max(event_timestamp)) AS hi")
                .first()
            )
            if row is not None and row["lo"] is not None:
                lo = row["lo"] if lo is None else min(lo, row["lo"])
                hi = row["hi"] if hi is None else max(hi, row["hi"])
        if lo is None or hi is None:
            raise FeatureRepoError(
                f"the feature tables in {self.settings.spark_warehouse_path / FEATURES} are empty; rebuild them"
            )
        return _from_micros(lo), _from_micros(hi)

    def erase_feature_rows(self, tables: Sequence[str], user_id: int, *, count_only: bool = False) -> dict[str, int]:
        """Rewrite each feature table holding the user's rows without them (a new generation each)."""
        return self._delete_rows(FEATURES, dict.fromkeys(tables, f"user_id = {int(user_id)}"), count_only=count_only)

    def expire_feature_rows(
        self, tables: Sequence[str], cutoff: datetime, *, count_only: bool = False
    ) -> dict[str, int]:
        """Rewrite each feature table without its rows with event_timestamp before `cutoff`."""
        where = f"event_timestamp < {_timestamp(cutoff)}"
        return self._delete_rows(FEATURES, dict.fromkeys(tables, where), count_only=count_only)

    def query_feature_tables(self, sql: str, *tables: str) -> list[tuple[Any, ...]]:
        """Run the query (the SQL DuckDB and Postgres share, as Spark SQL: util.spark_sql) in Spark;
        only its result comes to the driver."""
        self._require_features(tables)
        spark = self.spark().newSession()
        names = []
        for i, table in enumerate(tables):
            self._read(spark, FEATURES, table).createOrReplaceTempView(f"hm_query_{i}")
            names.append(f"hm_query_{i}")
        return [tuple(row) for row in spark.sql(spark_sql(sql.format(*names))).collect()]


def _timestamp(moment: datetime) -> str:
    """A UTC timestamp literal of Spark SQL."""
    return f"TIMESTAMP '{moment.astimezone(timezone.utc).isoformat()}'"


def _from_micros(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=micros)
