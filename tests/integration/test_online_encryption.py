"""The encrypting online stores (stores/encrypted_online.py) on both profiles, with real Feast.

- The SQLite file and the Redis hashes hold no plaintext value (read through the store's own
  connection and the Redis client): one HME1 envelope per (entity, view) row, value_text NULL.
- What ours holds equals what Feast's stock store holds after a stock materialization of the same
  windows into a separate store (a second SQLite file; the same project in another Redis
  database), both through Feast's entry points: ours with our engine (stores/online_engine.py),
  a full window up to a cut then `materialize --incremental`; the stock store with Feast's own
  engine over the same windows: same keys, entities, timestamps (`_ts:<view>`,
  event_ts, created_ts) and key TTL, and each opened row holds exactly the stock store's serialized
  values, feature for feature; Feast's get_online_features through ours and our fast reader equal
  Feast through the stock store, value for value.
- A value moved to another user, or naming a key the keyring lacks, fails with EncryptionKeyError
  naming the key id (Feast's read and our reader); the HTTP API answers 503 with a generic message.
- Key rotation: `reencrypt_online_values` re-seals every value under the new key, and a second
  run finds nothing left (an interrupted rotation resumes by running it again).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from feast import FeatureStore
from feast.repo_config import RepoConfig

from healthmate_features import _feast
from healthmate_features.access.keys import ApiKeys
from healthmate_features.api.app import PREFIX, create_app
from healthmate_features.backends import backend_for, open_sql_store
from healthmate_features.backends.base import substitute_placeholders
from healthmate_features.config import Settings
from healthmate_features.crypto import sealed_key_id, unseal
from healthmate_features.errors import EncryptionKeyError
from healthmate_features.features.build import build_features
from healthmate_features.raw.ingest import ingest_raw
from healthmate_features.stores import encrypted_online, row_codec
from healthmate_features.stores import feature_store as store
from healthmate_features.stores.online import OnlineReader

SERVERS = [pytest.mark.postgres, pytest.mark.redis]
USERS = [1, 2, 3, 4, 999]
STOCK_REDIS_DB = 15  # Feast's stock store writes the same project's keys here (deleted after)


def stock_store(settings: Settings, online: dict[str, Any]) -> FeatureStore:
    """A FeatureStore of the same repository and registry whose online store is Feast's own (`online`)."""
    backend = backend_for(settings)
    raw = substitute_placeholders(
        yaml.safe_load(backend.feature_store_yaml.read_text()), backend.feast_variables(), "yaml"
    )
    raw["online_store"] = {k: v for k, v in {**raw["online_store"], **online}.items() if k != "profile"}
    raw["batch_engine"] = {"type": "local"}  # Feast's own engine: the reference
    config = RepoConfig(**raw)
    config.repo_path = settings.repo_path
    fs = FeatureStore(repo_path=str(settings.repo_path), config=config)
    views = [v for v in fs.list_feature_views() if v.online]
    _feast.online_store_of(fs).update(config, [], views, [], fs.list_entities(), partial=False)
    return fs


def materialize_both(settings: Settings, stock: FeatureStore, cut) -> None:
    """Ours through `store.materialize` up to `cut`, then `materialize --incremental` (each view from
    where it ended; rows of users that changed since replace theirs); Feast's stock store over the
    same windows, with Feast's own engine."""
    first = store.materialize(settings, end=cut)
    stock.materialize(start_date=first.start, end_date=first.end)
    second = store.materialize(settings, incremental=True)
    assert second.views and all(v.ran and v.start == first.end for v in second.views)
    for view in second.views:
        stock.materialize(start_date=view.start, end_date=view.end, feature_views=[view.view])


def every_ref(fs: FeatureStore) -> list[str]:
    return [f"{v.name}:{f.name}" for v in fs.list_feature_views() for f in v.features]


def same(a: dict[str, list], b: dict[str, list]) -> None:
    assert list(a) == list(b)
    for name in a:
        for x, y in zip(a[name], b[name], strict=True):
            assert type(x) is type(y) and (x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))), name


def feast_reads(fs: FeatureStore, refs: list[str]) -> dict[str, list]:
    return fs.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in USERS]).to_dict()


# --- embedded: SQLite ---------------------------------------------------------------------------


@pytest.fixture
def embedded(tiny_applied, clone_repo, tmp_path, tiny):
    """A private copy of the tiny applied repository, materialized by ours and by Feast's stock SQLite store."""
    settings = clone_repo(tiny_applied, tmp_path / "repo")
    stock = stock_store(settings, {"type": "sqlite", "path": "data/online-stock.db"})
    materialize_both(settings, stock, tiny.day(20))
    yield settings, stock
    store.forget_online_reader(settings)


def sqlite_rows(fs: FeatureStore) -> dict[tuple[str, bytes, str], tuple]:
    """Every row of the project's tables: (table, entity key, feature) -> (value, value_text, event_ts, created_ts)."""
    conn = _feast.sqlite_connection(fs)
    rows = {}
    for view in fs.list_feature_views():
        table = _feast.sqlite_view_table(fs.config, view)
        for key, feature, value, text, event, created in conn.execute(
            f'SELECT entity_key, feature_name, value, value_text, event_ts, created_ts FROM "{table}"'
        ):
            rows[(table, key, feature)] = (value, text, event, created)
    return rows


