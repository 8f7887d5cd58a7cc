"""Feast online stores that hold feature values only encrypted: SQLite (embedded) and Redis (production).

`EncryptedSqliteOnlineStore` and `EncryptedRedisOnlineStore` are Feast's own SQLite and Redis
online stores (subclasses, named by their module path in `feature_store*.yaml`) with one change:
every feature value is sealed on write and opened on read. Feast's `get_online_features`,
`feast materialize`, `materialize-incremental`, `store.materialize`, `store.push` and `feast
serve` go through them unchanged; our fast reader (`stores.online`) opens the same envelopes.

What is stored where Feast's stock store stores it (same Redis keys and hash fields, same SQLite
tables, rows and timestamps, same key TTL), except the value itself:

- the value: the serialized `ValueProto` sealed under the deployment's active data key
  (`crypto.seal`: AES-256-GCM, the HME1 envelope naming the key id), with associated data that
  binds it to its place: on Redis the user's key (serialized entity key + project) and the field
  (murmur3 of `view:feature`); on SQLite the table (project + view), the serialized entity key and
  the feature name (`redis_aad`, `sqlite_aad`). A value copied to another user, feature or view
  does not open: EncryptionKeyError, never another user's number;
- plaintext: the entity keys (user ids: opaque integers, no health data; kept as they are so
  Feast's key layout, erasure by key, key TTL and Feast's own deletes keep working), the event
  and created timestamps (`_ts:<view>` on Redis, `event_ts`/`created_ts` on SQLite: when a user's
  row was computed, not what it holds), and which features exist;
- SQLite's `value_text` column (Feast's copy of the value as text, for its text search) stays
  NULL; vector search and the OpenAI-compatible store are not supported (ConfigError).
- the SQLite file is in WAL mode (set by the first connection that opens it): a lookup never
  waits for a materialization's write, so the API reads it on its event loop (`stores.online`).

The keyring comes from the SQL store of the profile named in the store's config (`profile`), with
the repository Feast runs in (`Backend.keyring()`): the same data keys in every process, `feast
serve` and the plain `feast` CLI included (production: run `eval "$(healthmate-features env)"`
first, as for any `feast` command). In-process, `Backend.open_feature_store` hands the online
store the backend's own keyring (`bind_keyring`).

Writes are Feast's semantics: on Redis the timestamp check of the stock store (an older row never
replaces a newer one; `skip_dedup` honoured) and `key_ttl_seconds`; on SQLite an upsert per
(entity, feature). They are pipelined in bounded batches (`WRITE_BATCH_ROWS` rows per Redis
round trip) and all values of a batch are sealed in one pass (`crypto.seal_many`).

`reencrypt_online_values(settings)` re-seals every value not under the active data key (a key
rotation): an idempotent scan, safe to interrupt and run again.
"""

from __future__ import annotations

import functools
import sqlite3
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from google.protobuf.timestamp_pb2 import Timestamp  # type: ignore[import-untyped]

from healthmate_features import _feast
from healthmate_features.config import Settings
from healthmate_features.crypto import Keyring, seal_many, sealed_key_id, unseal, unseal_many
from healthmate_features.errors import ConfigError

WRITE_BATCH_ROWS = 2_000  # rows per Redis pipeline round trip (bounded memory, few round trips)
REENCRYPT_BATCH = 500  # Redis keys or SQLite rows re-sealed per round trip during a rotation

_SQLITE_TYPE = "healthmate_features.stores.encrypted_online.EncryptedSqliteOnlineStore"
_REDIS_TYPE = "healthmate_features.stores.encrypted_online.EncryptedRedisOnlineStore"


def redis_aad(redis_key: bytes, field: bytes) -> bytes:
    """The associated data of a value in a user's Redis hash: the key (entity + project), then the 4-byte field."""
    return redis_key + field


def sqlite_aad(table: str, entity_key: bytes, feature: str) -> bytes:
    """The associated data of a value in Feast's SQLite online store: table, entity key, feature (length-prefixed)."""
    return sqlite_aad_head(table, entity_key) + sqlite_aad_feature(feature)


def sqlite_aad_head(table: str, entity_key: bytes) -> bytes:
    """`sqlite_aad`'s first two parts (the same for every feature of a row)."""
    return _part(table.encode()) + _part(entity_key)


