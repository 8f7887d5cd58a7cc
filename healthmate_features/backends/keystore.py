"""The keyring's storage: wrapped data keys in the SQL store's `data_keys` table (migration 8).

Every process of a deployment (API workers, job workers, the CLI, `feast serve` with our online
store) reads the same keys from it. Each call opens the SQL store and closes it again: keys are
read once per process (crypto.Keyring caches them) and written only by a rotation.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

from healthmate_features.backends.sqlstore import SqlStore, read_ts, utcnow
from healthmate_features.crypto.keyring import WrappedKey


class SqlKeyStore:
    """A crypto.KeyStore over the SQL store that `open_store()` opens (migrated)."""

    def __init__(self, open_store: Callable[[], SqlStore]) -> None:
        self._open = open_store

    def load_keys(self) -> list[WrappedKey]:
        with self._open() as sql:
            rows = sql.query("SELECT * FROM data_keys ORDER BY created_at, key_id")
        return [
            WrappedKey(
                key_id=row["key_id"],
                wrapped=base64.b64decode(row["wrapped"]),
                master_key_id=row["master_key_id"],
                state=row["state"],
                created_at=read_ts(row["created_at"]),
                retired_at=read_ts(row["retired_at"]) if row["retired_at"] is not None else None,
            )
            for row in rows
        ]

    def add_active_key(self, key: WrappedKey, *, replace: bool) -> bool:
        with self._open() as sql, sql.transaction():
            active = sql.query("SELECT key_id FROM data_keys WHERE state = 'active'")
            if active and not replace:
                return False
            sql.execute("UPDATE data_keys SET state = 'rotating' WHERE state = 'active'")
            sql.execute(
                "INSERT INTO data_keys (key_id, wrapped, master_key_id, state, created_at) "
                "VALUES (?, ?, ?, 'active', ?)",
                (key.key_id, base64.b64encode(key.wrapped).decode("ascii"), key.master_key_id, utcnow()),
            )
            return True

    def retire_keys(self) -> list[str]:
        with self._open() as sql, sql.transaction():
            ids = [row["key_id"] for row in sql.query("SELECT key_id FROM data_keys WHERE state = 'rotating'")]
            sql.execute("UPDATE data_keys SET state = 'retired', retired_at = ? WHERE state = 'rotating'", (utcnow(),))
        return ids
