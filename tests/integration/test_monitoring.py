"""Feast's data-quality monitoring (`feast monitor run`) on the embedded profile's offline store:
a baseline over all data, then a daily run over data the test shifts, read back from the store."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import pandas as pd
import pytest

from healthmate_features.stores import feature_store as store
from healthmate_features.stores.duckdb_asof import HealthmateDuckDBOfflineStore

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
    daily = pd.read_parquet(applied.features_dir / f"{VIEW}.parquet")
    assert len(baseline) == 1 and baseline["row_count"].iloc[0] == len(daily)
    assert baseline["null_rate"].iloc[0] == pytest.approx(daily[FEATURE].isna().mean())
    assert baseline["mean"].iloc[0] == pytest.approx(daily[FEATURE].mean())

    # A new day whose resting heart rates are 40 bpm higher, appended through Feast's offline write.
    last = daily["event_timestamp"].max()
    shifted = daily[daily["event_timestamp"] == last].assign(
        event_timestamp=last + timedelta(days=1), **{FEATURE: lambda d: d[FEATURE] + 40}
    )
    fs.write_to_offline_store(VIEW, shifted)
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
