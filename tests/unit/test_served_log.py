"""Served-feature log rows (monitoring.served_log): what a lookup recorded becomes one row of Feast's
own log schema (FeatureServiceLoggingSource.get_schema over a real file registry, no `feast apply`)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest
from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource, ValueType
from feast.feature_logging import (
    LOG_DATE_FIELD,
    LOG_TIMESTAMP_FIELD,
    REQUEST_ID_FIELD,
    FeatureServiceLoggingSource,
    LoggingConfig,
)
from feast.infra.offline_stores.file_source import FileLoggingDestination
from feast.on_demand_feature_view import on_demand_feature_view
from feast.repo_config import RegistryConfig
from feast.types import Float64, Int64, UnixTimestamp

from healthmate_features.monitoring.served_log import NOT_FOUND, PRESENT, ServedLog, _Rows, _Service

PROJECT = "served_log_test"
FIVE_HOURS_WEST = timezone(timedelta(hours=-5))


@pytest.fixture
def views(tmp_path):
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    daily = FeatureView(
        name="daily",
        entities=[user],
        ttl=timedelta(days=2),
        schema=[Field(name="user_id", dtype=Int64), Field(name="steps", dtype=Float64), Field(name="age", dtype=Int64)],
        source=FileSource(name="daily_source", path=str(tmp_path / "daily.parquet"), timestamp_field="event_timestamp"),
    )
    request_time = RequestSource(name="request_time", schema=[Field(name="event_timestamp", dtype=UnixTimestamp)])

    @on_demand_feature_view(sources=[daily, request_time], schema=[Field(name="doubled", dtype=Float64)], mode="python")
    def temporal(inputs):
        return {"doubled": [s * 2 for s in inputs["steps"]]}

    return user, daily, temporal


def service_and_schema(tmp_path, views, features):
    """A logging feature service of `features` and Feast's log schema of it (from a file registry)."""
    from feast.feature_view import DUMMY_ENTITY
    from feast.infra.registry.registry import Registry

    user, daily, temporal = views
    service = FeatureService(
        name="svc_v1",
        features=features,
        logging_config=LoggingConfig(destination=FileLoggingDestination(path=str(tmp_path / "logs"))),
    )
    registry = Registry(PROJECT, RegistryConfig(path=str(tmp_path / "registry.db")), tmp_path)
    for entity in (DUMMY_ENTITY, user):
        registry.apply_entity(entity, PROJECT)
    registry.apply_feature_view(daily, PROJECT)
    registry.apply_feature_view(temporal, PROJECT)
    registry.apply_feature_service(service, PROJECT)
    return service, FeatureServiceLoggingSource(service, PROJECT).get_schema(registry)


def test_each_lookup_is_one_row_of_feasts_log_schema(tmp_path, views):
    _, daily, temporal = views
    service, schema = service_and_schema(tmp_path, views, [daily, temporal])
    entry = _Service.of(service, 0.0)
    assert entry.logged == ("daily__steps", "daily__age", "temporal__doubled")
    late_evening = datetime(2026, 12, 7, 23, 30, tzinfo=FIVE_HOURS_WEST)  # 04:30 UTC the next day
    served = [
        (3, {"steps": 8000.0, "age": 41, "doubled": 16000.0}, late_evening),
        (5, {"steps": None, "age": 29, "doubled": None}, datetime(2026, 12, 7, 1, 0, tzinfo=timezone.utc)),
        (8, {"steps": math.nan, "age": None}, datetime(2026, 12, 7, 2, 0, tzinfo=timezone.utc)),  # one missing
    ]
    rows = _Rows(entry.logged)
    for user_id, values, at in served:
        rows.users.append(user_id)
        rows.times.append(at)
        rows.values.append(entry.row(values))

    table = ServedLog.table(rows, schema, entry.logged)

    assert table.schema == schema
    got = table.to_pydict()
    assert got["user_id"] == [3, 5, 8]
    assert got["daily__steps"][:2] == [8000.0, None] and math.isnan(got["daily__steps"][2])
    assert got["daily__steps__status"] == [PRESENT, NOT_FOUND, PRESENT]  # NaN is a value; None is not
    assert got["daily__age"] == [41, 29, None] and got["daily__age__status"] == [PRESENT, PRESENT, NOT_FOUND]
    assert got["temporal__doubled"] == [16000.0, None, None]
    assert got["temporal__doubled__status"] == [PRESENT, NOT_FOUND, NOT_FOUND]
    assert got["daily__steps__timestamp"] == [None] * 3  # the online reader returns values, not their times
    utc = [at.astimezone(timezone.utc) for _, _, at in served]
    assert got[LOG_TIMESTAMP_FIELD] == utc
    assert got["event_timestamp"] == [at.replace(tzinfo=None) for at in utc]  # the request field (UTC, no zone)
    assert [str(d) for d in got[LOG_DATE_FIELD]] == ["2026-12-08", "2026-12-07", "2026-12-07"]
    ids = got[REQUEST_ID_FIELD]
    assert len(set(ids)) == 3 and all(len(i) == 32 and i[12] == "4" for i in ids)  # uuid4, one per lookup


def test_rows_recorded_before_a_feature_was_added_log_it_as_not_found(tmp_path, views):
    _, daily, temporal = views
    before = _Service.of(service_and_schema(tmp_path / "before", views, [daily[["steps"]]])[0], 0.0)
    service, schema = service_and_schema(tmp_path / "after", views, [daily, temporal])
    rows = _Rows(before.logged)
    rows.users.append(3)
    rows.times.append(datetime(2026, 12, 7, tzinfo=timezone.utc))
    rows.values.append(before.row({"steps": 8000.0}))

    got = ServedLog.table(rows, schema, _Service.of(service, 0.0).logged).to_pydict()

    assert got["daily__steps"] == [8000.0] and got["daily__steps__status"] == [PRESENT]
    assert got["daily__age"] == [None] and got["daily__age__status"] == [NOT_FOUND]
    assert got["temporal__doubled"] == [None] and got["temporal__doubled__status"] == [NOT_FOUND]


def test_a_service_without_a_logging_config_logs_nothing(views):
    _, daily, _ = views
    assert _Service.of(FeatureService(name="quiet", features=[daily]), 0.0).service is None
    assert _Service.of(None, 0.0).service is None  # an unknown service
