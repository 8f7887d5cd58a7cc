"""Pushed readings (`health_readings_push` -> `health_today`) through Feast's own `store.push`, our
library and our HTTP API: online at once, in the offline store for the next training frame.

Embedded: a copy of the tiny repository, applied with `healthmate-features apply` (which creates
the push table). Production: a fresh Postgres database and Redis prefix (conftest `prod`).
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from feast.data_source import PushMode

from healthmate_features.access.audit import AuditLog
from healthmate_features.access.keys import ApiKeys
from healthmate_features.api.app import PREFIX, create_app
from healthmate_features.backends import open_sql_store
from healthmate_features.config import Settings
from healthmate_features.crypto import file_key_id
from healthmate_features.errors import FeatureRepoError, RawDataError
from healthmate_features.features import pushed
from healthmate_features.stores import feature_store as store

from ..helpers import repos
from ..helpers.files import read_frame

OWN, OTHER = 1, 2
REFS = ["health_today:heart_rate_bpm", "health_today:steps_today"]
CHANGE = re.compile(r"^(?:Created|Updated|Deleted) .*$", re.MULTILINE)


def reading(user_id: int, at: datetime, heart_rate: float, steps: int) -> dict:
    return {"user_id": user_id, "event_timestamp": at, "heart_rate_bpm": heart_rate, "steps_today": steps}


@pytest.fixture
def applied(tiny_built, tmp_path) -> Settings:
    """A private copy of the tiny repository, applied through `healthmate-features apply`'s library call."""
    settings = replace(tiny_built, repo_path=repos.clone(tiny_built.repo_path, tmp_path / "repo"))
    store.apply(settings)
    yield settings
    store.forget_online_reader(settings)


def offline_rows(settings: Settings) -> pd.DataFrame:
    return read_frame(settings, settings.features_dir / f"{pushed.PUSHED_TABLE}.parquet")


def test_apply_creates_the_push_table_and_plan_shows_no_change(applied, feast_cli):
    table = offline_rows(applied)
    assert list(table.columns) == list(pushed.COLUMNS) and len(table) == 0
    # Pushed readings are health data: encrypted; the footer stays readable for Feast's schema check.
    path = applied.features_dir / f"{pushed.PUSHED_TABLE}.parquet"
    assert file_key_id(path) and pq.read_schema(path).names == list(pushed.COLUMNS)
    out = feast_cli(applied.repo_path, "plan")
    assert CHANGE.findall(out) == [], out
    fs = store.open_feature_store(applied)
    view = fs.get_feature_view(pushed.TODAY_VIEW)
    assert view.stream_source.name == pushed.PUSH_SOURCE and view.ttl == timedelta(days=1)
    assert fs.get_feature_service("health_risk_v1").logging_config is not None


def test_feasts_push_reaches_online_then_offline_and_training(applied):
    """Feast's own store.push(..., ONLINE_AND_OFFLINE): the online read, the point-in-time join and
    the entity-less retrieval all see the pushed row; a row pushed twice is one row in retrieval."""
    fs = store.open_feature_store(applied)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    frame = pushed.reading_frame([reading(OWN, now - timedelta(minutes=5), 70.0, 1000)], now=now)
    fs.push(pushed.PUSH_SOURCE, frame, to=PushMode.ONLINE_AND_OFFLINE)
    later = pushed.reading_frame([reading(OWN, now, 75.5, 1500), reading(OTHER, now, 60.0, 10)], now=now)
    fs.push(pushed.PUSH_SOURCE, later, to=PushMode.ONLINE_AND_OFFLINE)
    fs.push(pushed.PUSH_SOURCE, later.iloc[:1], to=PushMode.OFFLINE)  # the same reading again

    online = fs.get_online_features(REFS, [{"user_id": OWN}, {"user_id": OTHER}]).to_dict()
    assert online["heart_rate_bpm"] == [75.5, 60.0] and online["steps_today"] == [1500, 10]
    assert len(offline_rows(applied)) == 4
    with pytest.raises(OSError, match="encrypted"):  # the readings themselves need the key
        pq.read_table(applied.features_dir / f"{pushed.PUSHED_TABLE}.parquet")

    labels = pd.DataFrame({"user_id": [OWN, OWN, OTHER], "event_timestamp": [now - timedelta(minutes=1), now, now]})
    training = store.historical_features(applied, labels, features=REFS)
    assert training["heart_rate_bpm"].tolist() == [70.0, 75.5, 60.0]
    assert training["steps_today"].tolist() == [1000, 1500, 10]

    every = fs.get_historical_features(features=REFS, start_date=now - timedelta(hours=1), end_date=now).to_df()
    assert list(every.columns) == ["user_id", "event_timestamp", "heart_rate_bpm", "steps_today"]
    assert every[["user_id", "heart_rate_bpm"]].values.tolist() == [[OWN, 70.0], [OWN, 75.5], [OTHER, 60.0]]


