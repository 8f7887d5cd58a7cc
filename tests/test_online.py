"""The fast Redis reader (healthmate_features.stores.online) returns exactly what Feast's get_online_features returns.

One production setup per module (a fresh Postgres database, a Feast project of its own in Redis,
the small seeded dataset materialized), then value-for-value comparisons with Feast on it.
Skips locally when Postgres or Redis is down; fails in CI (conftest).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import replace

import pandas as pd
import pytest
import small
import tiny
from conftest import PG_HINT, REDIS_HINT, _require
from sqlbackends import settings_for_dsn

from healthmate_features.config import Settings
from healthmate_features.errors import FeatureServiceNotFoundError, OnlineReadError
from healthmate_features.features.build import build_features
from healthmate_features.raw.ingest import ingest_raw
from healthmate_features.stores import feature_store as store
from healthmate_features.stores.online import OnlineReader

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
AT = pd.Timestamp("2025-03-20 09:30:17.250", tz="UTC")  # sub-second: Feast sends whole seconds to the ODFV
USERS = [*range(1, 13), 999, 3, 0]  # a dozen known users, an unknown one, a repeat, another unknown
REFS = [
    "profile:sex",
    "profile:age_years",
    "health_weekly:steps_mean_week",
    "engagement_daily:sessions_7d",
    "health_rolling:resting_heart_rate_mean_7d",
    "temporal:days_since_signup",
    "temporal:hour_sin",
]


@pytest.fixture(scope="module")
def prod(tmp_path_factory):
    """Production Settings over the small dataset, ingested, built, applied and materialized once."""
    import psycopg
    import redis

    host, port = os.environ.get("HM_PG_HOST", "127.0.0.1"), int(os.environ.get("HM_PG_PORT", "5432"))
    _require(host, port, "PostgreSQL", PG_HINT)
    url = os.environ.get("HM_REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    kwargs = client.connection_pool.connection_kwargs
    _require(kwargs.get("host", "127.0.0.1"), int(kwargs.get("port", 6379)), "Redis", REDIS_HINT)
    user = os.environ.get("HM_PG_USER", "postgres")
    admin = f"host={host} port={port} user={user} dbname=postgres connect_timeout=5"
    name = f"hm_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    repo = tiny.copy_repo(tmp_path_factory.mktemp("online") / "repo")
    yaml_path = repo / "feature_store.production.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("project: healthmate", f"project: {name}"))
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        settings = replace(settings_for_dsn(f"host={host} port={port} user={user} dbname={name}", repo), redis_url=url)
        raw = tiny.write_raw(repo / "raw", small.raw_tables())
        ingest_raw(raw, settings)
        build_features(raw, settings)
        store.apply(settings)
        store.materialize(settings)
        yield settings
    finally:
        os.chdir(cwd)
        store.forget_online_reader(settings)
        keys = list(client.scan_iter(match=f"*{name}", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def feast(prod):
    return store.open_feature_store(prod)


@pytest.fixture(scope="module")
def reader(prod, feast):
    reader = OnlineReader(prod)
    yield reader
    reader.close()


def feasts(feast, users, *, feature_service=None, features=None, at=AT, full_feature_names=False) -> dict[str, list]:
    """Feast's answer: get_online_features(...).to_dict()."""
    selection = feast.get_feature_service(feature_service) if feature_service else features
    times = at if isinstance(at, list) else [at] * len(users)
    rows = [{"user_id": u, "event_timestamp": t} for u, t in zip(users, times)]
    return feast.get_online_features(
        features=selection, entity_rows=rows, full_feature_names=full_feature_names
    ).to_dict()


def assert_identical(got: dict[str, list], want: dict[str, list]) -> None:
    """Same keys in the same order; every value equal in value and type (NaN equals NaN)."""
    assert list(got) == list(want)
    for name, values in want.items():
        assert len(got[name]) == len(values), name
        for i, (a, b) in enumerate(zip(got[name], values)):
            same = (a is None and b is None) or (
                type(a) is type(b) and (a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)))
            )
            assert same, (name, i, a, b)


@pytest.mark.parametrize("full_feature_names", [False, True])
@pytest.mark.parametrize(
    "selection",
    [
        {"feature_service": "health_risk_v1"},
        {"feature_service": "engagement_churn_v1"},
        {"features": REFS},
    ],
)
def test_reader_equals_feast(reader, feast, selection, full_feature_names):
    got = reader.get(USERS, at=AT, full_feature_names=full_feature_names, **selection)
    want = feasts(feast, USERS, at=AT, full_feature_names=full_feature_names, **selection)
    assert_identical(got, want)
    known = [i for i, u in enumerate(USERS) if 1 <= u <= 12]
    values = [got[name][i] for name in got if name != "user_id" for i in known]
    assert sum(v is not None for v in values) > 0.5 * len(values)  # the comparison is not all nulls
    temporal = {f.name for f in feast.get_on_demand_feature_view("temporal").features}
    stored = [name for name in got if name != "user_id" and name.split("__")[-1] not in temporal]
    for i, u in enumerate(USERS):
        if u in (0, 999):  # unknown users: every stored feature None
            assert all(got[name][i] is None for name in stored), u


