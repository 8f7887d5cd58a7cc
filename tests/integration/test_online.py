"""The fast online reader (healthmate_features.stores.online) returns exactly what Feast's get_online_features returns.

On both online stores it reads: the small seeded dataset on the embedded profile (conftest
`small_embedded`: Feast's SQLite online store) and on the production profile (conftest
`small_production`: a Postgres database and a Feast project of its own in Redis), each built
once per run and materialized, then value-for-value comparisons with Feast on it. The
production cases skip locally when Postgres or Redis is down; they fail in CI (conftest).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest

from healthmate_features import _feast
from healthmate_features.config import Settings
from healthmate_features.errors import FeatureServiceNotFoundError, OnlineReadError, UserNotFoundError
from healthmate_features.features.build import build_features
from healthmate_features.raw.ingest import ingest_raw
from healthmate_features.stores import feature_store as store
from healthmate_features.stores.online import OnlineReader

SERVERS = [pytest.mark.postgres, pytest.mark.redis]
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


@pytest.fixture(scope="module", params=["embedded", pytest.param("production", marks=SERVERS)])
def small_repo(request) -> Settings:
    """The small dataset on each profile: SQLite (embedded), Redis (production). Read it, never change it."""
    return request.getfixturevalue(f"small_{request.param}")


@pytest.fixture(scope="module")
def feast(small_repo):
    return store.open_feature_store(small_repo)


@pytest.fixture(scope="module")
def reader(small_repo, feast):
    reader = OnlineReader(small_repo)
    yield reader
    reader.close()


def feasts(feast, users, *, feature_service=None, features=None, at=AT, full_feature_names=False) -> dict[str, list]:
    """Feast's answer: get_online_features(...).to_dict()."""
    selection = feast.get_feature_service(feature_service) if feature_service else features
    times = at if isinstance(at, list) else [at] * len(users)
    rows = [{"user_id": u, "event_timestamp": t} for u, t in zip(users, times, strict=True)]
    return feast.get_online_features(
        features=selection, entity_rows=rows, full_feature_names=full_feature_names
    ).to_dict()


def assert_identical(got: dict[str, list], want: dict[str, list]) -> None:
    """Same keys in the same order; every value equal in value and type (NaN equals NaN)."""
    assert list(got) == list(want)
    for name, values in want.items():
        assert len(got[name]) == len(values), name
        for i, (a, b) in enumerate(zip(got[name], values, strict=True)):
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


def test_store_online_features_reads_through_the_reader_and_equals_feast(small_repo, feast):
    for service in (None, "health_risk_v1"):
        refs = store.feature_refs(feast, service)
        want = feasts(
            feast,
            [7],
            features=refs if service is None else None,
            feature_service=service,
            full_feature_names=service is None,
        )
        got = store.online_features(small_repo, 7, feature_service=service, at=AT)
        assert list(got) == list(want) and got == {name: values[0] for name, values in want.items()}
    assert store.online_reader(small_repo) is store.online_reader(small_repo)  # one reader per settings


def test_found_says_which_users_the_store_knows(reader):
    want = [1 <= u <= 12 for u in USERS]
    assert reader.read(USERS, feature_service="engagement_churn_v1", at=AT).found == want
    assert reader.read(USERS, features=["temporal:hour_sin"], at=AT).found == want  # no stored feature asked for
    assert reader.known(USERS) == want


def _open_handles(path: Path) -> int:
    """How many file descriptors of this process are open on `path` (Linux)."""
    target = os.path.realpath(path)
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.path.realpath(fd) == target
        except OSError:
            continue
    return count


