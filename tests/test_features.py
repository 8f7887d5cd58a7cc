"""Feature values against hand-computed fixtures, causality, and the Feast repository end to end."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
import tiny
from tiny import day

from healthmate_features.config import Settings
from healthmate_features.errors import NotIngestedError
from healthmate_features.features.build import build_features
from healthmate_features.features.catalog import FEATURE_TABLES
from healthmate_features.raw.ingest import ingest
from healthmate_features.stores import feature_store as store


def _build(repo, tables=None):
    settings = Settings(repo_path=repo)
    raw = tiny.write_raw(repo / "raw", tables)
    ingest(raw, settings.ingested_dir)
    build_features(raw, settings)
    return settings


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny dataset ingested, built and applied with the real `feast apply` in a repo copy."""
    repo = tiny.copy_repo(tmp_path_factory.mktemp("repo"))
    settings = _build(repo)
    tiny.feast_apply(repo)
    return settings


def table(settings, name, user_id=1):
    df = pd.read_parquet(settings.features_dir / f"{name}.parquet")
    return df[df.user_id == user_id].set_index("event_timestamp").sort_index()


def test_daily_aggregates_are_stamped_at_the_end_of_their_day(built):
    daily = table(built, "health_daily")
    row = daily.loc[day(6)]  # day 5: readings 65 at 07:00 and 80 at 19:00
    assert row.resting_heart_rate_mean == 72.5
    assert (row.resting_heart_rate_min, row.resting_heart_rate_max, row.resting_heart_rate_count) == (65, 80, 2)
    assert row.steps_total == 6000 and row.steps_count == 1
    gap = daily.loc[day(11)]  # day 10 has no heart-rate reading: the dense grid keeps the row
    assert math.isnan(gap.resting_heart_rate_mean) and gap.resting_heart_rate_count == 0
    assert daily.index.min() == day(1) and daily.index.max() == day(tiny.LAST_DAY + 1)
    assert len(daily) == tiny.LAST_DAY + 1  # one row per day from signup to the last day of data


def test_rolling_windows_and_slopes_match_hand_computation(built):
    rolling = table(built, "health_rolling")
    row = rolling.loc[day(15)]  # day 14: the 7-day window holds days 8..14; 10..12 are a gap
    values = [tiny.rhr(d) for d in (8, 9, 13, 14)]
    assert row.resting_heart_rate_mean_7d == pytest.approx(np.mean(values))
    assert row.resting_heart_rate_std_7d == pytest.approx(np.std(values, ddof=1))
    assert (row.resting_heart_rate_min_7d, row.resting_heart_rate_max_7d) == (68, 74)
    assert row.resting_heart_rate_slope_7d == pytest.approx(1.0)  # 60 + day: one bpm per day
    early = rolling.loc[day(6)]  # day 5: the 30-day window holds days 0..5, day 5's mean is 72.5
    assert early.resting_heart_rate_mean_30d == pytest.approx((60 + 61 + 62 + 63 + 64 + 72.5) / 6)
    first = rolling.loc[day(1)]
    assert math.isnan(first.resting_heart_rate_slope_7d)  # one point has no trend
    steps = rolling.loc[day(7)]  # days 0..6: totals 1000..7000
    assert steps.steps_mean_7d == pytest.approx(4000) and steps.steps_slope_7d == pytest.approx(1000)


def test_weekly_and_monthly_aggregates_cover_complete_periods_stamped_at_their_end(built):
    weekly = table(built, "health_weekly")
    week = weekly.loc[pd.Timestamp("2025-01-13", tz="UTC")]  # Mon 6 .. Sun 12 January = days 5..11
    assert week.resting_heart_rate_mean_week == pytest.approx(np.mean([72.5, 66, 67, 68, 69]))
    assert week.resting_heart_rate_days_week == 5
    monthly = table(built, "health_monthly")
    assert list(monthly.index) == [pd.Timestamp("2025-02-01", tz="UTC")]  # February is not complete
    assert monthly.iloc[0].weight_mean_month == pytest.approx(70.5)


