"""The feature repository through real Feast: point-in-time joins, on-demand features, materialization, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from feast import FeatureStore

from healthmate_features.cli import main
from healthmate_features.errors import UserNotFoundError
from healthmate_features.features.catalog import FEATURE_TABLES
from healthmate_features.stores import feature_store as store
from tests.helpers.files import read_frame


def test_point_in_time_join_through_feast_never_sees_later_rows(tiny_applied, tiny):
    labels = pd.DataFrame(
        {"user_id": [1, 1, 1], "event_timestamp": [tiny.day(15, 12), tiny.day(15, 0), tiny.day(14, 23.99)]}
    )
    frame = store.historical_features(
        tiny_applied,
        labels,
        features=["health_daily:resting_heart_rate_mean", "health_rolling:resting_heart_rate_max_7d"],
    )  # our offline store keeps the entity rows' order
    # noon of day 15: day 15's own readings (07:00) are not known until midnight -> day 14's row
    assert list(frame.resting_heart_rate_mean) == [tiny.rhr(14), tiny.rhr(14), tiny.rhr(13)]
    assert list(frame.resting_heart_rate_max_7d) == [74, 74, 73]


def test_a_row_known_one_second_after_the_label_time_never_appears_and_ttl_bounds_are_inclusive(tiny_applied, tiny):
    from healthmate_features.training.builder import join_features

    labels = pd.DataFrame(
        {
            "user_id": [1, 1, 2, 2],
            "event_timestamp": [
                tiny.day(15) - pd.Timedelta(seconds=1),  # day 14's row becomes known one second later
                tiny.day(15),  # ... and exactly now
                tiny.day(tiny.LAST_DAY + 3),  # user 2's last row (known at day 40) + the 2-day TTL, exactly
                tiny.day(tiny.LAST_DAY + 3) + pd.Timedelta(seconds=1),  # one second past the TTL
            ],
        }
    )
    frame, _ = join_features(labels, tiny_applied, feature_service="health_risk_v1")
    assert list(frame.resting_heart_rate_max_7d[:2]) == [73, 74]
    assert frame.steps_mean_7d[2] == 4000 and pd.isna(frame.steps_mean_7d[3])


def test_every_joined_value_comes_from_a_row_at_or_before_the_label_time(tiny_applied):
    labels = read_frame(tiny_applied, tiny_applied.ingested_dir / "labels.parquet")
    frame = store.historical_features(
        tiny_applied,
        labels,
        features=["health_rolling:resting_heart_rate_mean_7d", "engagement_daily:engagement_score"],
    )
    for name, feature in (("health_rolling", "resting_heart_rate_mean_7d"), ("engagement_daily", "engagement_score")):
        source = read_frame(tiny_applied, tiny_applied.features_dir / f"{name}.parquet")
        ttl = timedelta(days=FEATURE_TABLES[name].ttl_days)
        for _, row in frame.iterrows():
            rows = source[
                (source.user_id == row.user_id)
                & (source.event_timestamp <= row.event_timestamp)
                & (source.event_timestamp >= row.event_timestamp - ttl)
            ]
            expected = rows.sort_values("event_timestamp")[feature].iloc[-1] if len(rows) else np.nan
            assert (pd.isna(expected) and pd.isna(row[feature])) or row[feature] == pytest.approx(expected), (name, row)


def test_temporal_on_demand_features_at_known_timestamps(tiny_applied):
    labels = pd.DataFrame(
        {"user_id": [1], "event_timestamp": [pd.Timestamp("2025-01-04 18:00", tz="UTC")]}
    )  # a Saturday
    row = store.historical_features(
        tiny_applied,
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


def test_materialized_online_values_equal_the_latest_offline_values(
    tiny_applied, tiny, feature_table, clone_repo, tmp_path
):
    repo = clone_repo(tiny_applied, tmp_path / "repo")  # materializing writes its online store
    store.materialize(repo)
    online = store.online_features(repo, 1, at=tiny.day(40, 12))
    for name in ("health_daily", "health_rolling", "engagement_daily", "profile", "health_weekly"):
        latest = feature_table(repo, name).iloc[-1]
        for feature in FEATURE_TABLES[name].features:
            got, want = online[f"{name}__{feature.name}"], latest[feature.name]
            assert (pd.isna(want) and got is None) or got == pytest.approx(want) or got == want, (
                name,
                feature.name,
                got,
                want,
            )
    assert online["temporal__days_since_signup"] == pytest.approx(40 + 4 / 24)


def _listed(stdout: str) -> dict[str, str]:
    """The rows of a `feast ... list` table: first column (NAME) -> the rest of the row."""
    rows = [line.split(None, 1) for line in stdout.strip().splitlines()[1:]]
    return {row[0]: row[1] if len(row) > 1 else "" for row in rows}


@pytest.mark.slow
def test_feast_cli_lists_the_views_and_services_from_the_repo_root(tiny_applied):
    import subprocess
    import sys
    from pathlib import Path

    feast = str(Path(sys.executable).parent / "feast")
    views = subprocess.run(
        [feast, "feature-views", "list"], cwd=tiny_applied.repo_path, capture_output=True, text=True, timeout=120
    )
    assert views.returncode == 0, views.stderr
    listed = _listed(views.stdout)
    assert set(listed) == {*FEATURE_TABLES, "health_today", "temporal"}, views.stdout
    assert "OnDemandFeatureView" in listed["temporal"]
    services = subprocess.run(
        [feast, "feature-services", "list"], cwd=tiny_applied.repo_path, capture_output=True, text=True, timeout=120
    )
    assert services.returncode == 0, services.stderr
    listed = _listed(services.stdout)
    assert set(listed) == {"health_risk_v1", "engagement_churn_v1"}, services.stdout  # feature_sets.json is empty
    assert "health_rolling:resting_heart_rate_mean_7d" in listed["health_risk_v1"]


@pytest.mark.slow
def test_feature_repo_applies_with_an_empty_or_missing_feature_sets_file(tmp_path, copy_repo, feast_apply):
    root = copy_repo(tmp_path / "repo")
    spec = root / "feature_repo" / "feature_sets.json"
    assert json.loads(spec.read_text()) == {"feature_sets": []}  # as committed
    code_defined = {"health_risk_v1", "engagement_churn_v1"}
    spec.write_text("")
    feast_apply(root)
    assert {s.name for s in FeatureStore(repo_path=str(root)).list_feature_services()} == code_defined
    spec.unlink()
    feast_apply(root)
    assert {s.name for s in FeatureStore(repo_path=str(root)).list_feature_services()} == code_defined


def test_an_unknown_user_is_told_apart_from_a_known_user_without_values(tiny_applied, tiny, clone_repo, tmp_path):
    """SQLite: `found` says whether any view's table holds a row of the user, views outside the service
    included (the reader's one query); the single-user lookup raises for an unknown user."""
    repo = clone_repo(tiny_applied, tmp_path / "repo")
    store.materialize(repo, views=["engagement_daily"])  # users 1 and 2 have rows in no view of health_risk_v1
    at = tiny.day(40, 12)
    result = store.online_lookup(repo, [1, 999, 2, 1], feature_service="health_risk_v1", at=at)
    assert result.found == [True, False, True, True]
    stored = [
        name for name in result.features if name not in ("user_id", "days_since_signup", "month_sin", "month_cos")
    ]
    assert len(stored) > 10 and all(v is None for name in stored for v in result.features[name])  # values alike
    assert store.online_features(repo, 1, feature_service="health_risk_v1", at=at)["age_years"] is None
    with pytest.raises(UserNotFoundError, match=r"^user 999 is not in the online store: no feature view holds a row"):
        store.online_features(repo, 999, feature_service="health_risk_v1", at=at)

    store.materialize(repo)
    every = store.online_lookup(repo, [2, 0, 1], at=at)  # every feature of every view
    assert every.found == [True, False, True]
    assert every.features["profile__age_years"][0] is not None and every.features["profile__age_years"][1] is None
    with pytest.raises(UserNotFoundError, match="user 0 is not in the online store"):
        store.online_features(repo, 0)


def test_cli_online_exits_non_zero_for_an_unknown_user(tiny_applied, clone_repo, tmp_path, monkeypatch):
    repo = clone_repo(tiny_applied, tmp_path / "repo")
    store.materialize(repo)
    monkeypatch.setenv("HM_REPO_PATH", str(repo.repo_path))
    known = CliRunner().invoke(main, ["online", "--user-id", "1", "--feature-service", "health_risk_v1"])
    assert known.exit_code == 0 and "age_years" in known.output, known.output
    unknown = CliRunner().invoke(main, ["online", "--user-id", "999", "--feature-service", "health_risk_v1"])
    assert unknown.exit_code == 1, unknown.output
    assert "Error: user 999 is not in the online store" in unknown.output and "age_years" not in unknown.output


@pytest.mark.slow
def test_a_feature_service_defined_in_code_and_in_feature_sets_json_fails_feast_apply(tmp_path, copy_repo, feast_cli):
    """Feast would keep one of two services of a name and drop the other silently: the apply fails instead,
    naming the service, both places and the fix (the real `feast apply`, and ours)."""
    from healthmate_features.config import Settings
    from healthmate_features.errors import FeatureRepoError

    root = copy_repo(tmp_path / "repo")
    spec = root / "feature_repo" / "feature_sets.json"
    spec.write_text(json.dumps({"feature_sets": [{"name": "health_risk_v1", "features": ["profile"]}]}))
    message = (
        "feature service 'health_risk_v1' is defined twice: in the repository's code "
        "(feature_repo/feature_services.py) and in feature_repo/feature_sets.json; "
        "remove its entry from feature_sets.json or rename one of them"
    )
    feast = subprocess.run(
        [str(Path(sys.executable).parent / "feast"), "apply"], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert feast.returncode != 0 and message in feast.stdout + feast.stderr, feast.stdout + feast.stderr
    with pytest.raises(FeatureRepoError) as failed:
        store.apply(Settings(repo_path=root))
    assert str(failed.value).startswith("`feast apply` failed: " + message) and str(root) not in str(failed.value)
    assert not (root / "data" / "registry.db").exists()  # nothing was applied

    spec.write_text(json.dumps({"feature_sets": [{"name": "profile_only_v1", "features": ["profile"]}]}))
    feast_cli(root, "apply")  # a name of its own applies
    names = {s.name for s in FeatureStore(repo_path=str(root)).list_feature_services()}
    assert names == {"health_risk_v1", "engagement_churn_v1", "profile_only_v1"}