def opened_row(keyring, value: bytes, aad: bytes) -> dict[bytes, bytes]:
    """A sealed row opened: Feast's Redis field of each feature -> its serialized ValueProto."""
    return row_codec.decode_row(unseal(keyring, value, what="test", aad=aad))


def test_sqlite_holds_only_sealed_values_equal_to_feasts_stock_store(embedded):
    settings, stock = embedded
    ours = store.open_feature_store(settings)
    assert isinstance(_feast.online_store_of(ours), encrypted_online.EncryptedSqliteOnlineStore)
    mine, theirs = sqlite_rows(ours), sqlite_rows(stock)
    assert {feature for _, _, feature in mine} == {encrypted_online.ROW_FEATURE}  # one row per entity and view
    assert {(t, k) for t, k, _ in mine} == {(t, k) for t, k, _ in theirs} and len(mine) >= 12
    plain = {value for value, *_ in theirs.values()}
    keyring = backend_for(settings).keyring()
    active = keyring.active().key_id
    views = {_feast.sqlite_view_table(ours.config, v): v for v in ours.list_feature_views()}
    compared = 0
    for (table, key, _), (value, text, event, created) in mine.items():
        assert value.startswith(b"HME1") and sealed_key_id(value) == active and text is None
        assert not any(p in value for p in plain if len(p) > 2)  # no plaintext value inside
        row = opened_row(keyring, value, encrypted_online.sqlite_aad(table, key))
        view = views[table]
        stock_row = {f: v for (t, k, f), v in theirs.items() if t == table and k == key}
        assert set(stock_row) == {f.name for f in view.features}
        assert len(row) == len(stock_row)
        for feature, (stock_value, _, stock_event, stock_created) in stock_row.items():
            assert row[_feast.redis_field(view.name, feature)] == stock_value, (table, feature)
            assert (event, created) == (stock_event, stock_created)
            compared += 1
    assert compared > 300
    refs = every_ref(ours)
    want = feast_reads(stock, refs)
    same(feast_reads(ours, refs), want)
    reader = OnlineReader(settings, store=ours)
    same(reader.get(USERS, features=refs), want)


def test_a_moved_or_unknown_key_value_fails_naming_the_key(embedded):
    settings, _ = embedded
    ours = store.open_feature_store(settings)
    conn = _feast.sqlite_connection(ours)
    view = ours.get_feature_view("health_daily")
    table = _feast.sqlite_view_table(ours.config, view)
    key = _feast.int64_entity_key("user_id")
    feature = view.features[0].name
    row = encrypted_online.ROW_FEATURE
    (value,) = conn.execute(
        f'SELECT value FROM "{table}" WHERE entity_key = ? AND feature_name = ?', (key(1), row)
    ).fetchone()
    key_id = sealed_key_id(value)
    with conn:  # user 1's value copied onto user 2: it must not open there
        conn.execute(f'UPDATE "{table}" SET value = ? WHERE entity_key = ? AND feature_name = ?', (value, key(2), row))
    refs = [f"health_daily:{feature}"]
    with pytest.raises(EncryptionKeyError, match=f"does not decrypt under data key {key_id}"):
        ours.get_online_features(features=refs, entity_rows=[{"user_id": 2}])
    with pytest.raises(EncryptionKeyError, match=f"does not decrypt under data key {key_id}"):
        OnlineReader(settings, store=ours).get([2], features=refs)

    unknown = value.replace(key_id.encode(), b"dk-" + b"0" * (len(key_id) - 3))
    with conn:
        conn.execute(
            f'UPDATE "{table}" SET value = ? WHERE entity_key = ? AND feature_name = ?', (unknown, key(2), row)
        )
    missing = "dk-" + "0" * (len(key_id) - 3)
    with pytest.raises(EncryptionKeyError, match=f"data key {missing}, which this deployment's keyring does not hold"):
        OnlineReader(settings, store=ours).get([2], features=refs)

    with open_sql_store(settings) as sql:
        secret = ApiKeys(sql).create_key("admin", name="test-admin").secret
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.get(
            PREFIX + "/features/extract", params={"user_id": 2}, headers={"Authorization": f"Bearer {secret}"}
        )
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["error"] == "service_unavailable" and "cannot be decrypted" in body["detail"]
    assert "dk-" not in body["detail"]  # key ids and places go to the server log only


def test_rotation_reseals_every_value_and_resumes(embedded):
    settings, stock = embedded
    ours = store.open_feature_store(settings)
    refs = every_ref(ours)
    before = feast_reads(ours, refs)
    keyring = backend_for(settings).keyring()
    old = keyring.active().key_id
    new = keyring.rotate().key_id
    done = encrypted_online.reencrypt_online_values(settings)
    assert done.active_key == new and done.reencrypted == done.scanned == len(sqlite_rows(ours)) >= 12
    assert {sealed_key_id(v) for v, *_ in sqlite_rows(ours).values()} == {new}
    again = encrypted_online.reencrypt_online_values(settings)
    assert again.reencrypted == 0 and again.scanned == done.scanned
    assert keyring.finish_rotation() == [old]
    same(feast_reads(ours, refs), before)
    same(OnlineReader(settings, store=ours).get(USERS, features=refs), before)


