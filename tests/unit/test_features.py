"""Feature values against hand-computed fixtures, and causality of the build (no Feast needed)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from healthmate_features.config import Settings
from healthmate_features.errors import NotIngestedError
from healthmate_features.features.build import build_features
from healthmate_features.features.catalog import FEATURE_TABLES
from healthmate_features.raw.ingest import ingest
from tests.helpers.files import read_frame


def test_daily_aggregates_are_stamped_at_the_end_of_their_day(tiny_built, tiny, feature_table):
    daily = feature_table(tiny_built, "health_daily")
    row = daily.loc[tiny.day(6)]  # day 5: readings 65 at 07:00 and 80 at 19:00
    assert row.resting_heart_rate_mean == 72.5
    assert (row.resting_heart_rate_min, row.resting_heart_rate_max, row.resting_heart_rate_count) == (65, 80, 2)
    assert row.steps_total == 6000 and row.steps_count == 1
    gap = daily.loc[tiny.day(11)]  # day 10 has no heart-rate reading: the dense grid keeps the row
    assert math.isnan(gap.resting_heart_rate_mean) and gap.resting_heart_rate_count == 0
    assert daily.index.min() == tiny.day(1) and daily.index.max() == tiny.day(tiny.LAST_DAY + 1)
    assert len(daily) == tiny.LAST_DAY + 1  # one row per day from signup to the last day of data


def test_rolling_windows_and_slopes_match_hand_computation(tiny_built, tiny, feature_table):
    rolling = feature_table(tiny_built, "health_rolling")
    row = rolling.loc[tiny.day(15)]  # day 14: the 7-day window holds days 8..14; 10..12 are a gap
    values = [tiny.rhr(d) for d in (8, 9, 13, 14)]
    assert row.resting_heart_rate_mean_7d == pytest.approx(np.mean(values))
    assert row.resting_heart_rate_std_7d == pytest.approx(np.std(values, ddof=1))
    assert (row.resting_heart_rate_min_7d, row.resting_heart_rate_max_7d) == (68, 74)
    assert row.resting_heart_rate_slope_7d == pytest.approx(1.0)  # 60 + day: one bpm per day
    early = rolling.loc[tiny.day(6)]  # day 5: the 30-day window holds days 0..5, day 5's mean is 72.5
    assert early.resting_heart_rate_mean_30d == pytest.approx((60 + 61 + 62 + 63 + 64 + 72.5) / 6)
    first = rolling.loc[tiny.day(1)]
    assert math.isnan(first.resting_heart_rate_slope_7d)  # one point has no trend
    steps = rolling.loc[tiny.day(7)]  # days 0..6: totals 1000..7000
    assert steps.steps_mean_7d == pytest.approx(4000) and steps.steps_slope_7d == pytest.approx(1000)


def test_weekly_and_monthly_aggregates_cover_complete_periods_stamped_at_their_end(tiny_built, feature_table):
    weekly = feature_table(tiny_built, "health_weekly")
    week = weekly.loc[pd.Timestamp("2025-01-13", tz="UTC")]  # Mon 6 .. Sun 12 January = days 5..11
    assert week.resting_heart_rate_mean_week == pytest.approx(np.mean([72.5, 66, 67, 68, 69]))
    assert week.resting_heart_rate_days_week == 5
    monthly = feature_table(tiny_built, "health_monthly")
    assert list(monthly.index) == [pd.Timestamp("2025-02-01", tz="UTC")]  # February is not complete
    assert monthly.iloc[0].weight_mean_month == pytest.approx(70.5)


def test_engagement_features_match_hand_computation(tiny_built, tiny, feature_table):
    eng = feature_table(tiny_built, "engagement_daily")
    d3 = eng.loc[tiny.day(4)]  # day 3
    assert (d3.active_days_7d, d3.sessions_7d, d3.meals_logged_7d) == (3, 1, 2)  # days 1, 2, 3 active
    assert d3.notification_open_rate_30d == pytest.approx(2 / 3)
    expected = 100 * (0.4 * 3 / 7 + 0.2 * (1 / 14) + 0.2 * (2 / 21) + 0.2 * (2 / 3))
    assert d3.engagement_score == pytest.approx(expected)
    d10 = eng.loc[tiny.day(11)]
    assert d10.notification_open_rate_30d == pytest.approx(0.3)
    assert d10.days_since_last_activity == 5  # last opened a notification on day 5
    assert eng.loc[tiny.day(1)].days_since_last_activity is None or pd.isna(
        eng.loc[tiny.day(1)].days_since_last_activity
    )


def test_profile_snapshots_at_signup_and_month_ends(tiny_built, tiny, feature_table):
    prof = feature_table(tiny_built, "profile")
    assert list(prof.index) == [tiny.day(0, 8), pd.Timestamp("2025-02-01", tz="UTC")]
    signup, feb = prof.iloc[0], prof.iloc[1]
    assert signup.age_years == 45 and signup.sex == "female" and signup.has_hypertension == 1
    assert pd.isna(signup.bmi)  # the signup snapshot carries no weight
    assert feb.bmi == pytest.approx(71.0 / 1.7**2)  # the weight of day 31 (1 Feb) is not yet known


def test_no_feature_row_uses_data_after_its_own_timestamp(tmp_path, tiny_built, tiny, build_tiny):
    """Rebuild from raw data cut at a midnight: every row stamped at or before the cut is unchanged."""
    cut = tiny.day(33)
    tables = tiny.raw_tables()
    truncated = dict(tables)
    truncated["health_readings"] = tables["health_readings"][tables["health_readings"].recorded_at < cut]
    truncated["app_events"] = tables["app_events"][tables["app_events"]["at"] < cut]
    short = build_tiny(tmp_path, truncated)
    for name in FEATURE_TABLES:
        full = read_frame(tiny_built, tiny_built.features_dir / f"{name}.parquet")
        part = read_frame(short, short.features_dir / f"{name}.parquet")
        full = full[full.event_timestamp <= cut].sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)
        part = part[part.event_timestamp <= cut].sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)
        assert len(full) > 0, name
        pd.testing.assert_frame_equal(full, part, check_dtype=False, obj=name)


def test_build_features_refuses_raw_data_that_was_not_ingested(tmp_path, tiny):
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