def test_sqlite_lookups_use_feasts_own_connection(small_embedded):
    """No lookup opens or closes a handle on the SQLite file: SQLite drops every lock this process holds
    on it when any handle closes. The reader reads over the connection of its FeatureStore's online store."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd (Linux)")
    reader = store.online_reader(small_embedded)
    assert reader is not None and reader.keeps_store
    db = small_embedded.repo_path / "data" / "online.db"
    store.online_lookup(small_embedded, [1], feature_service="health_risk_v1", at=AT)
    before = _open_handles(db)
    for user in [*USERS, *USERS]:
        store.online_lookup(small_embedded, [user], feature_service="health_risk_v1", at=AT)
        store.online_lookup(small_embedded, [user], at=AT)
    assert _open_handles(db) == before >= 1
    assert _feast.sqlite_connection(reader.store).execute("SELECT 1").fetchone() == (1,)  # Feast's, still open


def test_concurrent_first_lookups_make_one_reader(small_embedded):
    """Requests racing at a server's start share one reader: a second one, thrown away, would close its
    FeatureStore's SQLite connection (and with it this process's locks on the file)."""
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    settings = replace(small_embedded, job_lease_s=61.0)  # equal to no other Settings: a reader of its own
    with ThreadPoolExecutor(8) as pool:
        readers = list(pool.map(lambda _: store.online_reader(settings), range(8)))
    assert readers[0] is not None and all(r is readers[0] for r in readers)


@pytest.mark.postgres
@pytest.mark.redis
def test_found_the_same_on_both_stores(small_production, small_embedded):
    """Redis (one HMGET per user also reads every view's `_ts:` field) and SQLite (one query) agree."""
    want = [1 <= u <= 12 for u in USERS]
    for service in (None, "health_risk_v1", "engagement_churn_v1"):
        on_redis = store.online_lookup(small_production, USERS, feature_service=service, at=AT)
        on_sqlite = store.online_lookup(small_embedded, USERS, feature_service=service, at=AT)
        assert on_redis.found == on_sqlite.found == want, service
        assert set(on_redis.features) == set(on_sqlite.features)
    with pytest.raises(UserNotFoundError, match="^user 999 is not in the online store"):
        store.online_features(small_production, 999, at=AT)
    assert store.online_features(small_production, 3, at=AT)["profile__age_years"] is not None


@pytest.mark.postgres
@pytest.mark.redis
def test_feasts_own_redis_read_cannot_tell_an_unknown_user(small_production):
    """Why the reader decides `found` from Redis itself: Feast 0.67's Redis store marks every value of
    a key that does not exist PRESENT (a SQL store says NOT_FOUND: tests/unit/test_feast_contract.py)."""
    feast = store.open_feature_store(small_production)
    response = feast.get_online_features(features=["profile:age_years"], entity_rows=[{"user_id": 1}, {"user_id": 999}])
    assert _feast.stored_in_response(response)["age_years"] == [True, True]
    assert response.to_dict()["age_years"][1] is None


@pytest.mark.postgres
@pytest.mark.redis
def test_redis_key_is_feasts(small_production):
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    reader = store.online_reader(small_production)
    assert reader is not None
    for user_id in (0, 1, 255, 256, -1, 2**40, -(2**63), 2**63 - 1):
        key = EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=user_id)])
        assert reader.redis_key(user_id) == _redis_key(reader.project, key, 3)


def test_bad_requests_are_named(reader):
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


