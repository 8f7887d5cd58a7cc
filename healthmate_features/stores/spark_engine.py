"""Feast's Spark compute engine for materialization, on the session that reads our encrypted Parquet.

Select it in the Spark profile's ``feature_store.yaml`` (with stores.spark_offline's offline store)::

    batch_engine:
      type: healthmate_features.stores.spark_engine.HealthmateSparkComputeEngine
      partitions: 4        # Feast's setting: repartition before the online writes (0: as read)

It is Feast 0.67's `spark.engine` (`SparkComputeEngine`: read, filter, dedup and write nodes; the
online writes run in the executors' Python workers, `mapInArrow`, each worker opening the online
store from the repository config) with one change: Feast starts the engine's session from the
engine's `spark_conf` alone when none is running (`feast materialize` in a fresh process), a
session that cannot decrypt the feature tables. Here every materialization first takes the
offline store's session (`stores.spark_offline.spark_session`: the keyring's encryption settings,
UTC), which Feast's engine then finds active.

The workers open the encrypting online store (stores.encrypted_online) with the keyring of the
profile its config names, from the repository path and HM_* environment the driver has: on
`local[N]` they inherit both; on a cluster, executors need the package, the repository path and
the same HM_* settings (README "Scaling out").
"""

from __future__ import annotations

from typing import Any, Final, Literal

from feast.infra.compute_engines.spark.compute import SparkComputeEngine, SparkComputeEngineConfig

from healthmate_features.stores.spark_offline import spark_session

ENGINE_TYPE: Final = "healthmate_features.stores.spark_engine.HealthmateSparkComputeEngine"


class HealthmateSparkComputeEngineConfig(SparkComputeEngineConfig):
    """The ``batch_engine:`` block for HealthmateSparkComputeEngine: Feast's Spark engine settings."""

    type: Literal["healthmate_features.stores.spark_engine.HealthmateSparkComputeEngine"] = ENGINE_TYPE  # type: ignore[assignment]


class HealthmateSparkComputeEngine(SparkComputeEngine):
    """Feast's Spark compute engine on the offline store's decrypting session (module docstring)."""

    def materialize(self, registry: Any, tasks: Any, **kwargs: Any) -> Any:
        spark_session(self.repo_config)
        return super().materialize(registry, tasks, **kwargs)
