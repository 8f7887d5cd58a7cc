"""Deprecated location of our DuckDB offline store, kept for one release so existing repos load.

`feature_store.yaml` files that name
`type: healthmate_features.offline_store.HealthmateDuckDBOfflineStore` keep working; new ones
name `healthmate_features.stores.duckdb_asof.HealthmateDuckDBOfflineStore`. Removed in 0.3.
"""

from __future__ import annotations

from healthmate_features.stores.duckdb_asof import (
    HealthmateDuckDBOfflineStore,
    HealthmateDuckDBOfflineStoreConfig,
    HealthmateDuckDBRetrievalJob,
)

__all__ = ["HealthmateDuckDBOfflineStore", "HealthmateDuckDBOfflineStoreConfig", "HealthmateDuckDBRetrievalJob"]