# --- production: Redis ---------------------------------------------------------------------------


@pytest.fixture
def production(prod, tiny):
    """The tiny data on the production profile, materialized by ours (Redis db of HM_REDIS_URL) and
    by Feast's stock Redis store (database STOCK_REDIS_DB, same project)."""
    import redis

    raw = tiny.write_raw(prod.repo_path / "raw")
    ingest_raw(raw, prod)
    build_features(raw, prod)
    store.apply(prod)
    connection = backend_for(prod).feast_variables()["HM_FEAST_REDIS"]
    stock_connection = ",".join(
        f"db={STOCK_REDIS_DB}" if part.startswith("db=") else part for part in connection.split(",")
    )
    stock = stock_store(prod, {"type": "redis", "connection_string": stock_connection})
    materialize_both(prod, stock, tiny.day(20))
    url = prod.redis_url.rsplit("/", 1)[0]
    clients = redis.Redis.from_url(prod.redis_url), redis.Redis.from_url(f"{url}/{STOCK_REDIS_DB}")
    try:
        yield prod, stock, clients
    finally:
        project = stock.project.encode()
        keys = list(clients[1].scan_iter(match=b"*" + project, count=1000))
        if keys:
            clients[1].delete(*keys)
        for client in clients:
            client.close()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_redis_holds_only_sealed_values_equal_to_feasts_stock_store(production):
    settings, stock, (mine, theirs) = production
    project = stock.project.encode()
    our_keys = sorted(mine.scan_iter(match=b"*" + project, count=1000))
    assert len(our_keys) >= 2 and our_keys == sorted(theirs.scan_iter(match=b"*" + project, count=1000))
    keyring = backend_for(settings).keyring()
    ttl = stock.config.online_store.key_ttl_seconds
    views = {v.name: v for v in stock.list_feature_views()}
    compared = 0
    for key in our_keys:
        ours_hash, stock_hash = mine.hgetall(key), theirs.hgetall(key)
        stamps = {f: v for f, v in stock_hash.items() if _feast.redis_timestamp_view(f) is not None}
        assert stamps and {f: ours_hash.get(f) for f in stamps} == stamps  # Feast's `_ts:<view>`, as stock
        rows = {encrypted_online.redis_row_field(_feast.redis_timestamp_view(f)) for f in stamps}
        assert set(ours_hash) == set(stamps) | rows  # one sealed row per view beside it, nothing else
        plain = set(stock_hash.values())
        for field in rows:
            value = ours_hash[field]
            assert value.startswith(b"HME1") and not any(p in value for p in plain if len(p) > 2)
            row = opened_row(keyring, value, encrypted_online.redis_aad(key, field))
            view = views[field[len(encrypted_online.ROW_FIELD_PREFIX) :].decode()]
            fields = [_feast.redis_field(view.name, f.name) for f in view.features]
            assert sorted(row) == sorted(fields)
            for hashed in fields:
                assert row[hashed] == stock_hash[hashed]
                compared += 1
        assert abs(mine.ttl(key) - theirs.ttl(key)) < 120 and 0 < mine.ttl(key) <= ttl
    assert compared > 300
    ours = store.open_feature_store(settings)
    refs = every_ref(ours)
    want = feast_reads(stock, refs)
    same(feast_reads(ours, refs), want)
    reader = OnlineReader(settings, store=ours)
    try:
        same(reader.get(USERS, features=refs), want)
    finally:
        reader.close()

    keyring.rotate()
    done = encrypted_online.reencrypt_online_values(settings)
    assert done.scanned == len(our_keys) and done.reencrypted >= 2 * len(our_keys)
    assert encrypted_online.reencrypt_online_values(settings).reencrypted == 0
    same(feast_reads(store.open_feature_store(settings), refs), want)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_a_value_moved_to_another_user_in_redis_fails_naming_the_key(production):
    settings, _, (mine, _) = production
    ours = store.open_feature_store(settings)
    project = ours.project
    view = ours.get_feature_view("health_daily")
    field = encrypted_online.redis_row_field(view.name)
    one, two = (_feast.feast_redis_key(project, "user_id", u) for u in (1, 2))
    value = mine.hget(one, field)
    mine.hset(two, field, value)
    refs = [f"health_daily:{view.features[0].name}"]
    match = f"does not decrypt under data key {sealed_key_id(value)}"
    with pytest.raises(EncryptionKeyError, match=match):
        ours.get_online_features(features=refs, entity_rows=[{"user_id": 2}])
    reader = OnlineReader(settings, store=ours)
    try:
        with pytest.raises(EncryptionKeyError, match=match):
            reader.get([2], features=refs)
    finally:
        reader.close()
