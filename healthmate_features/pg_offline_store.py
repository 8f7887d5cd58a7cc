"""Deprecated location of our Postgres offline store, kept for one release so existing repos load.

`type: healthmate_features.pg_offline_store.LateralPostgreSQLOfflineStore` keeps working; new
configurations name `healthmate_features.stores.postgres_lateral.LateralPostgreSQLOfflineStore`.
Removed in 0.3.
"""

from __future__ import annotations

from healthmate_features.stores.postgres_lateral import (
    LateralPostgreSQLOfflineStore,
    LateralPostgreSQLOfflineStoreConfig,
)

__all__ = ["LateralPostgreSQLOfflineStore", "LateralPostgreSQLOfflineStoreConfig"]