def test_push_readings_validates_like_ingest_and_writes_nothing_when_invalid(applied):
    now = datetime.now(timezone.utc)
    bad = [
        (reading(OWN, now, 19.0, 10), "reading 0: heart_rate_bpm is outside 25..220 bpm"),
        (reading(OWN, now, 70.0, -1), "steps_today is outside 0..100000 count"),
        (reading(OWN, now.replace(tzinfo=None), 70.0, 1), "event_timestamp must be a time with a time zone"),
        (reading(OWN, now - timedelta(days=2), 70.0, 1), "load older readings with `healthmate-features ingest`"),
        (reading(OWN, now + timedelta(hours=1), 70.0, 1), "ahead of the server's clock"),
        (reading(0, now, 70.0, 1), "user_id must be an integer >= 1"),
        ({"user_id": OWN, "event_timestamp": now, "heart_rate_bpm": 70.0}, "missing steps_today"),
    ]
    for value, message in bad:
        with pytest.raises(RawDataError, match=re.escape(message)):
            pushed.push_readings(applied, [reading(OWN, now, 70.0, 1), value][1:])
    with pytest.raises(RawDataError, match=r"^1 of 2 readings are invalid; reading 1: "):
        pushed.push_readings(applied, [reading(OWN, now, 70.0, 1), reading(OWN, now, 300.0, 1)])
    assert len(offline_rows(applied)) == 0
    assert pushed.push_readings(applied, [reading(OWN, now, 70.0, 1)]) == 1
    assert len(offline_rows(applied)) == 1


def test_push_without_the_view_in_the_registry_says_to_apply(tiny_built, tmp_path, feast_apply):
    settings = replace(tiny_built, repo_path=repos.clone(tiny_built.repo_path, tmp_path / "repo"))
    views = settings.repo_path / "feature_repo" / "feature_views.py"
    views.write_text(views.read_text() + "\ndel health_today_fv\n")
    feast_apply(settings.repo_path)
    with pytest.raises(FeatureRepoError, match="no feature view reads push source 'health_readings_push'"):
        pushed.push_readings(settings, [reading(OWN, datetime.now(timezone.utc), 70.0, 1)])


@pytest.fixture
def api(applied):
    with open_sql_store(applied) as sql:
        keys = ApiKeys(sql)
        secrets = {
            "admin": keys.create_key("admin", name="service").secret,
            "user": keys.create_key("user", user_id=OWN, name="phone").secret,
        }
    with TestClient(create_app(applied), raise_server_exceptions=False) as client:
        yield client, {role: {"Authorization": f"Bearer {secret}"} for role, secret in secrets.items()}


def test_events_endpoint_push_then_read_back_online_and_in_training(api, applied):
    client, keys = api
    now = datetime.now(timezone.utc).replace(microsecond=0)
    body = {"readings": [{**reading(OWN, now, 81.0, 4321), "event_timestamp": now.isoformat()}]}
    response = client.post(f"{PREFIX}/events", json=body, headers=keys["user"])
    assert response.status_code == 200, response.text
    assert response.json() == {"pushed": 1, "push_source": "health_readings_push", "feature_view": "health_today"}

    features = client.get(f"{PREFIX}/features/extract", params={"user_id": OWN}, headers=keys["user"])
    assert features.status_code == 200, features.text
    values = features.json()["features"]
    assert values["health_today__heart_rate_bpm"] == 81.0 and values["health_today__steps_today"] == 4321

    labels = pd.DataFrame({"user_id": [OWN], "event_timestamp": [now + timedelta(seconds=1)]})
    assert store.historical_features(applied, labels, features=REFS)["steps_today"].tolist() == [4321]

    entries = AuditLog(client.app.state.ctx.sql).query(limit=50)
    pushes = [e for e in entries if e.endpoint == f"POST {PREFIX}/events"]
    assert [(e.target, e.status) for e in pushes] == [(f"user:{OWN}", 200)]


def test_events_endpoint_refuses_other_users_and_invalid_readings(api, applied):
    client, keys = api
    now = datetime.now(timezone.utc).isoformat()

    def post(readings: list[dict], role: str = "user"):
        return client.post(f"{PREFIX}/events", json={"readings": readings}, headers=keys[role])

    ok = {"user_id": OWN, "event_timestamp": now, "heart_rate_bpm": 70.0, "steps_today": 5}
    response = post([ok, {**ok, "user_id": OTHER}])
    assert response.status_code == 403, response.text
    assert "may push only its own user's readings; 1 of 2 readings are for other users" in response.json()["detail"]
    assert len(offline_rows(applied)) == 0

    response = post([{**ok, "heart_rate_bpm": 400}])
    assert response.status_code == 422 and response.json()["error"] == "invalid_request"
    assert "readings.0.heart_rate_bpm" in response.json()["detail"]
    response = post([{**ok, "event_timestamp": "2020-01-01T00:00:00Z"}])
    assert response.status_code == 422 and "more than 1 day, 0:00:00 old" in response.json()["detail"]
    response = post([{**ok, "mood": "fine"}])
    assert response.status_code == 422 and "readings.0.mood" in response.json()["detail"]
    assert len(offline_rows(applied)) == 0

    response = post([ok, {**ok, "user_id": OTHER}], role="admin")  # a service (admin) key pushes for anyone
    assert response.status_code == 200 and response.json()["pushed"] == 2
    entries = AuditLog(client.app.state.ctx.sql).query(limit=50)
    targets = [e.target for e in entries if e.endpoint == f"POST {PREFIX}/events" and e.status == 200]
    assert targets == ["push_source:health_readings_push"]