def test_an_online_store_it_does_not_read_is_named(small_embedded, tmp_path):
    from feast import FeatureStore, RepoConfig

    config = RepoConfig(
        project="healthmate",
        provider="local",
        registry=str(tmp_path / "registry.db"),
        online_store={"type": "remote", "path": "http://127.0.0.1:9"},  # Feast's HTTP client: nothing is called
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
        repo_path=tmp_path,
    )
    with pytest.raises(OnlineReadError, match="online store of feature_store.yaml is 'remote'.*Redis and SQLite only"):
        OnlineReader(small_embedded, store=FeatureStore(config=config))


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_a_new_apply_is_seen(prod, tiny):
    """A new service is read at once, a changed one after apply (this process) or refresh() (others).

    Another process's reader sees a change after Feast's registry cache_ttl_seconds (60 s) or
    refresh(). Feast orders a view's features by set iteration: sets here, Feast's order last.
    Applies change the registry: a production setup of its own (conftest `prod`), with the tiny data."""
    raw = tiny.write_raw(prod.repo_path / "raw")
    ingest_raw(raw, prod)
    build_features(raw, prod)
    store.apply(prod)
    store.materialize(prod)
    at = tiny.day(tiny.LAST_DAY + 1, 12)
    feast = store.open_feature_store(prod)
    other = OnlineReader(prod)
    try:
        cached = other.get([1], feature_service="health_risk_v1", at=at)  # plans cached
        assert_identical(cached, feasts(feast, [1], feature_service="health_risk_v1", at=at))
        assert sum(values[0] is not None for name, values in cached.items() if name != "user_id") > 10
        spec = prod.repo_path / "feature_repo" / "feature_sets.json"
        spec.write_text(json.dumps({"feature_sets": [{"name": "sleep_v1", "features": ["profile:sex"]}]}))
        store.apply(prod)
        assert store.online_features(prod, 1, feature_service="sleep_v1", at=at) == {"user_id": 1, "sex": "female"}
        assert other.get([1], feature_service="sleep_v1", at=at) == {"user_id": [1], "sex": ["female"]}
        # ... an unknown name: one registry refresh

        spec.write_text(
            json.dumps({"feature_sets": [{"name": "sleep_v1", "features": ["profile:sex", "profile:age_years"]}]})
        )
        store.apply(prod)
        assert set(store.online_features(prod, 1, feature_service="sleep_v1", at=at)) == {"user_id", "sex", "age_years"}
        other.refresh()
        got = other.get([1, 2], feature_service="sleep_v1", at=at)
        feast.refresh_registry()
        assert_identical(got, feasts(feast, [1, 2], feature_service="sleep_v1", at=at))
        assert got["age_years"][0] == 45
    finally:
        other.close()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_found_means_a_row_in_any_view_not_only_in_the_views_asked_for(prod, tiny):
    """Users with a row in a view outside the service are known, with every value of the service null.
    The same data and expectations as the SQLite test in test_feature_repo.py."""
    raw = tiny.write_raw(prod.repo_path / "raw")
    ingest_raw(raw, prod)
    build_features(raw, prod)
    store.apply(prod)
    store.materialize(prod, views=["engagement_daily"])  # users 1 and 2 have rows in no view of health_risk_v1
    at = tiny.day(40, 12)
    result = store.online_lookup(prod, [1, 999, 2, 1], feature_service="health_risk_v1", at=at)
    assert result.found == [True, False, True, True]
    stored = [
        name for name in result.features if name not in ("user_id", "days_since_signup", "month_sin", "month_cos")
    ]
    assert len(stored) > 10 and all(v is None for name in stored for v in result.features[name])  # values alike
    assert store.online_reader(prod).known([1, 999, 2]) == [True, False, True]
    with pytest.raises(UserNotFoundError, match="^user 999 is not in the online store"):
        store.online_features(prod, 999, feature_service="health_risk_v1", at=at)


