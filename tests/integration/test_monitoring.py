"""Feast's data-quality monitoring (`feast monitor run`) on the embedded profile's offline store:
a baseline over all data, then a daily run over data the test shifts, read back from the store."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pytest
from feast.feature_logging import FeatureServiceLoggingSource

from healthmate_features.backends import backend_for
from healthmate_features.crypto import write_parquet
from healthmate_features.stores import feature_store as store
from healthmate_features.stores.duckdb_asof import HealthmateDuckDBOfflineStore
from tests.helpers.files import read_frame

from ..helpers import repos

VIEW, FEATURE = "health_daily", "resting_heart_rate_mean"


@pytest.fixture
def applied(tiny_built, tmp_path):
    settings = replace(tiny_built, repo_path=repos.clone(tiny_built.repo_path, tmp_path / "repo"))
    store.apply(settings)
    return settings


def metrics(fs, **filters) -> pd.DataFrame:
    rows = HealthmateDuckDBOfflineStore.query_monitoring_metrics(
        fs.config, fs.project, "feature", filters={"feature_view_name": VIEW, "feature_name": FEATURE, **filters}
    )
    return pd.DataFrame(rows)


def test_monitor_run_sets_a_baseline_then_sees_drift_in_shifted_data(applied, feast_cli):
    out = feast_cli(applied.repo_path, "monitor", "run", "--set-baseline")
    assert "Status: completed" in out and "Baseline: SET" in out, out
    assert (applied.repo_path / "data" / "feast_monitoring").is_dir()  # beside the other local state
    fs = store.open_feature_store(applied)
    baseline = metrics(fs, is_baseline=True)
    daily = read_frame(applied, applied.features_dir / f"{VIEW}.parquet")  # encrypted at rest
    assert len(baseline) == 1 and baseline["row_count"].iloc[0] == len(daily)
    assert baseline["null_rate"].iloc[0] == pytest.approx(daily[FEATURE].isna().mean())
    assert baseline["mean"].iloc[0] == pytest.approx(daily[FEATURE].mean())

    # A new day whose resting heart rates are 40 bpm higher, appended as a build would (encrypted:
    # Feast's write_to_offline_store reads a source's schema with plain pyarrow first, so it cannot
    # append to an encrypted feature table; README "Security and compliance").
    last = daily["event_timestamp"].max()
    shifted = daily[daily["event_timestamp"] == last].assign(
        event_timestamp=last + timedelta(days=1), **{FEATURE: lambda d: d[FEATURE] + 40}
    )
    table = pa.Table.from_pandas(pd.concat([daily, shifted]), preserve_index=False)
    write_parquet(backend_for(applied).keyring(), table, applied.features_dir / f"{VIEW}.parquet")
    day = (last + timedelta(days=1)).date().isoformat()
    args = ["monitor", "run", "-v", VIEW, "-f", FEATURE, "-g", "daily", "--start-date", day, "--end-date", day]
    out = feast_cli(applied.repo_path, *args)
    assert "Status: completed" in out, out

    runs = metrics(fs, granularity="daily")
    run = runs[runs["metric_date"].astype(str) == day]
    assert len(run) == 1 and run["row_count"].iloc[0] == len(shifted)
    base = baseline.iloc[0]
    drift = (run["mean"].iloc[0] - base["mean"]) / base["stddev"]
    assert drift > 3, f"a +40 bpm shift is {drift:.1f} baseline standard deviations"
    assert run["mean"].iloc[0] == pytest.approx(shifted[FEATURE].mean())

    HealthmateDuckDBOfflineStore.clear_monitoring_baseline(fs.config, fs.project, feature_view_name=VIEW)
    assert metrics(fs, is_baseline=True).empty
    assert HealthmateDuckDBOfflineStore.get_monitoring_max_timestamp(
        fs.config, fs.get_feature_view(VIEW).batch_source, "event_timestamp"
    ).date() == date.fromisoformat(day)


def served_log(fs, service, user_ids: list[int], heart_rates: list[float | None]) -> pa.Table:
    """Rows in Feast's feature-service log schema, as a feature server writes them: every feature
    with its value, event time and status; the resting heart rate feature set from `heart_rates`."""
    schema = FeatureServiceLoggingSource(service, fs.project).get_schema(fs.registry)
    now, n = datetime.now(timezone.utc), len(user_ids)
    columns = {}
    for field in schema:
        if field.name == "user_id":
            columns[field.name] = pa.array(user_ids, field.type)
        elif field.name == "health_rolling__resting_heart_rate_mean_7d":
            columns[field.name] = pa.array(heart_rates, field.type)
        elif field.name.endswith("timestamp"):
            columns[field.name] = pa.array([now] * n, field.type)
        elif field.name == "__log_date":
            columns[field.name] = pa.array([now.date()] * n, field.type)
        elif field.name.endswith("__status"):
            columns[field.name] = pa.array([1] * n, field.type)  # PRESENT
        else:
            columns[field.name] = pa.nulls(n, field.type)
    return pa.table(columns, schema=schema)


def test_served_feature_logs_are_written_and_monitored(applied, feast_cli):
    """Feast's write_logged_features into data/feature_logs/, then `feast monitor run --source-type log`;
    a service with no logs yet is skipped, not an error."""
    fs = store.open_feature_store(applied)
    service = fs.get_feature_service("health_risk_v1")
    fs.write_logged_features(served_log(fs, service, [1, 2, 3], [60.0, 70.0, None]), service)
    fs.write_logged_features(served_log(fs, service, [4], [80.0]), service)
    files = sorted((applied.repo_path / "data" / "feature_logs" / "health_risk_v1").glob("*.parquet"))
    assert len(files) == 2

    out = feast_cli(applied.repo_path, "monitor", "run", "--source-type", "log")
    assert "Status: completed" in out and "Feature services computed: 1" in out, out
    rows = pd.DataFrame(
        HealthmateDuckDBOfflineStore.query_monitoring_metrics(
            fs.config, fs.project, "feature", filters={"data_source_type": "log", "granularity": "daily"}
        )
    )
    served = rows[rows["feature_name"] == "resting_heart_rate_mean_7d"]
    assert len(served) == 1, rows[["feature_view_name", "feature_name"]]
    assert served["row_count"].iloc[0] == 4 and served["null_count"].iloc[0] == 1
    assert served["mean"].iloc[0] == pytest.approx(70.0)
