"""The keyring's storage: wrapped data keys in the SQL store's `data_keys` table (migration 8),
and a copy of each beside the files it encrypts (`data/keys/`).

Every process of a deployment (API workers, job workers, the CLI, `feast serve` with our online
store) reads the same keys from the SQL store. Each call opens the SQL store and closes it again:
keys are read once per process (crypto.Keyring caches them) and written only by a rotation.

The copy in `data/keys/` is for the files under `data/`, which every profile of a repository
shares: a file the production profile wrote (keys in Postgres) must open on the embedded profile
(keys in SQLite) of the same checkout, and the other way round. Each profile's store lists the
other's keys found there as readable (`retired`), never as the key to write with; a key copy is
useless without the master key that wrapped it.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from healthmate_features.backends.sqlstore import SqlStore, read_ts, utcnow
from healthmate_features.crypto.keyring import WrappedKey
from healthmate_features.util.files import atomic_write_text


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


_KEY_FILE = re.compile(r"^dk-[0-9a-f]{1,32}\.json$")


class MirroredKeyStore:
    """A KeyStore: `primary` (the profile's SQL store) for everything, plus a copy of each wrapped
    key in `directory` (one JSON file per key, written atomically). Keys found only in the copy
    (another profile's) are readable, listed as `retired`, and never become active here."""

    def __init__(self, primary: SqlKeyStore, directory: Path) -> None:
        self._primary = primary
        self._dir = Path(directory)

    def load_keys(self) -> list[WrappedKey]:
        own = self._primary.load_keys()
        copied = self._copies()
        for key in own:
            if key.key_id not in copied:
                self._write_copy(key)  # keys stored before copies existed, or a copy that failed
        known = {key.key_id for key in own}
        return own + [key for key_id, key in copied.items() if key_id not in known]

    def add_active_key(self, key: WrappedKey, *, replace: bool) -> bool:
        added = self._primary.add_active_key(key, replace=replace)
        if added:
            self._write_copy(key)
        return added

    def retire_keys(self) -> list[str]:
        return self._primary.retire_keys()

    def _copies(self) -> dict[str, WrappedKey]:
        found: dict[str, WrappedKey] = {}
        try:
            names = [n for n in os.listdir(self._dir) if _KEY_FILE.match(n)]
        except FileNotFoundError:
            return found
        for name in names:
            try:
                record = json.loads((self._dir / name).read_text())
                key = WrappedKey(
                    key_id=record["key_id"],
                    wrapped=base64.b64decode(record["wrapped"]),
                    master_key_id=record["master_key_id"],
                    state="retired",
                    created_at=datetime.fromisoformat(record["created_at"]),
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a damaged copy: the key stays unknown, and reads under it say so
            if f"{key.key_id}.json" == name:
                found[key.key_id] = key
        return found

    def _write_copy(self, key: WrappedKey) -> None:
        record = {
            "key_id": key.key_id,
            "wrapped": base64.b64encode(key.wrapped).decode("ascii"),
            "master_key_id": key.master_key_id,
            "created_at": key.created_at.isoformat(),
        }
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self._dir / f"{key.key_id}.json", json.dumps(record))
        except OSError:
            pass  # a read-only data/: the SQL store still holds the key; the copy is written next time
