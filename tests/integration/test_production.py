"""The production profile against real Postgres and Redis: equivalence with the embedded profile,
atomic and idempotent loads and builds, full/incremental/interrupted materialization, faults.

A test that loads or changes data gets its own Postgres database and Feast project name
(conftest `prod`), so its Redis keys (`<entity key><project>`) are its own and deleted
afterwards; a test that only reads uses the small dataset built once per run
(`small_production`, and `small_embedded` on the embedded profile).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest

from healthmate_features.backends import backend_for, postgres, production
from healthmate_features.config import Settings
from healthmate_features.errors import NotIngestedError, ServiceUnavailableError
from healthmate_features.features import build as features_build
from healthmate_features.features.build import build_features
from healthmate_features.features.catalog import FEATURE_TABLES
from healthmate_features.raw.ingest import check_raw_store, ingest_raw
from healthmate_features.stores import feature_store as store
from tests.helpers.files import read_frame

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
BIN = Path(sys.executable).parent
SERVICES = ("health_risk_v1", "engagement_churn_v1")


def env_of(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.to_env()}


def run(args: list[str], settings: Settings, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        args, cwd=settings.repo_path, env=env_of(settings), capture_output=True, text=True, timeout=300, **kwargs
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def table(settings: Settings, name: str) -> pd.DataFrame:
    with postgres.connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {postgres.table_name(settings, name)} ORDER BY user_id, event_timestamp")
        return pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])


def count(settings: Settings, name: str) -> int:
    with postgres.connect(settings) as conn:
        return conn.execute(f"SELECT count(*) FROM {postgres.table_name(settings, name)}").fetchone()[0]


def assert_close(left: pd.DataFrame, right: pd.DataFrame, what: str) -> None:
    """Same columns and rows in the same order; numbers equal within float tolerance, nulls alike."""
    assert list(left.columns) == list(right.columns), what
    assert len(left) == len(right), what
    for col in left.columns:
        a, b = left[col].reset_index(drop=True), right[col].reset_index(drop=True)
        if col == "event_timestamp":
            assert (pd.to_datetime(a, utc=True) == pd.to_datetime(b, utc=True)).all(), (what, col)
        elif pd.api.types.is_numeric_dtype(a.dropna().infer_objects()) and a.notna().any():
            np.testing.assert_allclose(
                a.astype(float), b.astype(float), rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=f"{what}.{col}"
            )
        else:
            assert [None if pd.isna(v) else v for v in a] == [None if pd.isna(v) else v for v in b], (what, col)


def assert_same_online(left: dict, right: dict, what: str) -> None:
    assert left.keys() == right.keys(), what
    for name, value in left.items():
        other = right[name]
        same = (
            value == other
            if isinstance(value, str) or value is None
            else value == pytest.approx(other, rel=1e-9, abs=1e-9)
        )
        assert same, (what, name, value, other)


def load_and_build(raw, settings: Settings) -> None:
    ingest_raw(raw, settings)
    build_features(raw, settings)


@pytest.mark.slow
def test_production_profile_equals_embedded(small_production, small_embedded):
    prod, embedded = small_production, small_embedded  # the same raw data through both profiles
    for name in ("users", "health_readings", "app_events", "labels"):  # the same rows accepted
        assert count(prod, name) == len(read_frame(embedded, embedded.ingested_dir / f"{name}.parquet")) > 0, name

    for name in FEATURE_TABLES:  # the same SQL in both engines gives the same tables
        parquet = read_frame(embedded, embedded.features_dir / f"{name}.parquet").sort_values(
            ["user_id", "event_timestamp"]
        )
        assert count(prod, name) == len(parquet) > 0, name
        assert_close(parquet, table(prod, name), name)

    labels = read_frame(embedded, embedded.ingested_dir / "labels.parquet")
    for service in SERVICES:
        frames = [store.historical_features(s, labels, feature_service=service) for s in (embedded, prod)]
        assert frames[0].notna().to_numpy().mean() > 0.5, service  # the comparison is not all nulls
        assert_close(frames[0], frames[1], service)
        assert_close(frames[1][labels.columns], labels, f"{service}: rows in the label frame's order")

    at = pd.Timestamp("2025-03-20 09:30", tz="UTC")
    for user_id in range(1, 13):
        for service in SERVICES:
            assert_same_online(
                store.online_features(embedded, user_id, feature_service=service, at=at),
                store.online_features(prod, user_id, feature_service=service, at=at),
                f"user {user_id} {service}",
            )


def test_ingest_replaces_atomically_and_never_duplicates(prod, monkeypatch, tiny):
    raw = tiny.write_raw(prod.repo_path / "raw")
    reports, first = ingest_raw(raw, prod)
    assert first == {r.table: r.accepted for r in reports}
    _, again = ingest_raw(raw, prod)
    assert first == again and {name: count(prod, name) for name in first} == first

    changed = tiny.raw_tables()
    changed["health_readings"] = changed["health_readings"].iloc[:50]
    tiny.write_raw(raw, changed)
    real_copy = production._copy_parquet

    def copy_then_fail(cur, dest, *args, **kwargs):
        rows = real_copy(cur, dest, *args, **kwargs)
        if "health_readings" in dest:
            raise KeyboardInterrupt("interrupted after copying health_readings")
        return rows

    monkeypatch.setattr(production, "_copy_parquet", copy_then_fail)
    with pytest.raises(KeyboardInterrupt):
        ingest_raw(raw, prod)
    assert {name: count(prod, name) for name in first} == first  # the previous load, whole
    with pytest.raises(NotIngestedError, match="'health_readings' .* changed since it was ingested into Postgres"):
        check_raw_store(raw, prod)
    monkeypatch.setattr(production, "_copy_parquet", real_copy)
    _, rerun = ingest_raw(raw, prod, batch_rows=7)  # several COPY chunks per table
    assert rerun["health_readings"] == 50 and count(prod, "health_readings") == 50
    with postgres.connect(prod) as conn:
        leftovers = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE '%%__load'").fetchone()[0]
    assert leftovers == 0


@pytest.mark.slow
def test_killed_ingest_keeps_the_previous_load_and_a_rerun_completes(prod, tiny):
    raw = tiny.write_raw(prod.repo_path / "raw")
    _, first = ingest_raw(raw, prod)
    big = tiny.raw_tables()
    readings = big["health_readings"]
    big["health_readings"] = pd.concat([readings] * 6000, ignore_index=True)  # ~500k rows: COPY takes a while
    tiny.write_raw(raw, big)
    args = [str(BIN / "healthmate-features"), "ingest", "--profile", "production", "--raw", str(raw), "--quiet"]
    proc = subprocess.Popen(
        args, cwd=prod.repo_path, env=env_of(prod), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        with postgres.connect(prod, autocommit=True) as conn:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                copying = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = %s AND query LIKE 'COPY%%health_readings__load%%'",
                    (prod.pg_database,),
                ).fetchone()[0]
                if copying:
                    break
                time.sleep(0.02)
            assert proc.poll() is None, "ingest finished before it could be interrupted"
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            for _ in range(100):  # the server notices the dead client and rolls back
                if not conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = "
                    "'healthmate-features' AND pid <> pg_backend_pid()",
                    (prod.pg_database,),
                ).fetchone()[0]:
                    break
                time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert {name: count(prod, name) for name in first} == first
    run(args, prod)
    assert count(prod, "health_readings") == len(big["health_readings"])
    assert count(prod, "users") == first["users"]


def test_build_features_swaps_all_tables_in_one_transaction_with_indexes(prod, monkeypatch, tiny):
    raw = tiny.write_raw(prod.repo_path / "raw")
    with pytest.raises(NotIngestedError, match="no raw data was loaded into Postgres"):
        build_features(raw, prod)
    load_and_build(raw, prod)
    before = {name: count(prod, name) for name in FEATURE_TABLES}
    with postgres.connect(prod) as conn:
        rows = conn.execute(
            "SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = %s", (prod.pg_schema,)
        ).fetchall()
    for name in FEATURE_TABLES:
        indexes = sorted(d.split(" USING btree ")[1] for t, d in rows if t == name)
        assert indexes == ["(event_timestamp)", "(user_id, event_timestamp)"], name

    shorter = tiny.raw_tables()
    shorter["health_readings"] = shorter["health_readings"][shorter["health_readings"].recorded_at < tiny.day(20)]
    shorter["app_events"] = shorter["app_events"][shorter["app_events"]["at"] < tiny.day(20)]
    tiny.write_raw(raw, shorter)
    ingest_raw(raw, prod)
    broken = dict(FEATURE_TABLES)
    last = list(broken)[-1]
    broken[last] = replace(broken[last], sql="SELECT no_such_column FROM hm_user_day")
    monkeypatch.setattr(features_build, "FEATURE_TABLES", broken)
    with pytest.raises(psycopg.errors.UndefinedColumn, match=r'^column "no_such_column" does not exist'):
        build_features(raw, prod)
    assert {name: count(prod, name) for name in FEATURE_TABLES} == before  # nothing swapped in
    monkeypatch.setattr(features_build, "FEATURE_TABLES", FEATURE_TABLES)
    after = build_features(raw, prod)
    assert after["health_daily"] < before["health_daily"] and after == {
        name: count(prod, name) for name in FEATURE_TABLES
    }


def redis_keys(settings: Settings) -> int:
    import redis

    project = store.open_feature_store(settings).config.project
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return sum(1 for _ in client.scan_iter(match=f"*{project}", count=1000))
    finally:
        client.close()


@pytest.mark.slow
def test_materialization_full_incremental_and_interrupted(prod, monkeypatch, tiny):
    from healthmate_features.stores.encrypted_online import EncryptedRedisOnlineStore

    raw = tiny.write_raw(prod.repo_path / "raw")
    load_and_build(raw, prod)
    store.apply(prod)
    cut = tiny.day(20)
    store.materialize(prod, end=cut)  # full, up to a cut
    rolling = table(prod, "health_rolling").query("user_id == 1").set_index("event_timestamp")
    online = store.online_features(prod, 1, at=cut)
    assert online["health_rolling__resting_heart_rate_mean_7d"] == pytest.approx(
        rolling.loc[cut, "resting_heart_rate_mean_7d"]
    )
    assert online["profile__bmi"] is None  # user 1's first month-end snapshot (1 Feb) lies after the cut
    assert redis_keys(prod) == 2  # one hash per user, holding every view's features

    # The profile's online store: ours, Feast's Redis store with values encrypted.
    # Our engine (stores/online_engine.py) hands it each view's table whole (`write_table`).
    real_write, calls = EncryptedRedisOnlineStore.write_table, []

    def write_then_fail(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise ConnectionResetError("interrupted: redis went away mid-materialization")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(EncryptedRedisOnlineStore, "write_table", write_then_fail)
    with pytest.raises(ConnectionResetError):
        store.materialize(prod, incremental=True)
    assert len(calls) >= 3  # the views of one window run two at a time: the others are written
    monkeypatch.setattr(EncryptedRedisOnlineStore, "write_table", real_write)
    store.materialize(prod, incremental=True)  # resumes from the last completed window: nothing lost
    latest = {
        name: table(prod, name).groupby("user_id").tail(1).set_index("user_id")
        for name in ("health_rolling", "engagement_daily", "profile")
    }
    for user_id in (1, 2):
        online = store.online_features(prod, user_id, at=tiny.day(41))
        for name, frame in latest.items():
            for feature in FEATURE_TABLES[name].features:
                want, got = frame.loc[user_id, feature.name], online[f"{name}__{feature.name}"]
                assert (pd.isna(want) and got is None) or got == pytest.approx(want) or got == want, (
                    user_id,
                    name,
                    feature.name,
                )
    assert redis_keys(prod) == 2  # one hash per user, however often it was written
    store.materialize(prod)  # a full re-run changes nothing
    assert redis_keys(prod) == 2

    # Feast's own CLI takes one view up to now; our next incremental run leaves it alone, per view
    now = pd.Timestamp.now(tz="UTC").floor("s")
    feast = [str(BIN / "feast"), "-f", "feature_store.production.yaml", "materialize-incremental"]
    feast_env = {**os.environ, **backend_for(prod).feast_env()}
    done = subprocess.run(
        [*feast, now.tz_localize(None).isoformat(), "-v", "health_daily"],
        cwd=prod.repo_path,
        env=feast_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    later = tiny.day(45)  # after the data, before now
    resumed = {v.view: v for v in store.materialize(prod, incremental=True, end=later).views}
    assert not resumed["health_daily"].ran and resumed["health_daily"].materialized_until == now
    assert all(v.ran and v.start < v.end == later for name, v in resumed.items() if name != "health_daily")


@pytest.mark.slow
def test_redis_failure_inside_feast_is_a_clear_error(small_production, monkeypatch):
    from healthmate_features.backends import redis as hm_redis

    closed = replace(small_production, redis_url="redis://127.0.0.1:1/0", connect_timeout_s=2)
    start = time.monotonic()
    with pytest.raises(ServiceUnavailableError, match=r"Redis at 127.0.0.1:1/0 \(HM_REDIS_URL\) is unreachable"):
        store.online_features(closed, 1)  # the check before Feast
    assert time.monotonic() - start < 5
    monkeypatch.setattr(hm_redis, "check_redis", lambda settings: None)
    start = time.monotonic()
    with pytest.raises(ServiceUnavailableError, match="Redis at 127.0.0.1:1/0.*Connection refused"):
        store.materialize(closed)  # inside Feast's own Redis client: redis-py retries 3 times first
    assert time.monotonic() - start < 4 * 2 + 7 + 5


def test_our_point_in_time_join_equals_feasts_postgres_store(small_production):
    from feast import FeatureStore

    prod = small_production
    ours = store.open_feature_store(prod)
    feasts = FeatureStore(
        repo_path=str(prod.repo_path), config=backend_for(prod).feast_config(offline_store={"type": "postgres"})
    )
    assert type(ours._get_provider().offline_store).__name__ == "LateralPostgreSQLOfflineStore"
    assert type(feasts._get_provider().offline_store).__name__ == "PostgreSQLOfflineStore"
    labels = read_frame(prod, prod.ingested_dir / "labels.parquet")
    labels = pd.concat(
        [
            labels,
            labels.head(3),
            pd.DataFrame(
                {  # duplicates; before any data; exactly at a row's time
                    "user_id": [1, 2, 99],
                    "event_timestamp": pd.to_datetime(["2024-06-01", "2025-02-01", "2025-02-01"], utc=True),
                    "adverse_event_30d": 0,
                    "disengaged_14d": 0,
                }
            ),
        ],
        ignore_index=True,
    ).assign(row=lambda df: range(len(df)))
    for service in SERVICES:
        for full in (False, True):
            frames = [
                fs.get_historical_features(
                    entity_df=labels, features=fs.get_feature_service(service), full_feature_names=full
                )
                .to_df()
                .sort_values("row")
                .reset_index(drop=True)
                for fs in (ours, feasts)
            ]
            frames[1]["event_timestamp"] = frames[1]["event_timestamp"].dt.tz_localize(
                "UTC"
            )  # Feast's store drops the zone
            assert frames[0].notna().to_numpy().mean() > 0.5
            pd.testing.assert_frame_equal(
                frames[0], frames[1], check_exact=False, rtol=1e-12, obj=f"{service} full={full}"
            )
    # an entity query, not a DataFrame: Feast's own join
    sql = f"SELECT user_id, event_timestamp FROM {postgres.table_name(prod, 'labels')}"
    frame = ours.get_historical_features(entity_df=sql, features=["health_rolling:steps_mean_7d"]).to_df()
    assert len(frame) == len(read_frame(prod, prod.ingested_dir / "labels.parquet"))


def test_a_missing_database_is_named_and_created_by_ingest(prod, tiny):
    fresh = replace(prod, pg_database=prod.pg_database + "_new")
    where = re.escape(f"{fresh.pg_host}:{fresh.pg_port}")
    with pytest.raises(
        NotIngestedError,
        match=f"database '{fresh.pg_database}' does not exist on {where}; .*ingest --profile production",
    ):
        postgres.connect(fresh)
    try:
        ingest_raw(tiny.write_raw(prod.repo_path / "raw"), fresh)
        assert count(fresh, "users") == 2
    finally:
        with postgres.connect(replace(prod, pg_database="postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{fresh.pg_database}" WITH (FORCE)')


@pytest.mark.slow
def test_dataset_versions_are_saved_datasets_in_the_sql_registry(prod, make_dataset, feast_cli):
    """Feast's SQL registry (a fresh database): registered once, listed by the plain `feast` CLI."""
    from healthmate_features.datasets.registry import DatasetRegistry
    from healthmate_features.datasets.saved import register_versions

    versions = DatasetRegistry.from_settings(prod)
    versions.save(make_dataset(), "risk")
    assert register_versions(prod, "risk") == ["risk@1.0.0"]
    second = versions.save(make_dataset(seed=1), "risk")
    assert register_versions(prod, "risk") == [f"risk@{second}"]  # only what Feast does not list yet
    assert register_versions(prod, "risk") == []
    listed = feast_cli(
        prod.repo_path,
        "-f",
        "feature_store.production.yaml",
        "saved-datasets",
        "list",
        env=env_of(prod) | backend_for(prod).feast_env(),
    )
    assert {"risk@1.0.0", f"risk@{second}"} <= set(listed.split()), listed