@functools.lru_cache(maxsize=4096)
def sqlite_aad_feature(feature: str) -> bytes:
    """`sqlite_aad`'s last part (a few hundred feature names: cached)."""
    return _part(feature.encode())


_LENGTH = struct.Struct("<I").pack


def _part(data: bytes) -> bytes:
    return _LENGTH(len(data)) + data


class _Sealing:
    """The keyring part both stores share: which keys to seal with and open with."""

    _keyring: Keyring | None = None

    def bind_keyring(self, keyring: Keyring) -> None:
        """Use `keyring` (the caller's backend's) instead of building one from the environment."""
        self._keyring = keyring

    def keyring(self, config: Any) -> Keyring:
        """The keyring of the profile named in the store's config, in the repository Feast runs in."""
        if self._keyring is None:
            from healthmate_features.backends import backend_for

            settings = Settings.from_env(repo_path=config.repo_path or None, profile=config.online_store.profile)
            self._keyring = backend_for(settings).keyring()
        return self._keyring


def encrypts(store: Any) -> bool:
    """Whether a FeatureStore's online store is one of ours, which seals values (the reader must open them)."""
    return isinstance(_feast.online_store_of(store), _Sealing)


def _utc(moment: datetime) -> datetime:
    """Feast's `make_tzaware`: a naive time is UTC."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def _naive_utc(moment: datetime) -> datetime:
    """Feast's `to_naive_utc`: what its SQLite store writes to event_ts/created_ts."""
    return moment if moment.tzinfo is None else moment.astimezone(timezone.utc).replace(tzinfo=None)


# --- SQLite -------------------------------------------------------------------------------------


class EncryptedSqliteOnlineStoreConfig(_feast.SqliteOnlineStoreConfig):
    """Feast's SQLite online store settings, plus the profile whose keyring seals the values."""

    type: Literal["healthmate_features.stores.encrypted_online.EncryptedSqliteOnlineStore"] = _SQLITE_TYPE  # type: ignore[assignment]
    profile: Literal["embedded", "production"] = "embedded"