def test_reader_covers_nulls_and_every_type(reader, feast):
    """The dataset exercises what the comparison must get right: ints, floats, strings, nulls of known users."""
    got = reader.get(list(range(1, 13)), feature_service="engagement_churn_v1", at=AT)
    kinds = {type(v) for values in got.values() for v in values}
    assert {int, float, str, type(None)} <= kinds
    every = reader.get(list(range(1, 13)), features=reader.feature_refs(), at=AT, full_feature_names=True)
    nulls = sum(v is None for values in every.values() for v in values)
    assert 0 < nulls < 0.5 * sum(len(values) for values in every.values())  # stored nulls of known users
    assert_identical(every, feasts(feast, list(range(1, 13)), features=reader.feature_refs(), full_feature_names=True))


def test_reader_takes_one_request_time_per_user(reader, feast):
    times = [AT + pd.Timedelta(hours=7 * i, seconds=i) for i in range(len(USERS))]
    assert_identical(
        reader.get(USERS, feature_service="engagement_churn_v1", at=times),
        feasts(feast, USERS, feature_service="engagement_churn_v1", at=times),
    )
    with pytest.raises(OnlineReadError, match="2 times for 15 user ids"):
        reader.get(USERS, feature_service="engagement_churn_v1", at=times[:2])


def test_store_online_features_reads_through_the_reader_and_equals_feast(prod, feast):
    for service in (None, "health_risk_v1"):
        refs = store.feature_refs(feast, service)
        want = feasts(
            feast,
            [7],
            features=refs if service is None else None,
            feature_service=service,
            full_feature_names=service is None,
        )
        got = store.online_features(prod, 7, feature_service=service, at=AT)
        assert list(got) == list(want) and got == {name: values[0] for name, values in want.items()}
    assert store.online_reader(prod) is store.online_reader(prod)  # one reader per settings


def test_redis_key_is_feasts(reader):
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    for user_id in (0, 1, 255, 256, -1, 2**40, -(2**63), 2**63 - 1):
        key = EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=user_id)])
        assert reader.redis_key(user_id) == _redis_key(reader.project, key, 3)


def test_bad_requests_are_named(reader, prod):
    with pytest.raises(OnlineReadError, match="exactly one"):
        reader.get([1])
    with pytest.raises(OnlineReadError, match="exactly one"):
        reader.get([1], feature_service="health_risk_v1", features=REFS)
    with pytest.raises(OnlineReadError, match="no user ids"):
        reader.get([], feature_service="health_risk_v1")
    with pytest.raises(OnlineReadError, match="integers"):
        reader.get(["x"], feature_service="health_risk_v1")
    with pytest.raises(FeatureServiceNotFoundError, match="'nope_v1' not found.*health_risk_v1"):
        reader.get([1], feature_service="nope_v1")
    with pytest.raises(OnlineReadError, match="Redis only"):
        OnlineReader(Settings(repo_path=prod.repo_path))  # the embedded profile: SQLite


def test_a_new_apply_is_seen(prod, feast):
    """A new service is read at once, a changed one after apply (this process) or refresh() (others).

    Another process's reader sees a change after Feast's registry cache_ttl_seconds (60 s) or
    refresh(). Feast orders a view's features by set iteration: sets here, Feast's order last."""
    other = OnlineReader(prod)
    assert other.get([1], feature_service="health_risk_v1", at=AT)  # plans cached
    spec = prod.repo_path / "feature_repo" / "feature_sets.json"
    spec.write_text(json.dumps({"feature_sets": [{"name": "sleep_v1", "features": ["profile:sex"]}]}))
    store.apply(prod)
    assert list(store.online_features(prod, 1, feature_service="sleep_v1", at=AT)) == ["user_id", "sex"]
    assert list(other.get([1], feature_service="sleep_v1", at=AT)) == [
        "user_id",
        "sex",
    ]  # unknown name: one registry refresh

    spec.write_text(
        json.dumps({"feature_sets": [{"name": "sleep_v1", "features": ["profile:sex", "profile:age_years"]}]})
    )
    store.apply(prod)
    assert set(store.online_features(prod, 1, feature_service="sleep_v1", at=AT)) == {"user_id", "sex", "age_years"}
    other.refresh()
    got = other.get([1, 2], feature_service="sleep_v1", at=AT)
    feast.refresh_registry()
    assert_identical(got, feasts(feast, [1, 2], feature_service="sleep_v1"))
    other.close()