def test_latest_rows_by_index_probes_equal_feasts_pull(small_production):
    """Materialization's pull (each user's latest row of the window) by index probes equals Feast's
    own query, view for view, over the whole history and over the last day; probes are chosen for a
    window with many rows per user and Feast's query for one with about one (planner's estimates)."""
    from datetime import timedelta

    from healthmate_features.stores import postgres_lateral as pl

    prod = small_production
    fs = store.open_feature_store(prod)
    config = fs.config
    lo, hi = backend_for(prod).feature_time_range(list(FEATURE_TABLES))
    decided = []
    for view in (v for v in fs.list_feature_views() if v.name in FEATURE_TABLES):
        source = view.batch_source
        table, created, ts = source.get_table_query_string(), source.created_timestamp_column or None, "event_timestamp"
        features = [f.name for f in view.features]
        for start, end in ((lo - timedelta(seconds=1), hi), (hi - timedelta(days=1), hi)):
            with postgres.connect(prod) as conn:
                conn.execute(f"ANALYZE {table}")
                rows, users = conn.execute(
                    f"SELECT count(*), count(DISTINCT user_id) FROM {table} WHERE {ts} BETWEEN %s AND %s", (start, end)
                ).fetchone()
            args = (["user_id"], features, ts, created, start, end)
            want = pl.PostgreSQLOfflineStore.pull_latest_from_table_or_query(config, source, *args).to_arrow()
            want = want.sort_by("user_id")
            probes = pl.latest_rows_query(table, "user_id", features, ts, created, start, end)
            job = pl.PostgreSQLRetrievalJob(
                query=probes, config=config, full_feature_names=False, on_demand_feature_views=None
            )
            assert job.to_arrow().sort_by("user_id").equals(want), (view.name, start)
            ours = pl.LateralPostgreSQLOfflineStore.pull_latest_from_table_or_query(config, source, *args)
            assert ours.to_arrow().sort_by("user_id").equals(want), (view.name, start)
            assert want.num_rows == users
            chosen = pl.probes_pay(config, table, "user_id", ts, start, end)
            if not users:
                continue
            if rows >= 2 * pl.PROBES_FROM_ROWS_PER_KEY * users:
                assert chosen, f"{view.name}: {rows} rows of {users} users in the window, Feast's query chosen"
                decided.append(True)
            elif rows <= users:
                assert not chosen, f"{view.name}: {rows} rows of {users} users in the window, probes chosen"
                decided.append(False)
    assert set(decided) == {True, False}
