"""One Backend per deployment profile, chosen once from Settings.

`backend_for(settings)` returns the profile's Backend (the same object for equal settings):
Feast configuration, the SQL store, raw and feature table I/O, the servers and their failures.
Nothing outside this package branches on the profile; a new profile is a new Backend here.

    embedded    EmbeddedBackend    files under data/, DuckDB, SQLite; no server
    production  ProductionBackend  Postgres (tables, Feast registry, SQL store), Redis (online store)
    spark       SparkBackend       Spark SQL over Parquet in HM_SPARK_WAREHOUSE; Postgres and Redis as production
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from healthmate_features.backends.base import Backend, Broker, BuildCounts, FeatureBuild, RawTable
from healthmate_features.backends.embedded import EmbeddedBackend
from healthmate_features.backends.production import ProductionBackend
from healthmate_features.backends.spark import SparkBackend
from healthmate_features.config import Settings
from healthmate_features.errors import ConfigError

if TYPE_CHECKING:
    from healthmate_features.backends.sqlstore import SqlStore
    from healthmate_features.crypto import Keyring

BACKENDS: dict[str, type[Backend]] = {cls.name: cls for cls in (EmbeddedBackend, ProductionBackend, SparkBackend)}

__all__ = [
    "BACKENDS",
    "Backend",
    "EmbeddedBackend",
    "Broker",
    "BuildCounts",
    "FeatureBuild",
    "ProductionBackend",
    "RawTable",
    "SparkBackend",
    "backend_for",
    "open_sql_store",
    "repo_keyring",
]


@functools.lru_cache(maxsize=64)
def backend_for(settings: Settings) -> Backend:
    """The Backend of the settings' profile. Raises ConfigError for an unknown profile."""
    try:
        cls = BACKENDS[settings.profile]
    except KeyError:
        raise ConfigError(
            f"unknown profile {settings.profile!r} (HM_PROFILE); use one of {', '.join(BACKENDS)}"
        ) from None
    return cls(settings)


def open_sql_store(settings: Settings, *, migrate: bool = True) -> SqlStore:
    """The SQL store of the settings' profile (tracking, API keys, audit), migrated unless `migrate=False`.

    Embedded: SQLite at `settings.sql_path` (data/healthmate.db, created with its directory).
    Production and spark: Postgres from the HM_PG_* settings, tables in HM_PG_SCHEMA.
    """
    return backend_for(settings).open_sql_store(migrate=migrate)


@functools.lru_cache(maxsize=8)
def repo_keyring(repo_path: str) -> Keyring:
    """The data keys of the repository at `repo_path` as its settings (HM_* environment) name them,
    one Keyring per process: for code Feast runs that has a repository path but no Settings (our
    offline store's reads and writes of encrypted sources, its monitoring)."""
    return backend_for(Settings.from_env(repo_path)).keyring()