def test_engagement_features_match_hand_computation(built):
    eng = table(built, "engagement_daily")
    d3 = eng.loc[day(4)]  # day 3
    assert (d3.active_days_7d, d3.sessions_7d, d3.meals_logged_7d) == (3, 1, 2)  # days 1, 2, 3 active
    assert d3.notification_open_rate_30d == pytest.approx(2 / 3)
    expected = 100 * (0.4 * 3 / 7 + 0.2 * (1 / 14) + 0.2 * (2 / 21) + 0.2 * (2 / 3))
    assert d3.engagement_score == pytest.approx(expected)
    d10 = eng.loc[day(11)]
    assert d10.notification_open_rate_30d == pytest.approx(0.3)
    assert d10.days_since_last_activity == 5  # last opened a notification on day 5
    assert eng.loc[day(1)].days_since_last_activity is None or pd.isna(eng.loc[day(1)].days_since_last_activity)


def test_profile_snapshots_at_signup_and_month_ends(built):
    prof = table(built, "profile")
    assert list(prof.index) == [day(0, 8), pd.Timestamp("2025-02-01", tz="UTC")]
    signup, feb = prof.iloc[0], prof.iloc[1]
    assert signup.age_years == 45 and signup.sex == "female" and signup.has_hypertension == 1
    assert pd.isna(signup.bmi)  # the signup snapshot carries no weight
    assert feb.bmi == pytest.approx(71.0 / 1.7**2)  # the weight of day 31 (1 Feb) is not yet known


def test_no_feature_row_uses_data_after_its_own_timestamp(tmp_path, built):
    """Rebuild from raw data cut at a midnight: every row stamped at or before the cut is unchanged."""
    cut = day(33)
    tables = tiny.raw_tables()
    truncated = dict(tables)
    truncated["health_readings"] = tables["health_readings"][tables["health_readings"].recorded_at < cut]
    truncated["app_events"] = tables["app_events"][tables["app_events"]["at"] < cut]
    short = _build(tmp_path, truncated)
    for name in FEATURE_TABLES:
        full = pd.read_parquet(built.features_dir / f"{name}.parquet")
        part = pd.read_parquet(short.features_dir / f"{name}.parquet")
        full = full[full.event_timestamp <= cut].sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)
        part = part[part.event_timestamp <= cut].sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)
        assert len(full) > 0, name
        pd.testing.assert_frame_equal(full, part, check_dtype=False, obj=name)


def test_build_features_refuses_raw_data_that_was_not_ingested(tmp_path):
    raw = tiny.write_raw(tmp_path / "raw")
    settings = Settings(repo_path=tmp_path)
    with pytest.raises(NotIngestedError, match="was not ingested.*healthmate-features ingest --raw"):
        build_features(raw, settings)
    ingest(raw, settings.ingested_dir)
    changed = tiny.raw_tables()
    changed["users"].loc[0, "birth_year"] = 1981
    tiny.write_raw(raw, changed)
    with pytest.raises(NotIngestedError, match="'users'.*changed since it was ingested"):
        build_features(raw, settings)


def test_point_in_time_join_through_feast_never_sees_later_rows(built):
    labels = pd.DataFrame({"user_id": [1, 1, 1], "event_timestamp": [day(15, 12), day(15, 0), day(14, 23.99)]})
    frame = store.historical_features(
        built, labels, features=["health_daily:resting_heart_rate_mean", "health_rolling:resting_heart_rate_max_7d"]
    )  # our offline store keeps the entity rows' order
    # noon of day 15: day 15's own readings (07:00) are not known until midnight -> day 14's row
    assert list(frame.resting_heart_rate_mean) == [tiny.rhr(14), tiny.rhr(14), tiny.rhr(13)]
    assert list(frame.resting_heart_rate_max_7d) == [74, 74, 73]


