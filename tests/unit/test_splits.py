"""Leakage-safe splits: each guard holds on constructed frames and bad configs fail clearly."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from healthmate_features.errors import ConfigError, EntityFrameError
from healthmate_features.training.splits import (
    LeakageWarning,
    SplitConfig,
    required_embargo_days,
    split_frame,
)

START = pd.Timestamp("2025-01-01", tz="UTC")


@pytest.fixture
def frame() -> pd.DataFrame:
    """60 users x ~one row a day for a year, a 30%-positive label, two features."""
    rng = np.random.default_rng(7)
    n = 6000
    return pd.DataFrame(
        {
            "user_id": rng.integers(0, 60, n),
            "event_timestamp": START + pd.to_timedelta(rng.integers(0, 365 * 24, n), unit="h"),
            "label": (rng.random(n) < 0.3).astype(int),
            "steps_mean_7d": rng.normal(8000, 1500, n),
            "resting_hr": rng.normal(62, 6, n),
        }
    )


def _balance(labels: pd.Series) -> float:
    return float(labels.mean())


# --------------------------------------------------------------------------- group


def test_group_split_puts_no_user_on_both_sides(frame):
    result = split_frame(frame, {"strategy": "group", "test_size": 0.25, "seed": 3})
    train, test = result.take(frame)
    assert set(train.user_id).isdisjoint(set(test.user_id))
    assert len(train) + len(test) == len(frame)
    report = result.leakage_report
    assert report["users_overlapping"] == 0
    assert report["users_train"] + report["users_test"] == frame.user_id.nunique()
    assert "no user_id on both sides" in report["guards"]
    assert report["warnings"] == []


def test_stratified_group_split_keeps_label_balance(frame):
    result = split_frame(frame, {"strategy": "group", "stratify": True, "test_size": 0.2}, label_column="label")
    train, test = result.take(frame)
    assert set(train.user_id).isdisjoint(set(test.user_id))
    assert abs(_balance(train.label) - _balance(test.label)) < 0.03
    assert result.leakage_report["stratified_folds"] == 5
    assert set(result.leakage_report["label_balance"]) == {"train", "test"}


def test_group_split_is_deterministic_per_seed(frame):
    a = split_frame(frame, {"strategy": "group", "seed": 1})
    b = split_frame(frame, {"strategy": "group", "seed": 1})
    c = split_frame(frame, {"strategy": "group", "seed": 2})
    np.testing.assert_array_equal(a.test_index, b.test_index)
    assert not np.array_equal(a.test_index, c.test_index)


def test_group_split_refuses_null_users(frame):
    frame.loc[[3, 5], "user_id"] = np.nan
    with pytest.raises(EntityFrameError, match=r"'user_id' has 2 null"):
        split_frame(frame, {"strategy": "group"})


# --------------------------------------------------------------------------- time


def test_time_split_respects_embargo_and_counts_excluded_rows(frame):
    config = {"strategy": "time", "cutoff": "2025-10-01T00:00:00Z", "embargo_days": 30}
    result = split_frame(frame, config, feature_window_days=30)
    train, test = result.take(frame)
    embargo = pd.Timedelta(days=30)
    cutoff = pd.Timestamp("2025-10-01", tz="UTC")
    assert train.event_timestamp.max() < test.event_timestamp.min() - embargo
    assert train.event_timestamp.max() < cutoff - embargo
    assert test.event_timestamp.min() >= cutoff
    in_gap = ((frame.event_timestamp >= cutoff - embargo) & (frame.event_timestamp < cutoff)).sum()
    report = result.leakage_report
    assert in_gap > 0
    assert report["excluded_rows"] == {"embargo": in_gap}
    assert report["excluded_rows_total"] == in_gap
    assert report["train_rows"] + report["test_rows"] + in_gap == len(frame)
    assert report["cutoff"] == "2025-10-01T00:00:00+00:00"
    assert report["embargo_start"] == "2025-09-01T00:00:00+00:00"
    assert report["required_embargo_days"] == 30.0
    assert report["short_embargo_allowed"] is False


def test_time_split_default_cutoff_is_test_size_quantile_and_default_embargo_the_window(frame):
    result = split_frame(frame, {"strategy": "time", "test_size": 0.25}, feature_window_days=14)
    report = result.leakage_report
    assert report["cutoff_source"].startswith("quantile 0.75")
    assert report["embargo_days"] == 14.0
    assert abs(report["test_fraction"] - 0.25) < 0.01


def test_label_horizon_extends_the_required_embargo(frame):
    assert required_embargo_days(30, 30) == 60
    result = split_frame(frame, {"strategy": "time", "label_horizon_days": 30}, feature_window_days=30)
    assert result.leakage_report["embargo_days"] == 60.0
    train, test = result.take(frame)
    assert train.event_timestamp.max() < test.event_timestamp.min() - pd.Timedelta(days=60)
    with pytest.raises(ConfigError, match=r"embargo_days=45 is shorter .* = 60 days"):
        split_frame(frame, {"strategy": "time", "label_horizon_days": 30, "embargo_days": 45}, feature_window_days=30)


def test_short_embargo_is_refused_unless_overridden_and_then_reported(frame):
    with pytest.raises(ConfigError, match=r"embargo_days=7 .*allow_short_embargo: true"):
        split_frame(frame, {"embargo_days": 7}, feature_window_days=30)
    with pytest.warns(LeakageWarning, match="embargo_days=7 is shorter"):
        result = split_frame(frame, {"embargo_days": 7, "allow_short_embargo": True}, feature_window_days=30)
    report = result.leakage_report
    assert report["short_embargo_allowed"] is True
    assert any("allow_short_embargo" in w for w in report["warnings"])
    assert not any(g.startswith("embargo") for g in report["guards"])


def test_time_split_needs_a_known_window_or_an_explicit_embargo(frame):
    with pytest.raises(ConfigError, match="pass feature_window_days"):
        split_frame(frame, {"strategy": "time"})
    result = split_frame(frame, {"strategy": "time", "embargo_days": 10})
    assert any("window unknown" in w for w in result.leakage_report["warnings"])


@pytest.mark.parametrize(
    "cutoff, side, fix",
    [
        ("2026-06-01", "test set empty", "move the cutoff earlier"),
        ("2025-01-20", "training set empty", "move the cutoff later"),
    ],
)
def test_empty_side_names_the_cutoff_and_the_fix(frame, cutoff, side, fix):
    with pytest.raises(ConfigError, match=side) as info:
        split_frame(frame, {"cutoff": cutoff}, feature_window_days=30)
    assert pd.Timestamp(cutoff, tz="UTC").isoformat() in str(info.value)
    assert fix in str(info.value)


def test_time_split_reads_a_naive_cutoff_as_utc():
    assert SplitConfig(cutoff="2025-10-01").cutoff == pd.Timestamp("2025-10-01", tz="UTC")
    assert SplitConfig(cutoff="2025-10-01T02:00:00+02:00").cutoff == pd.Timestamp("2025-10-01", tz="UTC")


def test_time_split_refuses_naive_or_null_timestamps(frame):
    naive = frame.assign(event_timestamp=frame.event_timestamp.dt.tz_localize(None))
    with pytest.raises(EntityFrameError, match="not a timezone-aware datetime"):
        split_frame(naive, {}, feature_window_days=30)
    frame.loc[0, "event_timestamp"] = pd.NaT
    with pytest.raises(EntityFrameError, match="1 null timestamp"):
        split_frame(frame, {}, feature_window_days=30)


# --------------------------------------------------------------------------- random


def test_random_split_warns_and_records_the_warning(frame):
    with pytest.warns(LeakageWarning, match="random split.*use strategy 'time' or 'group'"):
        result = split_frame(frame, {"strategy": "random"})
    report = result.leakage_report
    assert report["warnings"] and "same user" in report["warnings"][0]
    assert report["users_overlapping"] > 0
    assert report["test_rows"] == round(0.2 * len(frame))


def test_stratified_random_split_keeps_label_balance(frame):
    with pytest.warns(LeakageWarning):
        result = split_frame(frame, {"strategy": "random", "stratify": True, "seed": 5}, label_column="label")
    train, test = result.take(frame)
    assert abs(_balance(train.label) - _balance(test.label)) < 0.005
    assert set(result.train_index).isdisjoint(result.test_index)


def test_stratify_refuses_a_continuous_label(frame):
    with pytest.raises(ConfigError, match="stratify needs a classification label"):
        split_frame(frame, {"strategy": "random", "stratify": True}, label_column="steps_mean_7d")
    with pytest.raises(ConfigError, match="no label_column"):
        split_frame(frame, {"strategy": "group", "stratify": True})


# --------------------------------------------------------------------------- config/report


@pytest.mark.parametrize(
    "config, message",
    [
        ({"strategy": "kfold"}, "split.strategy is 'kfold'; allowed values: time, group, random"),
        ({"test_sise": 0.2}, "unknown key(s) 'test_sise'; allowed keys: strategy, test_size"),
        ({"test_size": 0}, "split.test_size is 0; it must be a number in (0, 1)"),
        ({"embargo_days": -1}, "split.embargo_days is -1; it must be a number in [0, 36500]"),
        ({"strategy": "group", "embargo_days": 30}, "applies to strategy 'time' only"),
        ({"strategy": "random", "cutoff": "2025-10-01"}, "split.cutoff is set (2025-10-01T00:00:00"),
        ({"strategy": "time", "stratify": True}, "cannot be stratified"),
        ({"stratify": "yes"}, "split.stratify is 'yes'; allowed values: true, false"),
        ({"cutoff": "next tuesday"}, "split.cutoff 'next tuesday' is not a timestamp"),
        ({"seed": 1.5}, "split.seed is 1.5; it must be an integer"),
        # ranges: nothing that passes overflows later (a Timedelta, numpy's seed)
        ({"embargo_days": 1e308}, "split.embargo_days is 1e+308; it must be a number in [0, 36500]"),
        ({"embargo_days": float("inf")}, "split.embargo_days is inf; it must be a number in [0, 36500]"),
        ({"embargo_days": 10**400}, "split.embargo_days is 1000000000000000000000000000000000000...; it must be"),
        ({"label_horizon_days": 36501}, "split.label_horizon_days is 36501; it must be a number in [0, 36500]"),
        ({"label_horizon_days": float("nan")}, "split.label_horizon_days is nan; it must be a number"),
        ({"test_size": True}, "split.test_size is True; it must be a number in (0, 1)"),
        ({"strategy": "random", "seed": -1}, "split.seed is -1; it must be an integer in [0, 4294967295]"),
        ({"strategy": "random", "seed": 2**70}, "split.seed is 1180591620717411303424; it must be an integer in [0, "),
        ({"cutoff": "1677-09-22"}, "split.cutoff is '1677-09-22'; it must be from 1900-01-01 to before 2200-01-01"),
        ({"cutoff": "2262-04-11T00:00:00Z"}, "split.cutoff is '2262-04-11T00:00:00Z'; it must be from 1900-01-01"),
    ],
)
def test_bad_split_configs_name_key_value_and_allowed(config, message):
    with pytest.raises(ConfigError) as info:
        SplitConfig.from_dict(config)
    assert message in str(info.value)


def test_config_round_trips_through_a_plain_dict():
    config = SplitConfig.from_dict({"cutoff": "2025-10-01T00:00:00Z", "embargo_days": 30, "label_horizon_days": None})
    data = config.to_dict()
    assert data["cutoff"] == "2025-10-01T00:00:00+00:00"
    assert json.loads(json.dumps(data)) == data
    assert SplitConfig.from_dict(data) == config


@pytest.mark.parametrize(
    "config",
    [
        {"strategy": "time"},
        {"strategy": "group", "stratify": True},
        {"strategy": "random", "stratify": True},
    ],
)
def test_leakage_report_is_json_and_indices_are_sorted_positions(frame, config):
    labelled = frame.set_index(frame.index * 10)  # index labels 0, 10, 20, ...: positions must not be labels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LeakageWarning)
        result = split_frame(labelled, config, label_column="label", feature_window_days=30)
    report = result.leakage_report
    assert json.loads(json.dumps(report)) == report  # plain JSON types only: it survives the round trip
    for index in (result.train_index, result.test_index):
        assert index.dtype.kind == "i" and np.all(np.diff(index) > 0) and index.min() >= 0 and index.max() < len(frame)
    assert set(result.train_index).isdisjoint(result.test_index)
    assert (len(result.train_index), len(result.test_index)) == (report["train_rows"], report["test_rows"])
    assert report["train_rows"] + report["test_rows"] + report["excluded_rows_total"] == len(frame)  # every row counted
    train, test = result.take(labelled)
    assert list(train.index) == list(labelled.index[result.train_index])  # take() reads positions
    assert list(test.index) == list(labelled.index[result.test_index])
    for key in ("strategy", "train_rows", "test_rows", "excluded_rows", "users_overlapping", "guards", "warnings"):
        assert key in report
    assert report["strategy"] == config["strategy"]
