"""Data keys: the keys that encrypt files and online values, kept wrapped under the master key.

The envelope scheme: each deployment has a few data keys (random 32 bytes, id `dk-<hex>`), stored
only wrapped by the master key in a `KeyStore` (the SQL store's `data_keys` table: every process
of a deployment, and `feast serve`, sees the same ones). One is *active*: everything written is
encrypted under it, and every ciphertext names the id of its key, so reads find the right key
after a rotation. `rotate()` makes a new key active; the old one stays for reading until
`keys rotate-data-key` has re-encrypted everything under the new one: until then it is *rotating*
(an interrupted rotation resumes from there instead of starting another), then *retired* (still
readable: a process that had not yet noticed the rotation may have written with it).

A `Keyring` caches unwrapped keys in memory for the life of the process and re-reads which key is
active at most every `ACTIVE_CHECK_S` seconds, so a rotation reaches running servers within that.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from healthmate_features.crypto.master import KEY_BYTES, MasterKey
from healthmate_features.errors import EncryptionKeyError

ACTIVE_CHECK_S = 30.0
STATES = ("active", "rotating", "retired")


@dataclass(frozen=True)
class DataKey:
    """An unwrapped data key: its id (written next to everything it encrypts) and its bytes."""

    key_id: str
    secret: bytes

    def __repr__(self) -> str:  # never the secret
        return f"DataKey({self.key_id})"


@dataclass(frozen=True)
class WrappedKey:
    """A data key as stored: wrapped under the master key `master_key_id`."""

    key_id: str
    wrapped: bytes
    master_key_id: str
    state: str
    created_at: datetime
    retired_at: datetime | None = None


class KeyStore(Protocol):
    """Where wrapped data keys live (backends.keystore.SqlKeyStore). At most one is active."""

    def load_keys(self) -> list[WrappedKey]: ...

    def add_active_key(self, key: WrappedKey, *, replace: bool) -> bool:
        """Store `key` as the active key in one transaction. `replace`: the active key (if any)
        becomes rotating; otherwise nothing is stored, and False returned, when a key is active."""
        ...

    def retire_keys(self) -> list[str]:
        """Mark every rotating key retired; return their ids."""
        ...


class Keyring:
    """The deployment's data keys, unwrapped on first use. Thread-safe.

    `master` is called at most once, when a key must be unwrapped or created; with `create=True`
    it may create the master key (only ever asked for when the store holds no data key yet)."""

    def __init__(self, store: KeyStore, master: Callable[..., MasterKey]) -> None:
        self._store = store
        self._master_factory = master
        self._master: MasterKey | None = None
        self._keys: dict[str, DataKey] = {}
        self._wrapped: dict[str, WrappedKey] = {}
        self._active_id: str | None = None
        self._checked_at = float("-inf")
        self._lock = threading.RLock()

    # -- reading ------------------------------------------------------------------------------

    def active(self) -> DataKey:
        """The key to encrypt with now; the first one is created on first use."""
        with self._lock:
            if self._active_id is None or time.monotonic() - self._checked_at > ACTIVE_CHECK_S:
                self._reload()
                if self._active_id is None:
                    self._create(first=True)
            assert self._active_id is not None
            return self.get(self._active_id, what="the active data key")

    def get(self, key_id: str, *, what: str) -> DataKey:
        """The data key `key_id`, needed to read `what` (named in the error if it is unknown)."""
        key = self._keys.get(key_id)
        if key is not None:
            return key
        with self._lock:
            if key_id not in self._wrapped:
                self._reload()
            wrapped = self._wrapped.get(key_id)
            if wrapped is None:
                known = ", ".join(sorted(self._wrapped)) or "none"
                raise EncryptionKeyError(
                    f"{what} is encrypted under data key {key_id}, which this deployment's keyring does not hold "
                    f"(data keys: {known}); it was written by another deployment, or its keyring was lost"
                )
            master = self._master_key(create=False)
            if wrapped.master_key_id != master.key_id:
                raise EncryptionKeyError(
                    f"{what} needs data key {key_id}, wrapped under master key {wrapped.master_key_id}, but the "
                    f"configured master key is {master.key_id}; set HM_MASTER_KEY or HM_MASTER_KEY_FILE to the "
                    "original master key"
                )
            secret = master.unwrap(wrapped.wrapped, context=key_id.encode())
            key = self._keys[key_id] = DataKey(key_id, secret)
            return key

    def key_ids(self) -> dict[str, str]:
        """Every data key's id and state ('active', 'rotating' or 'retired'), oldest first."""
        with self._lock:
            self._reload()
            return {k.key_id: k.state for k in sorted(self._wrapped.values(), key=lambda k: k.created_at)}

    # -- changing -----------------------------------------------------------------------------

    def rotating(self) -> list[str]:
        """Ids of the keys a rotation still has to re-encrypt away from (empty: none under way)."""
        with self._lock:
            self._reload()
            return [k for k, state in self.key_ids().items() if state == "rotating"]

    def rotate(self) -> DataKey:
        """Create a new data key and make it active; the old one becomes rotating. Returns it."""
        with self._lock:
            self._reload()
            return self._create(first=False)

    def finish_rotation(self) -> list[str]:
        """Mark the rotating keys retired (call once nothing is encrypted under them); their ids."""
        with self._lock:
            changed = self._store.retire_keys()
            self._reload()
            return changed

    # -- internals ----------------------------------------------------------------------------

    def _master_key(self, *, create: bool) -> MasterKey:
        if self._master is None:
            self._master = self._master_factory(create=create)
        return self._master

    def _reload(self) -> None:
        keys = self._store.load_keys()
        self._wrapped = {k.key_id: k for k in keys}
        active = [k.key_id for k in keys if k.state == "active"]
        self._active_id = active[0] if active else None
        self._checked_at = time.monotonic()

    def _create(self, *, first: bool) -> DataKey:
        master = self._master_key(create=first and not self._wrapped)
        key_id = f"dk-{uuid.uuid4().hex[:12]}"
        secret = os.urandom(KEY_BYTES)
        wrapped = WrappedKey(
            key_id=key_id,
            wrapped=master.wrap(secret, context=key_id.encode()),
            master_key_id=master.key_id,
            state="active",
            created_at=datetime.now().astimezone(),
        )
        added = self._store.add_active_key(wrapped, replace=not first)
        self._reload()
        if added:
            self._keys[key_id] = DataKey(key_id, secret)
        elif self._active_id is None:  # pragma: no cover - a store that refused without a winner
            raise EncryptionKeyError("could not store a new data key, and no other process stored one")
        assert self._active_id is not None
        return self.get(self._active_id, what="the active data key")
