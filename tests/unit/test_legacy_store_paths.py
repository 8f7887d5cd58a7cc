"""feature_store.yaml files written before the package layout still load (one release of re-exports)."""

from __future__ import annotations

import pytest
from feast.repo_config import RepoConfig

from healthmate_features.stores.duckdb_asof import HealthmateDuckDBOfflineStoreConfig
from healthmate_features.stores.postgres_lateral import LateralPostgreSQLOfflineStoreConfig

OLD_AND_NEW = [
    ("healthmate_features.offline_store.HealthmateDuckDBOfflineStore", HealthmateDuckDBOfflineStoreConfig, {}),
    ("healthmate_features.stores.duckdb_asof.HealthmateDuckDBOfflineStore", HealthmateDuckDBOfflineStoreConfig, {}),
    (
        "healthmate_features.pg_offline_store.LateralPostgreSQLOfflineStore",
        LateralPostgreSQLOfflineStoreConfig,
        {"host": "127.0.0.1", "database": "x", "user": "u", "password": "", "sslmode": "disable"},
    ),
    (
        "healthmate_features.stores.postgres_lateral.LateralPostgreSQLOfflineStore",
        LateralPostgreSQLOfflineStoreConfig,
        {"host": "127.0.0.1", "database": "x", "user": "u", "password": "", "sslmode": "disable"},
    ),
]


@pytest.mark.parametrize(("type_name", "config_class", "extra"), OLD_AND_NEW)
def test_offline_store_type_loads_by_its_old_and_new_dotted_path(tmp_path, type_name, config_class, extra):
    config = RepoConfig(
        project="legacy",
        provider="local",
        registry=str(tmp_path / "registry.db"),
        online_store={"type": "sqlite", "path": str(tmp_path / "online.db")},
        offline_store={"type": type_name, **extra},
        entity_key_serialization_version=3,
    )
    assert isinstance(config.offline_store, config_class)
    assert config.offline_store.type == type_name