class EncryptedSqliteOnlineStore(_Sealing, _feast.SqliteOnlineStore):
    """Feast's SQLite online store with every value sealed (module docstring)."""

    def plan(self, config: Any, desired_registry_proto: Any) -> list[Any]:
        """No infrastructure objects in the plan, as for Feast's Redis store: `update()` creates and
        drops the tables. Feast records planned infrastructure in the registry only for `type:
        sqlite` (`FeatureStore._should_use_plan`), so Feast's SQLite plan here would make every
        `feast plan` after a `feast apply` list every table as "Created"."""
        return []

    def _get_conn(self, config: Any) -> Any:
        """Feast's connection to the store file, the file switched to WAL mode when it opens it.

        In WAL mode readers never wait for a writer (a materialization in another process, or a
        push in another thread of this one), and a writer never waits for readers; the mode is
        kept in the file, so Feast's plain `sqlite` store reading the same file gets it too."""
        opened = self._conn is not None
        conn = _feast.open_sqlite_store(self, config)
        if not opened:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError:  # another process holds a lock: the next opening switches it
                pass
        return conn

    def online_write_batch(
        self,
        config: Any,
        table: Any,
        data: Sequence[tuple[Any, dict[str, Any], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        """Upsert one row per (entity, feature) as Feast does, the value sealed, value_text NULL; one transaction."""
        online = config.online_store
        if online.vector_enabled or online.enable_openai_compatible_store:
            raise ConfigError(
                "the encrypting SQLite online store does not support vector_enabled or "
                "enable_openai_compatible_store (they need values in plain text); turn them off in feature_store.yaml"
            )
        conn = self._get_conn(config)
        name = _feast.sqlite_view_table(config, table)
        version = config.entity_key_serialization_version
        rows: list[list[Any]] = []
        plaintexts: list[bytes] = []
        aads: list[bytes] = []
        table_part = _part(name.encode())
        feature_parts: dict[str, bytes] = {}
        for entity_key, values, timestamp, created in data:
            key = _feast.entity_key_bytes(entity_key, version)
            head = table_part + _part(key)  # sqlite_aad's bytes, built once per row and feature name
            event_ts = _naive_utc(timestamp)
            created_ts = _naive_utc(created) if created is not None else None
            for feature, value in values.items():
                part = feature_parts.get(feature)
                if part is None:
                    part = feature_parts[feature] = _part(feature.encode())
                plaintexts.append(value.SerializeToString())
                aads.append(head + part)
                rows.append([key, feature, None, event_ts, created_ts])
        for row, sealed in zip(rows, seal_many(self.keyring(config).active(), plaintexts, aads), strict=True):
            row[2] = sealed
        quoted = '"' + name.replace('"', '""') + '"'
        with conn:
            conn.executemany(
                f"INSERT INTO {quoted} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
                "VALUES (?, ?, ?, NULL, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
                "value = excluded.value, value_text = NULL, event_ts = excluded.event_ts, "
                "created_ts = excluded.created_ts",
                rows,
            )
        if progress:
            progress(len(data))

    def online_read(
        self,
        config: Any,
        table: Any,
        entity_keys: list[Any],
        requested_features: list[str] | None = None,
    ) -> list[tuple[datetime | None, dict[str, Any] | None]]:
        """Feast's read (every feature of the view per entity, the row's event time), values opened."""
        if not entity_keys:
            return []
        conn = self._get_conn(config)
        name = _feast.sqlite_view_table(config, table)
        version = config.entity_key_serialization_version
        keys = [_feast.entity_key_bytes(k, version) for k in entity_keys]
        quoted = '"' + name.replace('"', '""') + '"'
        found = conn.execute(
            f"SELECT entity_key, feature_name, value, event_ts FROM {quoted} "
            f"WHERE entity_key IN ({','.join('?' * len(keys))}) ORDER BY entity_key",
            keys,
        ).fetchall()
        opened = unseal_many(
            self.keyring(config),
            [row[2] for row in found],
            [sqlite_aad(name, row[0], row[1]) for row in found],
            what=f"a value of feature view {table.name} in the SQLite online store",
        )
        values: dict[bytes, dict[str, Any]] = {}
        times: dict[bytes, datetime] = {}
        for (key, feature, _, ts), plain in zip(found, opened, strict=True):
            values.setdefault(key, {})[feature] = _feast.value_proto(plain)
            times[key] = ts.astimezone(timezone.utc) if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)
        return [(times[key], values[key]) if key in values else (None, None) for key in keys]


# --- Redis --------------------------------------------------------------------------------------


class EncryptedRedisOnlineStoreConfig(_feast.RedisOnlineStoreConfig):
    """Feast's Redis online store settings, plus the profile whose keyring seals the values."""

    type: Literal["healthmate_features.stores.encrypted_online.EncryptedRedisOnlineStore"] = _REDIS_TYPE  # type: ignore[assignment]
    profile: Literal["embedded", "production", "spark"] = "production"


class EncryptedRedisOnlineStore(_Sealing, _feast.RedisOnlineStore):
    """Feast's Redis online store with every value sealed (module docstring).

    Async reads and writes go through the synchronous paths (`feast serve` runs them in its
    thread pool), so no path of the parent class writes or returns a value unsealed."""

    def redis_client(self, config: Any) -> Any:
        """The redis-py client Feast's store writes and reads with (created on first use)."""
        return self._get_client(config.online_store)

    @property
    def async_supported(self) -> Any:
        return _feast.no_async_methods()

    def online_write_batch(
        self,
        config: Any,
        table: Any,
        data: Sequence[tuple[Any, dict[str, Any], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        """Feast's Redis write (same keys, fields, timestamps, timestamp check and key TTL), values sealed."""
        online = config.online_store
        client = self._get_client(online)
        view = _feast.redis_view_name(config, table)
        ts_field = _feast.redis_timestamp_field(view)
        version = config.entity_key_serialization_version
        project = config.project.encode("utf-8")
        fields: dict[str, bytes] = {}
        key_for = self.keyring(config)
        for start in range(0, len(data), WRITE_BATCH_ROWS):
            batch = data[start : start + WRITE_BATCH_ROWS]
            keys = [_feast.entity_key_bytes(row[0], version) + project for row in batch]
            stamps = []
            for row in batch:
                stamp = Timestamp()
                stamp.FromDatetime(_utc(row[2]))
                stamps.append(stamp)
            keep = _newer(client, keys, stamps, ts_field) if not online.skip_dedup else [True] * len(batch)
            plaintexts: list[bytes] = []
            aads: list[bytes] = []
            for key, row, kept in zip(keys, batch, keep, strict=True):
                if not kept:
                    continue
                for feature, value in row[1].items():
                    field = fields.get(feature)
                    if field is None:
                        field = fields[feature] = _feast.redis_field(view, feature)
                    plaintexts.append(value.SerializeToString())
                    aads.append(redis_aad(key, field))
            sealed = iter(seal_many(key_for.active(), plaintexts, aads))
            with client.pipeline(transaction=False) as pipe:
                for key, row, stamp, kept in zip(keys, batch, stamps, keep, strict=True):
                    if not kept:
                        continue
                    mapping: dict[bytes, bytes] = {ts_field: stamp.SerializeToString()}
                    for feature in row[1]:
                        mapping[fields[feature]] = next(sealed)
                    pipe.hset(key, mapping=mapping)
                    if online.key_ttl_seconds:
                        pipe.expire(name=key, time=online.key_ttl_seconds)
                pipe.execute()
            if progress:
                progress(len(batch))

    async def online_write_batch_async(self, config: Any, table: Any, data: Any, progress: Any) -> None:
        self.online_write_batch(config, table, data, progress)

    async def online_read_async(
        self, config: Any, table: Any, entity_keys: list[Any], requested_features: list[str] | None = None
    ) -> list[tuple[datetime | None, dict[str, Any] | None]]:
        return self.online_read(config, table, entity_keys, requested_features)

    def _read_hash_fields(self, config: Any, commands: list[tuple[bytes, list[Any]]]) -> list[list[Any]]:
        """Feast's HMGETs (one pipeline), every feature value opened; `_ts:` fields stay as stored."""
        replies = _feast.redis_hmget_replies(self, config, commands)
        blobs: list[bytes] = []
        aads: list[bytes] = []
        where: list[tuple[int, int]] = []
        for row, ((key, fields), values) in enumerate(zip(commands, replies, strict=True)):
            for column, (field, value) in enumerate(zip(fields, values, strict=True)):
                if value is not None and isinstance(field, bytes):  # murmur3 fields; `_ts:<view>` is a str
                    blobs.append(bytes(value))
                    aads.append(redis_aad(key, field))
                    where.append((row, column))
        if not blobs:
            return replies
        opened = unseal_many(self.keyring(config), blobs, aads, what="a feature value in the Redis online store")
        out = [list(values) for values in replies]
        for (row, column), plain in zip(where, opened, strict=True):
            out[row][column] = plain
        return out


def _newer(client: Any, keys: list[bytes], stamps: list[Timestamp], ts_field: bytes) -> list[bool]:
    """Per row: whether Feast's stock store would write it (strictly newer than the stored `_ts`
    and than an earlier row of the same key in the batch)."""
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hget(key, ts_field)
        stored = pipe.execute()
    latest: dict[bytes, int] = {}
    keep: list[bool] = []
    for key, stamp, previous in zip(keys, stamps, stored, strict=True):
        new = stamp.seconds * 1_000_000_000 + stamp.nanos
        seen = 0
        if previous:
            old = Timestamp()
            old.ParseFromString(previous)
            seen = old.seconds * 1_000_000_000 + old.nanos
        seen = max(seen, latest.get(key, 0))
        if seen and new <= seen:
            keep.append(False)
            continue
        latest[key] = new
        keep.append(True)
    return keep


# --- key rotation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reencrypted:
    """What `reencrypt_online_values` did: values looked at, and re-sealed under the active key."""

    scanned: int
    reencrypted: int
    active_key: str


# Compare-and-set per Redis hash: a field is replaced only if it still holds the value read (a
# materialization that wrote a newer value meanwhile wins).
_CAS_SCRIPT = """
local n = 0
for i = 1, #ARGV, 3 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    n = n + 1
  end
end
return n
"""


def reencrypt_online_values(settings: Settings, *, progress: Callable[[int], Any] | None = None) -> Reencrypted:
    """Re-seal every online value that is not under the active data key (the online part of a key rotation).

    An idempotent scan of the profile's online store (Redis: the project's hashes; SQLite: every
    table of the project): a value already under the active key is left alone, so an interrupted
    run is resumed by running it again. Each value is replaced only if it still holds what was
    read (Redis: a compare-and-set script per hash; SQLite: `UPDATE ... WHERE value = old`), so a
    concurrent materialization is never undone. Call before `Keyring.finish_rotation()`.
    Side effects: the online store. Raises EncryptionKeyError for a value no key opens.
    `progress(n)` after each batch."""
    from healthmate_features.backends import backend_for

    backend = backend_for(settings)
    store = backend.open_feature_store()
    online = _feast.online_store_of(store)
    if not isinstance(online, _Sealing):
        raise ConfigError(
            f"the online store of {backend.feature_store_yaml.name} is {store.config.online_store.type!r}, "
            "which does not encrypt; name EncryptedSqliteOnlineStore or EncryptedRedisOnlineStore there"
        )
    keyring = backend.keyring()
    online.bind_keyring(keyring)
    active = keyring.active()
    with backend.service_errors():
        if isinstance(online, EncryptedRedisOnlineStore):
            scanned, changed = _reencrypt_redis(online, store.config, keyring, progress)
        else:
            scanned, changed = _reencrypt_sqlite(store, keyring, progress)
    return Reencrypted(scanned=scanned, reencrypted=changed, active_key=active.key_id)


def _reencrypt_redis(online: Any, config: Any, keyring: Keyring, progress: Any) -> tuple[int, int]:
    client = online.redis_client(config)
    active = keyring.active()
    script = client.register_script(_CAS_SCRIPT)
    scanned = changed = 0
    pending: list[bytes] = []

    def flush() -> int:
        with client.pipeline(transaction=False) as pipe:
            for key in pending:
                pipe.hgetall(key)
            hashes = pipe.execute()
        done = 0
        with client.pipeline(transaction=False) as pipe:
            for key, fields in zip(pending, hashes, strict=True):
                args: list[bytes] = []
                for field, value in fields.items():
                    key_id = sealed_key_id(value) if len(field) == 4 else None
                    if key_id is None or key_id == active.key_id:
                        continue
                    plain = unseal(
                        keyring, value, what="a feature value in the Redis online store", aad=redis_aad(key, field)
                    )
                    (new,) = seal_many(active, [plain], [redis_aad(key, field)])
                    args += [field, value, new]
                if args:
                    script(keys=[key], args=args, client=pipe)
            done = sum(int(n) for n in pipe.execute())
        return done

    for key in client.scan_iter(match=b"*" + config.project.encode("utf-8"), count=REENCRYPT_BATCH):
        pending.append(key)
        if len(pending) >= REENCRYPT_BATCH:
            changed += flush()
            scanned += len(pending)
            if progress:
                progress(len(pending))
            pending = []
    if pending:
        changed += flush()
        scanned += len(pending)
        if progress:
            progress(len(pending))
    return scanned, changed


def _reencrypt_sqlite(store: Any, keyring: Keyring, progress: Any) -> tuple[int, int]:
    conn = _feast.sqlite_connection(store)
    active = keyring.active()
    prefix = f"{store.project}_"
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()]
    scanned = changed = 0
    for table in tables:
        if not table.startswith(prefix):
            continue
        quoted = '"' + table.replace('"', '""') + '"'
        after = -1
        while True:
            rows = conn.execute(
                f"SELECT rowid, entity_key, feature_name, value FROM {quoted} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (after, REENCRYPT_BATCH),
            ).fetchall()
            if not rows:
                break
            after = rows[-1][0]
            scanned += len(rows)
            stale = [r for r in rows if r[3] is not None and sealed_key_id(r[3]) not in (None, active.key_id)]
            if stale:
                aads = [sqlite_aad(table, r[1], r[2]) for r in stale]
                plain = unseal_many(keyring, [r[3] for r in stale], aads, what=f"a value in SQLite table {table}")
                new = seal_many(active, plain, aads)
                with conn:
                    for row, value in zip(stale, new, strict=True):
                        changed += conn.execute(
                            f"UPDATE {quoted} SET value = ? WHERE rowid = ? AND value = ?", (value, row[0], row[3])
                        ).rowcount
            if progress:
                progress(len(rows))
    return scanned, changed
