"""Feast online stores that hold feature values only encrypted: SQLite (embedded) and Redis (production).

`EncryptedSqliteOnlineStore` and `EncryptedRedisOnlineStore` are Feast's own SQLite and Redis
online stores (subclasses, named by their module path in `feature_store*.yaml`) that seal what
they store and open what they read. Feast's `get_online_features`, `feast materialize`,
`materialize-incremental`, `store.materialize`, `store.push` and `feast serve` go through them
unchanged and read back what Feast's stock store would (same entities, features, values and
timestamps; tests/integration/test_online_encryption.py); our fast reader (`stores.online`)
opens the same envelopes.

The layout: one sealed row per (entity, view), where Feast's stock stores keep one value per
(entity, feature):

- the row: the view's serialized `ValueProto`s, the very bytes Feast's stock store stores per
  feature, packed by `row_codec` under Feast's Redis field id of each feature (murmur3 of
  `view:feature`), sealed ONCE under the deployment's active data key (`crypto.seal_many`:
  AES-256-GCM, the HME1 envelope naming the key id) with associated data that binds it to its
  place: on Redis the user's key (serialized entity key + project) and the row's field
  `_hm:<view>` (`redis_aad`); on SQLite the table (project + view) and the serialized entity key
  (`sqlite_aad`). A row copied to another user or view does not open (EncryptionKeyError, never
  another user's numbers); the field ids inside it are authenticated with the values;
- Redis: Feast's key per entity (the same key as the stock store: erasure by key, key TTL
  `key_ttl_seconds` reset by every write) holding, per view, Feast's `_ts:<view>` (the row's
  event time, as the stock store writes it) and `_hm:<view>` (the sealed row);
- SQLite: Feast's table per view with one row per entity, `feature_name` = `*` (`ROW_FEATURE`),
  `value` the sealed row, `value_text` NULL, `event_ts`/`created_ts` as Feast writes them. The file
  is in WAL mode (set by the first connection that opens it): a lookup never waits for a
  materialization's write, so the API reads it on its event loop (`stores.online`);
- plaintext: the entity keys (user ids: opaque integers, no health data), the timestamps (when a
  user's row was computed, not what it holds), and which views exist. Vector search and the
  OpenAI-compatible store are not supported (ConfigError).

Sealing a row instead of each value is what lets materialization run near the write floor: a
view of 30 features costs one AES-GCM seal per user, not 30. Writes come two ways: Feast's rows of
protobufs (`online_write_batch`: pushes, Feast's own engine), and whole Arrow tables
(`write_table`: our engine, `stores.online_engine`, each column serialized at once), both
in bounded batches (`online_write_batch_size` of feature_store.yaml's `materialization:`, else
`WRITE_BATCH_ROWS`, rows per Redis round trip or SQLite transaction). Redis keeps the
stock store's semantics: an older row never replaces a newer one (`skip_dedup` honoured), and
`key_ttl_seconds`. A row replaces the view's whole row: a push must carry every feature of its
view (Feast's push does). Rows written by the per-value layout of earlier versions are not read:
re-run `materialize` after upgrading.

The keyring comes from the SQL store of the profile named in the store's config (`profile`), with
the repository Feast runs in (`Backend.keyring()`): the same data keys in every process, `feast
serve` and the plain `feast` CLI included (production: run `eval "$(healthmate-features env)"`
first, as for any `feast` command). In-process, `Backend.open_feature_store` hands the online
store the backend's own keyring (`bind_keyring`).

`reencrypt_online_values(settings)` re-seals every row not under the active data key (a key
rotation): an idempotent scan, safe to interrupt and run again.
"""

from __future__ import annotations

import functools
import sqlite3
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from google.protobuf.timestamp_pb2 import Timestamp  # type: ignore[import-untyped]

from healthmate_features import _feast
from healthmate_features.config import Settings
from healthmate_features.crypto import Keyring, seal_many, sealed_key_id, unseal, unseal_many
from healthmate_features.errors import ConfigError, OnlineReadError
from healthmate_features.stores import row_codec

WRITE_BATCH_ROWS = 2_000  # rows per write without `online_write_batch_size` (bounded memory, few round trips)
REENCRYPT_BATCH = 500  # Redis keys or SQLite rows re-sealed per round trip during a rotation