def test_a_row_known_one_second_after_the_label_time_never_appears_and_ttl_bounds_are_inclusive(built):
    from healthmate_features.training.builder import join_features

    labels = pd.DataFrame(
        {
            "user_id": [1, 1, 2, 2],
            "event_timestamp": [
                day(15) - pd.Timedelta(seconds=1),  # day 14's row becomes known one second later
                day(15),  # ... and exactly now
                day(tiny.LAST_DAY + 3),  # user 2's last row (known at day 40) + the 2-day TTL, exactly
                day(tiny.LAST_DAY + 3) + pd.Timedelta(seconds=1),  # one second past the TTL
            ],
        }
    )
    frame, _ = join_features(labels, built, feature_service="health_risk_v1")
    assert list(frame.resting_heart_rate_max_7d[:2]) == [73, 74]
    assert frame.steps_mean_7d[2] == 4000 and pd.isna(frame.steps_mean_7d[3])


def test_every_joined_value_comes_from_a_row_at_or_before_the_label_time(built):
    labels = pd.read_parquet(built.ingested_dir / "labels.parquet")
    frame = store.historical_features(
        built, labels, features=["health_rolling:resting_heart_rate_mean_7d", "engagement_daily:engagement_score"]
    )
    for name, feature in (("health_rolling", "resting_heart_rate_mean_7d"), ("engagement_daily", "engagement_score")):
        source = pd.read_parquet(built.features_dir / f"{name}.parquet")
        ttl = timedelta(days=FEATURE_TABLES[name].ttl_days)
        for _, row in frame.iterrows():
            rows = source[
                (source.user_id == row.user_id)
                & (source.event_timestamp <= row.event_timestamp)
                & (source.event_timestamp >= row.event_timestamp - ttl)
            ]
            expected = rows.sort_values("event_timestamp")[feature].iloc[-1] if len(rows) else np.nan
            assert (pd.isna(expected) and pd.isna(row[feature])) or row[feature] == pytest.approx(expected), (name, row)


def test_temporal_on_demand_features_at_known_timestamps(built):
    labels = pd.DataFrame(
        {"user_id": [1], "event_timestamp": [pd.Timestamp("2025-01-04 18:00", tz="UTC")]}
    )  # a Saturday
    row = store.historical_features(
        built,
        labels,
        features=[
            f"temporal:{n}"
            for n in (
                "hour_sin",
                "hour_cos",
                "dow_sin",
                "is_weekend",
                "day_of_year",
                "month_sin",
                "month_cos",
                "days_since_signup",
            )
        ],
    ).iloc[0]
    assert row.hour_sin == pytest.approx(-1) and row.hour_cos == pytest.approx(0, abs=1e-12)
    assert row.dow_sin == pytest.approx(math.sin(2 * math.pi * 5 / 7))
    assert (row.is_weekend, row.day_of_year) == (1, 4)
    assert (row.month_sin, row.month_cos) == (pytest.approx(0), pytest.approx(1))
    assert row.days_since_signup == pytest.approx(3 + 10 / 24)


def test_materialized_online_values_equal_the_latest_offline_values(built):
    store.materialize(built)
    online = store.online_features(built, 1, at=day(40, 12))
    for name in ("health_daily", "health_rolling", "engagement_daily", "profile", "health_weekly"):
        latest = table(built, name).iloc[-1]
        for feature in FEATURE_TABLES[name].features:
            got, want = online[f"{name}__{feature.name}"], latest[feature.name]
            assert (pd.isna(want) and got is None) or got == pytest.approx(want) or got == want, (
                name,
                feature.name,
                got,
                want,
            )
    assert online["temporal__days_since_signup"] == pytest.approx(40 + 4 / 24)


def test_feast_cli_lists_the_views_and_services_from_the_repo_root(built):
    import subprocess
    import sys
    from pathlib import Path

    feast = str(Path(sys.executable).parent / "feast")
    views = subprocess.run(
        [feast, "feature-views", "list"], cwd=built.repo_path, capture_output=True, text=True, timeout=120
    )
    assert views.returncode == 0, views.stderr
    for name in [*FEATURE_TABLES, "temporal"]:
        assert name in views.stdout
    services = subprocess.run(
        [feast, "feature-services", "list"], cwd=built.repo_path, capture_output=True, text=True, timeout=120
    )
    assert "health_risk_v1" in services.stdout and "engagement_churn_v1" in services.stdout