@pytest.mark.postgres
@pytest.mark.redis
def test_production_push_reaches_redis_and_postgres(prod, tiny):
    """The production profile: our Postgres store creates the table on the first push (Feast's own
    Postgres store has no offline writes), COPYs rows in, and its entity-less retrieval sees them."""
    from healthmate_features.backends import postgres
    from healthmate_features.features.build import build_features
    from healthmate_features.raw.ingest import ingest_raw

    raw = tiny.write_raw(prod.repo_path / "raw")
    ingest_raw(raw, prod)
    build_features(raw, prod)
    store.apply(prod)
    with postgres.connect(prod) as conn:
        count = conn.execute(f"SELECT count(*) FROM {prod.pg_schema}.{pushed.PUSHED_TABLE}").fetchone()
    assert count == (0,)

    now = datetime.now(timezone.utc).replace(microsecond=0)
    assert pushed.push_readings(prod, [reading(OWN, now - timedelta(minutes=1), 66.0, 10)]) == 1
    fs = store.open_feature_store(prod)
    frame = pushed.reading_frame([reading(OWN, now, 67.5, 20), reading(OTHER, now, 90.0, 30)], now=now)
    fs.push(pushed.PUSH_SOURCE, frame, to=PushMode.ONLINE_AND_OFFLINE)
    fs.push(pushed.PUSH_SOURCE, frame, to=PushMode.OFFLINE)  # the same readings again

    online = store.online_features(prod, OWN)
    assert online["health_today__heart_rate_bpm"] == 67.5 and online["health_today__steps_today"] == 20
    labels = pd.DataFrame({"user_id": [OWN, OWN], "event_timestamp": [now - timedelta(seconds=1), now]})
    assert store.historical_features(prod, labels, features=REFS)["heart_rate_bpm"].tolist() == [66.0, 67.5]
    every = fs.get_historical_features(features=REFS, start_date=now - timedelta(hours=1), end_date=now).to_df()
    assert list(every.columns) == ["user_id", "event_timestamp", "heart_rate_bpm", "steps_today"]
    assert every[["user_id", "steps_today"]].values.tolist() == [[OWN, 10], [OWN, 20], [OTHER, 30]]


@pytest.mark.postgres
@pytest.mark.redis
def test_production_monitoring_and_what_stays_unsupported(prod, tiny, feast_cli):
    """`feast monitor run` through our Postgres store (Feast's monitoring, inherited); feature logging
    is refused with OfflineStoreUnsupportedError naming the method, the store and the alternative."""
    import os

    from feast.feature_logging import LoggingConfig
    from feast.infra.offline_stores.file_source import FileLoggingDestination

    from healthmate_features.backends import backend_for
    from healthmate_features.errors import OfflineStoreUnsupportedError
    from healthmate_features.features.build import build_features
    from healthmate_features.raw.ingest import ingest_raw
    from healthmate_features.stores.postgres_lateral import LateralPostgreSQLOfflineStore

    raw = tiny.write_raw(prod.repo_path / "raw")
    ingest_raw(raw, prod)
    build_features(raw, prod)
    store.apply(prod)
    env = {**os.environ, **backend_for(prod).feast_env()}
    out = feast_cli(prod.repo_path, "-f", "feature_store.production.yaml", "monitor", "run", "--set-baseline", env=env)
    assert "Status: completed" in out and "Baseline: SET" in out, out
    fs = store.open_feature_store(prod)
    rows = LateralPostgreSQLOfflineStore.query_monitoring_metrics(
        fs.config, fs.project, "feature", filters={"feature_view_name": "health_daily", "is_baseline": True}
    )
    assert rows and all(r["row_count"] > 0 for r in rows)

    # Served-feature logs go to files on this profile too (Feast has no Postgres log destination), encrypted
    logging = LoggingConfig(destination=FileLoggingDestination(path="data/feature_logs/x"))
    LateralPostgreSQLOfflineStore.write_logged_features(fs.config, pa.table({"x": [1]}), None, logging, fs.registry)
    (written,) = (prod.data_dir / "feature_logs" / "x").glob("*.parquet")
    assert file_key_id(written) and read_frame(prod, written)["x"].tolist() == [1]
    partitioned = LoggingConfig(destination=FileLoggingDestination(path="data/feature_logs/y", partition_by=["x"]))
    with pytest.raises(OfflineStoreUnsupportedError) as raised:
        LateralPostgreSQLOfflineStore.write_logged_features(fs.config, pa.table({"x": [1]}), None, partitioned, None)
    assert (raised.value.method, raised.value.store) == ("write_logged_features", "LateralPostgreSQLOfflineStore")
    assert "partition_by" in str(raised.value)