_SQLITE_TYPE = "healthmate_features.stores.encrypted_online.EncryptedSqliteOnlineStore"
_REDIS_TYPE = "healthmate_features.stores.encrypted_online.EncryptedRedisOnlineStore"


ROW_FEATURE = "*"  # SQLite: the feature_name of a view's one row per entity (no Feast field is named so)
ROW_FIELD_PREFIX = b"_hm:"  # Redis: a user's hash field holding one view's sealed row is this + the view name


def redis_row_field(view: str) -> bytes:
    """The field of a user's Redis hash that holds the sealed row of `view` (next to Feast's `_ts:<view>`)."""
    return ROW_FIELD_PREFIX + view.encode()


def redis_aad(redis_key: bytes, field: bytes) -> bytes:
    """The associated data of a sealed row in a user's Redis hash: the key (entity + project), then the row's field."""
    return redis_key + field


def sqlite_aad(table: str, entity_key: bytes, feature: str = ROW_FEATURE) -> bytes:
    """The associated data of a sealed row in the SQLite online store: table, entity key, feature (length-prefixed)."""
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


@dataclass
class Rows:
    """Rows of one view ready to seal: serialized entity keys, row plaintexts, event and created times (UTC µs)."""

    keys: list[bytes]
    plaintexts: list[bytes]
    micros: list[int]
    created: list[int | None]


def _field_ids(config: Any, view: Any) -> dict[str, bytes]:
    """feature name -> its field id in a row (Feast's Redis field of the feature, `_feast.redis_field`)."""
    name = _feast.redis_view_name(config, view)
    return {f.name: _feast.redis_field(name, f.name) for f in view.features}


def _rows_of_protos(config: Any, view: Any, data: Sequence[tuple[Any, dict[str, Any], datetime, Any]]) -> Rows:
    """Feast's rows (entity key proto, {feature: ValueProto}, event time, created time) as rows to seal."""
    ids = _field_ids(config, view)
    version = config.entity_key_serialization_version
    rows = Rows([], [], [], [])
    for entity_key, values, timestamp, created in data:
        rows.keys.append(_feast.entity_key_bytes(entity_key, version))
        fields = [ids.get(f) or _feast.redis_field(_feast.redis_view_name(config, view), f) for f in values]
        rows.plaintexts.append(row_codec.encode_row(fields, [v.SerializeToString() for v in values.values()]))
        rows.micros.append(_micros_of(timestamp))
        rows.created.append(_micros_of(created) if created is not None else None)
    return rows


def rows_of_table(config: Any, view: Any, table: Any) -> Rows:
    """An Arrow table of a view's rows (what Feast's engine would convert to protos) as rows to seal.

    The same keys, values and times as Feast's conversion (`utils._convert_arrow_fv_to_proto`),
    without a proto per value: every value of a column serialized at once (`row_codec.encode_table`)."""
    join_keys = {entity.name: entity.dtype.to_value_type() for entity in view.entity_columns}
    keys = _feast.table_entity_keys(table, join_keys, config.entity_key_serialization_version)
    ids = _field_ids(config, view)
    columns = {ids[f.name]: (table.column(f.name), f.dtype.to_value_type()) for f in view.features}
    plaintexts = row_codec.encode_table(columns, table.num_rows)
    source = view.batch_source
    micros = _micros_column(table.column(source.timestamp_field))
    created: list[int | None] = (
        list(_micros_column(table.column(source.created_timestamp_column)))
        if source.created_timestamp_column
        else [None] * table.num_rows
    )
    return Rows(keys, plaintexts, micros, created)