@pytest.mark.slow
def test_a_new_apply_is_seen_on_sqlite(tiny_applied, tiny, clone_repo, tmp_path):
    """SQLite: the process's reader is kept across an apply (its FeatureStore holds Feast's connection) and
    reads the new registry at once; another reader reads a new service at once, a changed one after refresh().
    Views materialized after the readers were made are read too (no values are cached)."""
    repo = clone_repo(tiny_applied, tmp_path / "repo")
    at = tiny.day(tiny.LAST_DAY + 1, 12)
    cached = store.online_reader(repo)
    other = OnlineReader(repo)
    assert cached is not None
    assert store.online_lookup(repo, [1, 2], feature_service="health_risk_v1", at=at).found == [False, False]
    store.materialize(repo)  # after the readers were made
    feast = store.open_feature_store(repo)
    for reader in (cached, other):
        got = reader.read([1, 999, 2], feature_service="health_risk_v1", at=at)
        assert got.found == [True, False, True]
        assert_identical(got.features, feasts(feast, [1, 999, 2], feature_service="health_risk_v1", at=at))
    spec = repo.repo_path / "feature_repo" / "feature_sets.json"
    spec.write_text(json.dumps({"feature_sets": [{"name": "sleep_v1", "features": ["profile:sex"]}]}))
    store.apply(repo)
    assert store.online_reader(repo) is cached  # kept: told to reload the registry
    assert store.online_features(repo, 1, feature_service="sleep_v1", at=at) == {"user_id": 1, "sex": "female"}
    assert other.get([1], feature_service="sleep_v1", at=at) == {"user_id": [1], "sex": ["female"]}  # one refresh

    spec.write_text(
        json.dumps({"feature_sets": [{"name": "sleep_v1", "features": ["profile:sex", "profile:age_years"]}]})
    )
    store.apply(repo)
    feast = store.open_feature_store(repo)
    for full_feature_names in (False, True):
        want = feasts(feast, [1, 2, 0], feature_service="sleep_v1", at=at, full_feature_names=full_feature_names)
        got = cached.get([1, 2, 0], feature_service="sleep_v1", at=at, full_feature_names=full_feature_names)
        assert_identical(got, want)
    other.refresh()
    assert_identical(
        other.get([1, 2], feature_service="sleep_v1", at=at), feasts(feast, [1, 2], feature_service="sleep_v1", at=at)
    )


def test_a_ready_reader_reads_on_the_event_loop_the_same_values(small_repo):
    """Once a feature service's plan is resolved, the API reads without a thread: SQLite in place (the
    file in WAL mode, set by our store), Redis through the reader's pipelined connection. Same values as `fetch`."""
    import asyncio

    store.online_lookup(small_repo, [1], feature_service="health_risk_v1", at=AT)  # resolves the plan
    ready = store.ready_reader(small_repo, "health_risk_v1")
    assert ready is not None and ready.ready("health_risk_v1")
    assert store.ready_reader(small_repo, "no_such_service") is None  # no plan: the thread path
    expected = ready.fetch([3, 999], feature_service="health_risk_v1")
    if small_repo.profile == "embedded":
        conn = _feast.sqlite_connection(ready.store)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        assert ready.reads_in_place
        return
    assert not ready.reads_in_place  # Redis can hang: never read in place

    async def lookups():
        try:
            return [await ready.fetch_async([3, 999], feature_service="health_risk_v1") for _ in range(3)]
        finally:
            await ready.close_async()

    for fetched in asyncio.run(lookups()):
        assert (fetched.ids, fetched.rows, fetched.found) == (expected.ids, expected.rows, expected.found)
        assert fetched.found == [True, False]
    answer = store.online_finish(store.fetched_lookup(small_repo, fetched, AT.to_pydatetime()))
    assert (
        answer.features == store.online_finish(store.fetched_lookup(small_repo, expected, AT.to_pydatetime())).features
    )


def test_concurrent_lookups_on_the_pipelined_connection_each_get_their_own_users(small_repo):
    """On Redis, concurrent `fetch_async` calls share one connection (`redis.PipelinedConnection`):
    each gets the rows of its own users, as `fetch` reads them."""
    import asyncio

    if small_repo.profile == "embedded":
        pytest.skip("SQLite reads in place")
    store.online_lookup(small_repo, [1], feature_service="health_risk_v1", at=AT)  # resolves the plan
    ready = store.ready_reader(small_repo, "health_risk_v1")
    assert ready is not None
    groups = [[1 + i % 5] if i % 3 == 0 else [999, 2 + i % 3] if i % 3 == 1 else [3, 1] for i in range(60)]
    expected = [ready.fetch(ids, feature_service="health_risk_v1") for ids in groups]

    async def lookups():
        try:
            return await asyncio.gather(*(ready.fetch_async(ids, feature_service="health_risk_v1") for ids in groups))
        finally:
            await ready.close_async()

    for want, got in zip(expected, asyncio.run(lookups()), strict=True):
        assert (got.ids, got.rows, got.found) == (want.ids, want.rows, want.found)
