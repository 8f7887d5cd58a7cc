"""Feast's Spark offline store over the package's encrypted Parquet, with its Spark-path defects fixed.

Select it in the Spark profile's ``feature_store.yaml``::

    offline_store:
      type: healthmate_features.stores.spark_offline.HealthmateSparkOfflineStore
      spark_conf:                 # Feast's own overlay for a session this store starts
        spark.master: "local[2]"
        spark.driver.memory: 1g

`HealthmateSparkOfflineStore` is Feast 0.67's `SparkOfflineStore` (same SQL, same point-in-time
semantics, `SparkSource` batch sources) with these changes, each tested in
tests/integration/test_spark_store.py:

- **Encrypted sources.** The feature tables are Parquet encrypted through the keyring's KMS client
  (crypto.spark_kms). A session this store starts carries `spark_encryption_conf` (the key list,
  the KMS client jar compiled once into `<repo>/data/spark`); an already running session must
  carry it too, else ConfigError naming the fix (Feast would report a missing file).
  `feast apply` reads every source's schema, and `offline_write_batch` (a push's offline rows, and
  the empty batch `apply` writes so the push table exists) reads its table's: both run on that
  session too (Feast starts a plain one).
- **Python workers.** PySpark starts executors' Python workers with `python3` from PATH unless
  PYSPARK_PYTHON is set: Feast's compute engine then fails with "No module named 'feast'" outside
  the virtualenv's PATH. A session this store starts uses this interpreter (or `spark.pyspark.python`).
- **UTC.** Feast writes its time bounds as UTC wall-clock strings (`TIMESTAMP('2025-01-01
  00:00:00')`) that Spark reads in the session time zone, and reads entity-frame minima back the
  same way: under any zone but UTC, windows shift by the offset. The store sets the session's
  `spark.sql.session.timeZone` to UTC.
- **Entity frames through pandas once.** Feast converts a pandas entity frame row by row
  (`createDataFrame(pandas)` without Arrow: every row a Python object on the driver) and rewrites
  the caller's timestamp column in place. Here the frame becomes one Arrow table (the only pandas
  pass; the caller's frame is left as it was), sent to Spark as Arrow batches.
- **Entity order.** Feast's final `LEFT JOIN`s return rows in whatever order the shuffle left them.
  The entity rows carry their position (`__hm_row`), the result is sorted by it: rows come back in
  entity order, duplicates included, as from the embedded profile's store.
- **Arrow out.** Feast's `to_arrow` is `toPandas()` then `Table.from_pandas` (integer columns with
  nulls become floats, two copies on the driver); here it is Spark 4's `DataFrame.toArrow()`, and
  `to_df` converts that table once. With a `staging_location`, Feast's `to_arrow` instead has
  Spark write the result there and reads it back with plain pyarrow, which cannot open the
  encrypted files Spark writes: here `to_arrow` never stages (`to_remote_storage` still does).
- **Pushed batches from memory.** Feast's `offline_write_batch` wrote each pushed batch to a
  plaintext Parquet file in the temporary directory (and printed its name); here the batch goes to
  Spark as Arrow and is appended encrypted; an empty batch writes nothing.
- **Driver memory.** A session this store starts gets a JVM with the config's `spark.driver.memory`
  (`restart_jvm_unless_it_fits`), and a driver out of memory exits: `to_arrow` then raises
  ConfigError naming the setting instead of waiting for ever.

Spark-side results (`to_spark_df`, `persist`, materialization) never reach the driver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from feast.infra.offline_stores.contrib.spark_offline_store.spark import (
    SparkOfflineStore,
    SparkOfflineStoreConfig,
    SparkRetrievalJob,
)
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.registry.base_registry import BaseRegistry
from feast.repo_config import RepoConfig
from pydantic import StrictStr

from healthmate_features._feast import infer_event_timestamp_from_entity_df
from healthmate_features.backends import repo_keyring
from healthmate_features.backends.spark_session import (
    driver_out_of_memory,
    forget_dead_jvm,
    jvm_exited,
    prepare_launch,
)
from healthmate_features.crypto.spark_kms import CRYPTO_FACTORY_CLASS, spark_encryption_conf, spark_kms_jar
from healthmate_features.errors import ConfigError, EntityFrameError

STORE_TYPE: Final = "healthmate_features.stores.spark_offline.HealthmateSparkOfflineStore"
ROW: Final = "__hm_row"  # position of the entity row: restores entity order
_FEAST_SESSION_CONF: Final = {"spark.sql.parser.quotedRegexColumnNames": "true"}  # what Feast's SQL needs


class HealthmateSparkOfflineStoreConfig(SparkOfflineStoreConfig):
    """The ``offline_store:`` block for HealthmateSparkOfflineStore: Feast's Spark settings, plus
    where the KMS client jar is cached (default `<repo>/data/spark`; on a cluster, a path every
    executor has)."""

    type: Literal["healthmate_features.stores.spark_offline.HealthmateSparkOfflineStore"] = STORE_TYPE
    jar_dir: StrictStr | None = None


def spark_session(config: RepoConfig) -> Any:
    """The SparkSession the store (and Feast's Spark code after it) runs on, ready for encrypted Parquet.

    The active session when there is one (ConfigError when it was built without the keyring's
    encryption settings); else a new one from the config's `spark_conf` plus `spark_encryption_conf`
    of the repository's keyring (which compiles the KMS client jar on first use). Side effect: the
    session's time zone is set to UTC and Feast's `quotedRegexColumnNames` to true; starting a
    session sets PYSPARK_PYTHON to this interpreter when it is unset (the executors' Python workers),
    and first shuts down the process's JVM if its heap is not the config's spark.driver.memory."""
    from pyspark.sql import SparkSession

    forget_dead_jvm()
    session = SparkSession.getActiveSession()
    if session is None:
        options = config.offline_store
        repo = Path(config.repo_path) if config.repo_path is not None else Path.cwd()
        jar_dir = Path(options.jar_dir) if getattr(options, "jar_dir", None) else repo / "data" / "spark"
        keyring = repo_keyring(str(repo))
        settings = dict(options.spark_conf or {})
        settings.update(
            spark_encryption_conf(keyring, jar=spark_kms_jar(jar_dir if jar_dir.is_absolute() else repo / jar_dir))
        )
        settings["spark.sql.session.timeZone"] = "UTC"
        settings = prepare_launch(settings)
        builder = SparkSession.builder
        for key, value in settings.items():
            builder = builder.config(key, value)
        session = builder.getOrCreate()
    elif session.conf.get("spark.hadoop.parquet.crypto.factory.class", None) != CRYPTO_FACTORY_CLASS:
        raise ConfigError(
            "the running SparkSession has no Parquet encryption settings, so it cannot read the encrypted "
            "feature tables; build it with crypto.spark_kms.spark_encryption_conf(keyring, jar=...) or stop it "
            "and let the offline store start its own"
        )
    session.conf.set("spark.sql.session.timeZone", "UTC")
    for key, value in _FEAST_SESSION_CONF.items():
        session.conf.set(key, value)
    return session


class HealthmateSparkRetrievalJob(SparkRetrievalJob):
    """Feast's SparkRetrievalJob whose result is in entity order and leaves Spark as Arrow (module docstring)."""

    def __init__(self, job: SparkRetrievalJob, *, config: RepoConfig, metadata: RetrievalMetadata | None) -> None:
        super().__init__(
            spark_session=job.spark_session,
            query=job.query,
            full_feature_names=job.full_feature_names,
            config=config,
            on_demand_feature_views=job.on_demand_feature_views,
            metadata=metadata,
        )

    def to_spark_df(self) -> Any:
        """The result as a lazy Spark DataFrame (nothing runs until an action); entity order when
        it is a point-in-time join."""
        frame = super().to_spark_df()
        if ROW in frame.columns:
            frame = frame.orderBy(ROW).drop(ROW)
        return frame

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        try:
            return self.to_spark_df().toArrow()
        except Exception as error:  # py4j's, Arrow's or a socket's, by where the JVM's exit caught the transfer
            from pyspark.errors import PySparkException

            # A JVM that answered with an error (PySpark's, or py4j's Py4JJavaError carrying the Java
            # exception) is alive: no waiting up to 10 s for it to exit then.
            answered = isinstance(error, PySparkException) or getattr(error, "java_exception", None) is not None
            if not answered and jvm_exited(wait=10):
                raise driver_out_of_memory(self._config.offline_store.spark_conf or {}) from None
            raise

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout=timeout).to_pandas(timestamp_as_object=False)


class HealthmateSparkOfflineStore(SparkOfflineStore):
    """Feast's Spark offline store over encrypted Parquet, entity order kept (module docstring)."""

    def validate_data_source(self, config: RepoConfig, data_source: Any) -> None:
        """Feast's check (`feast apply` reads each SparkSource's schema) on a session that decrypts."""
        spark_session(config)
        super().validate_data_source(config, data_source)

    def get_table_column_names_and_types_from_data_source(self, config: RepoConfig, data_source: Any) -> Any:
        spark_session(config)
        return super().get_table_column_names_and_types_from_data_source(config, data_source)

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[Any],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str | Any | None,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
        **kwargs: Any,
    ) -> RetrievalJob:
        session = spark_session(config)
        if isinstance(entity_df, pd.DataFrame):
            entity_df = spark_entity_frame(session, entity_df)
        job = SparkOfflineStore.get_historical_features(
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
        assert isinstance(job, SparkRetrievalJob)
        metadata = job.metadata
        if metadata is not None:
            metadata = RetrievalMetadata(
                features=metadata.features,
                keys=[key for key in metadata.keys if key != ROW],
                min_event_timestamp=metadata.min_event_timestamp,
                max_event_timestamp=metadata.max_event_timestamp,
            )
        return HealthmateSparkRetrievalJob(job, config=config, metadata=metadata)

    @staticmethod
    def pull_latest_from_table_or_query(config: RepoConfig, *args: Any, **kwargs: Any) -> RetrievalJob:
        """Feast's (the latest row per entity in a window: materialization) on the store's session."""
        spark_session(config)
        return _ours(SparkOfflineStore.pull_latest_from_table_or_query(config, *args, **kwargs), config)

    @staticmethod
    def pull_all_from_table_or_query(config: RepoConfig, *args: Any, **kwargs: Any) -> RetrievalJob:
        """Feast's (every row in a window) on the store's session."""
        spark_session(config)
        return _ours(SparkOfflineStore.pull_all_from_table_or_query(config, *args, **kwargs), config)

    @staticmethod
    def offline_write_batch(config: RepoConfig, feature_view: Any, table: pa.Table, progress: Any) -> None:
        """Append `table` to the view's SparkSource files (pushes, `write_to_offline_store`), from memory.

        Feast's writes the batch to a plaintext Parquet file in the temporary directory first
        (health readings, unencrypted, on the driver's disk) and prints that file's name on stdout;
        here the Arrow table goes to Spark as Arrow and Spark appends it under the session's
        encryption. An empty batch (`ensure_push_tables`) checks the columns and writes nothing
        (Feast's appended an empty file each time). It runs on the store's decrypting session: in a
        process with none yet, Feast started a plain one that could not read the encrypted table.
        Other sources (tables, queries; Iceberg is not a SparkSource): Feast's, on that session too."""
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
        from pyspark.sql.functions import col

        session = spark_session(config)
        source = feature_view.batch_source
        if not isinstance(source, SparkSource) or not source.path:
            SparkOfflineStore.offline_write_batch(config, feature_view, table, progress)
            return
        existing = session.read.format(source.file_format).load(source.path)
        columns = existing.columns
        if columns != table.column_names:
            raise EntityFrameError(
                f"a batch for feature view {feature_view.name!r} has the columns {table.column_names}; "
                f"its source {source.name!r} has {columns} (in this order): select and order the batch's columns so"
            )
        if table.num_rows == 0:
            return
        types = dict(existing.dtypes)
        batch = session.createDataFrame(table).select([col(name).cast(types[name]).alias(name) for name in columns])
        batch.write.format(source.file_format).mode("append").save(source.path)
        if progress is not None:
            progress(table.num_rows)


def _ours(job: RetrievalJob, config: RepoConfig) -> HealthmateSparkRetrievalJob:
    assert isinstance(job, SparkRetrievalJob)
    return HealthmateSparkRetrievalJob(job, config=config, metadata=job.metadata)


def spark_entity_frame(session: Any, entity_df: pd.DataFrame) -> Any:
    """A pandas entity frame as a Spark DataFrame: one Arrow conversion, the event timestamp as UTC
    microseconds (naive = UTC, strings parsed), the row position in `ROW`. The caller's frame is not changed."""
    if ROW in entity_df.columns:
        raise EntityFrameError(f"entity frame has a column named {ROW!r}, which the Spark store uses; rename it")
    timestamp = infer_event_timestamp_from_entity_df(dict(zip(entity_df.columns, entity_df.dtypes, strict=True)))
    table = pa.Table.from_pandas(entity_df, preserve_index=False)
    column = table.column(timestamp)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        try:
            column = pa.array(pd.to_datetime(column.to_pandas(), utc=True, format="ISO8601"))
        except ValueError:
            raise EntityFrameError(
                f"entity frame column {timestamp!r} holds strings that are not ISO 8601 times; "
                "pass datetimes or ISO 8601 strings"
            ) from None
    if not pa.types.is_timestamp(column.type):
        raise EntityFrameError(
            f"entity frame column {timestamp!r} has type {column.type}, not a timestamp; "
            "pass the prediction time per row as a datetime"
        )
    if column.type.tz is None:
        column = pc.assume_timezone(column, "UTC")
    try:
        column = column.cast(pa.timestamp("us", tz="UTC"))  # Spark's precision
    except pa.ArrowInvalid:
        finer = int(
            pc.sum(
                pc.not_equal(
                    pc.cast(column, pa.int64()), pc.multiply(pc.divide(pc.cast(column, pa.int64()), 1000), 1000)
                )
            ).as_py()
        )
        raise EntityFrameError(
            f"entity frame column {timestamp!r} has {finer} of {len(column)} times finer than a microsecond, "
            "which Spark cannot hold; floor them (e.g. .dt.floor('us')) or use the embedded profile's store"
        ) from None
    table = table.set_column(table.schema.get_field_index(timestamp), timestamp, column)
    table = table.append_column(ROW, pa.array(range(table.num_rows), pa.int64()))
    return session.createDataFrame(table)