def _micros_column(column: Any) -> list[int]:
    """A time column as UTC microseconds since the epoch, as Feast reads it (`pd.to_datetime`, then a
    Python datetime: sub-microsecond digits dropped; a naive time is UTC)."""
    import pandas as pd

    times = pd.to_datetime(column.to_numpy(zero_copy_only=False))
    if times.tz is not None:
        times = times.tz_convert("UTC").tz_localize(None)
    return (times.as_unit("ns").asi8 // 1000).tolist()


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _micros_of(moment: datetime) -> int:
    return (_utc(moment) - _EPOCH) // timedelta(microseconds=1)


@functools.lru_cache(maxsize=4096)  # a batch's rows share a few times (a view's rows are daily): computed once each
def _naive(micros: int) -> datetime:
    """Feast's `to_naive_utc` of a time given in UTC microseconds: what its SQLite store writes to event_ts."""
    return datetime(1970, 1, 1) + timedelta(microseconds=micros)


@functools.lru_cache(maxsize=4096)
def _stamp(micros: int) -> bytes:
    """Feast's `_ts:<view>` value of a time: a serialized protobuf Timestamp (`Timestamp.FromDatetime`)."""
    seconds, rest = divmod(micros, 1_000_000)
    return Timestamp(seconds=seconds, nanos=rest * 1000).SerializeToString()


def batch_rows(config: Any) -> int:
    """Rows per write of a materialized table: the `materialization:` section's
    `online_write_batch_size` (Feast's own batch size), else WRITE_BATCH_ROWS."""
    size = getattr(config.materialization_config, "online_write_batch_size", None)
    return int(size) if size else WRITE_BATCH_ROWS


def _batches(table: Any, size: int) -> Iterator[Any]:
    for start in range(0, table.num_rows, size):
        yield table.slice(start, size)


class _Sealing:
    """What both stores share: the keyring (which keys to seal with and open with) and the batched
    table write (`write_batches`) around each store's `_write_rows`."""

    _keyring: Keyring | None = None
    _write_rows: Callable[[Any, Any, Rows], None]  # each store's own: seal and write one batch of rows

    def bind_keyring(self, keyring: Keyring) -> None:
        """Use `keyring` (the caller's backend's) instead of building one from the environment."""
        self._keyring = keyring

    def write_batches(self, config: Any, view: Any, table: Any, size: int) -> None:
        """Write `table` in batches of `size` rows: each batch serialized here while the one before
        is sealed and written on a writer thread (the store's round trip overlaps the next batch's
        serialization; at most two batches in memory, writes in order). Raises the first error."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="online-write") as writer:
            pending: Future[None] | None = None
            for batch in _batches(table, size):
                rows = rows_of_table(config, view, batch)
                if pending is not None:
                    pending.result()
                pending = writer.submit(self._write_rows, config, view, rows)
            if pending is not None:
                pending.result()

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

    def __init__(self) -> None:
        super().__init__()
        self._table_lock = threading.Lock()

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
        """Feast's rows (pushes, Feast's own engine) upserted as one sealed row per entity; one transaction."""
        self._write_rows(config, table, _rows_of_protos(config, table, data))
        if progress:
            progress(len(data))

    def write_table(self, config: Any, view: Any, table: Any) -> None:
        """A materialized Arrow table of `view` (our engine, `stores.online_engine`), in batches
        (`batch_rows`): each one serialized at once, sealed, upserted in one transaction. One table
        at a time per store (the engine may write two views at once; they share the connection)."""
        with self._table_lock:
            self.write_batches(config, view, table, batch_rows(config))

    def _write_rows(self, config: Any, view: Any, rows: Rows) -> None:
        online = config.online_store
        if online.vector_enabled or online.enable_openai_compatible_store:
            raise ConfigError(
                "the encrypting SQLite online store does not support vector_enabled or "
                "enable_openai_compatible_store (they need values in plain text); turn them off in feature_store.yaml"
            )
        conn = self._get_conn(config)
        name = _feast.sqlite_view_table(config, view)
        table_part, feature_part = _part(name.encode()), sqlite_aad_feature(ROW_FEATURE)
        aads = [table_part + _part(key) + feature_part for key in rows.keys]  # sqlite_aad(name, key)
        sealed = seal_many(self.keyring(config).active(), rows.plaintexts, aads)
        quoted = '"' + name.replace('"', '""') + '"'
        with conn:
            conn.executemany(
                f"INSERT INTO {quoted} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
                "VALUES (?, ?, ?, NULL, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
                "value = excluded.value, value_text = NULL, event_ts = excluded.event_ts, "
                "created_ts = excluded.created_ts",
                [
                    (key, ROW_FEATURE, value, _naive(micros), _naive(created) if created is not None else None)
                    for key, value, micros, created in zip(rows.keys, sealed, rows.micros, rows.created, strict=True)
                ],
            )

    def online_read(
        self,
        config: Any,
        table: Any,
        entity_keys: list[Any],
        requested_features: list[str] | None = None,
    ) -> list[tuple[datetime | None, dict[str, Any] | None]]:
        """Feast's read (every feature of the view per entity, the row's event time), rows opened."""
        if not entity_keys:
            return []
        conn = self._get_conn(config)
        name = _feast.sqlite_view_table(config, table)
        version = config.entity_key_serialization_version
        keys = [_feast.entity_key_bytes(k, version) for k in entity_keys]
        quoted = '"' + name.replace('"', '""') + '"'
        found = conn.execute(
            f"SELECT entity_key, value, event_ts FROM {quoted} "
            f"WHERE feature_name = ? AND entity_key IN ({','.join('?' * len(keys))})",
            [ROW_FEATURE, *keys],
        ).fetchall()
        opened = unseal_many(
            self.keyring(config),
            [row[1] for row in found],
            [sqlite_aad(name, row[0]) for row in found],
            what=f"a row of feature view {table.name} in the SQLite online store",
        )
        names = {field: feature for feature, field in _field_ids(config, table).items()}
        rows: dict[bytes, tuple[datetime, dict[str, Any]]] = {}
        for (key, _, ts), plain in zip(found, opened, strict=True):
            values = {names[f]: _feast.value_proto(v) for f, v in row_codec.decode_row(plain).items() if f in names}
            rows[key] = (
                ts.astimezone(timezone.utc) if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc),
                values,
            )
        return [rows.get(key, (None, None)) for key in keys]


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
        """Feast's rows (pushes, Feast's own engine): Feast's timestamp check and key TTL, one sealed row per view."""
        for start in range(0, len(data), WRITE_BATCH_ROWS):
            batch = data[start : start + WRITE_BATCH_ROWS]
            self._write_rows(config, table, _rows_of_protos(config, table, batch))
            if progress:
                progress(len(batch))

    def write_table(self, config: Any, view: Any, table: Any) -> None:
        """A materialized Arrow table of `view` (our engine, `stores.online_engine`), `WRITE_BATCH_ROWS`
        rows per pipelined round trip: each batch serialized at once and sealed, one seal per row."""
        self.write_batches(config, view, table, batch_rows(config))

    def _write_rows(self, config: Any, view: Any, rows: Rows) -> None:
        """HSET `_ts:<view>` (Feast's timestamp) and the sealed row, then EXPIRE, for each row.

        A row no newer than the stored `_ts:<view>` (or an earlier row of the same key) is skipped,
        as Feast's stock store skips it, unless `skip_dedup`. On a single Redis (not a cluster) the
        stored timestamps are read with one script call and the rows written with another (two
        round trips and two commands per batch, where a pipeline sends three commands per row);
        on a cluster, whose keys live on several nodes, with pipelines."""
        online = config.online_store
        client = self._get_client(online)
        view_name = _feast.redis_view_name(config, view)
        ts_field = _feast.redis_timestamp_field(view_name)
        row_field = redis_row_field(view_name)
        project = config.project.encode("utf-8")
        keys = [key + project for key in rows.keys]
        cluster = getattr(online.redis_type, "value", online.redis_type) == "redis_cluster"
        if online.skip_dedup:
            kept = list(range(len(keys)))
        else:
            stored = _stored_stamps(client, keys, ts_field, scripted=not cluster)
            kept = [i for i, k in enumerate(_newer(keys, rows.micros, stored)) if k]
        sealed = seal_many(
            self.keyring(config).active(),
            [rows.plaintexts[i] for i in kept],
            [redis_aad(keys[i], row_field) for i in kept],
        )
        ttl = online.key_ttl_seconds or 0
        if not cluster:
            args: list[Any] = [ttl, ts_field, row_field]
            for i, value in zip(kept, sealed, strict=True):
                args += [_stamp(rows.micros[i]), value]
            if kept:
                client.register_script(_WRITE_SCRIPT)(keys=[keys[i] for i in kept], args=args)
            return
        with client.pipeline(transaction=False) as pipe:
            for i, value in zip(kept, sealed, strict=True):
                pipe.hset(keys[i], mapping={ts_field: _stamp(rows.micros[i]), row_field: value})
                if ttl:
                    pipe.expire(name=keys[i], time=ttl)
            pipe.execute()

    async def online_write_batch_async(self, config: Any, table: Any, data: Any, progress: Any) -> None:
        self.online_write_batch(config, table, data, progress)

    async def online_read_async(
        self, config: Any, table: Any, entity_keys: list[Any], requested_features: list[str] | None = None
    ) -> list[tuple[datetime | None, dict[str, Any] | None]]:
        return self.online_read(config, table, entity_keys, requested_features)

    def _read_hash_fields(self, config: Any, commands: list[tuple[bytes, list[Any]]]) -> list[list[Any]]:
        """Feast's HMGETs answered from the sealed rows: per (key, fields), the values of the
        features' fields (murmur3) and of `_ts:<view>`, as Feast's stock layout would answer them.

        Feast's reads ask for one view's fields and its `_ts:<view>` per key: one HMGET of
        `_ts:<view>` and the view's row per key (one pipeline), each row opened and unpacked."""
        asked: list[tuple[bytes, bytes, bytes]] = []  # (key, ts field, row field) per command
        for key, fields in commands:
            views = {v for v in map(_feast.redis_timestamp_view, fields) if v is not None}
            if len(views) != 1:
                raise OnlineReadError(
                    f"a read of the encrypting Redis store asks for {len(views)} views' timestamps in one hash "
                    "read; it reads one view's row (with its `_ts` field) at a time"
                )
            (view,) = views
            asked.append((key, _feast.redis_timestamp_field(view), redis_row_field(view)))
        replies = _feast.redis_hmget_replies(self, config, [(key, [ts, row]) for key, ts, row in asked])
        present = [i for i, (_, row) in enumerate(replies) if row is not None]
        opened = unseal_many(
            self.keyring(config),
            [bytes(replies[i][1]) for i in present],
            [redis_aad(asked[i][0], asked[i][2]) for i in present],
            what="a row in the Redis online store",
        )
        rows: dict[int, dict[bytes, bytes]] = {i: row_codec.decode_row(p) for i, p in zip(present, opened, strict=True)}
        out: list[list[Any]] = []
        for i, (_, fields) in enumerate(commands):
            row = rows.get(i, {})
            ts = replies[i][0]
            out.append([ts if _feast.redis_timestamp_view(f) is not None else row.get(f) for f in fields])
        return out


# One call per batch: the `_ts:<view>` of each key (nil where absent) ...
_READ_SCRIPT = """
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('HGET', KEYS[i], ARGV[1])
end
return out
"""
# ... and HSET of `_ts:<view>` and the row per key (ARGV: ttl, ts field, row field, then a
# timestamp and a row per key), EXPIRE when the ttl is set: what Feast's pipeline sends per row.
_WRITE_SCRIPT = """
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], ARGV[2], ARGV[2 + 2 * i], ARGV[3], ARGV[3 + 2 * i])
  if ttl > 0 then
    redis.call('EXPIRE', KEYS[i], ttl)
  end
end
return #KEYS
"""


def _stored_stamps(client: Any, keys: list[bytes], ts_field: bytes, *, scripted: bool) -> list[bytes | None]:
    """The stored `_ts:<view>` of each key (None where absent): one script call, or a pipeline (cluster)."""
    if scripted:
        return list(client.register_script(_READ_SCRIPT)(keys=keys, args=[ts_field])) if keys else []
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hget(key, ts_field)
        return list(pipe.execute())


def _newer(keys: list[bytes], micros: list[int], stored: list[bytes | None]) -> list[bool]:
    """Per row: whether Feast's stock store would write it (strictly newer than the stored `_ts`
    and than an earlier row of the same key in the batch)."""
    latest: dict[bytes, int] = {}
    keep: list[bool] = []
    parsed: dict[bytes, int] = {}  # stored stamp -> its nanoseconds (the rows of a view share a few times)
    for key, moment, previous in zip(keys, micros, stored, strict=True):
        new = moment * 1000
        seen = 0
        if previous:
            seen = parsed.get(previous, -1)
            if seen < 0:
                old = Timestamp()
                old.ParseFromString(previous)
                seen = parsed[previous] = old.seconds * 1_000_000_000 + old.nanos
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
                    key_id = sealed_key_id(value) if field.startswith(ROW_FIELD_PREFIX) else None
                    if key_id is None or key_id == active.key_id:
                        continue
                    plain = unseal(keyring, value, what="a row in the Redis online store", aad=redis_aad(key, field))
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
