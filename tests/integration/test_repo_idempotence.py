"""A `feast apply` that changes nothing changes nothing we version, and `feast plan` says so; request
times read alike in every form."""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd
import pytest

from healthmate_features.stores import feature_store as store
from healthmate_features.training.builder import definitions_hash

pytestmark = pytest.mark.slow


def test_a_no_op_feast_apply_keeps_the_definitions_hash(tiny_applied, clone_repo, tmp_path):
    settings = clone_repo(tiny_applied, tmp_path / "repo")
    before = {
        s: definitions_hash(store.open_feature_store(settings), s) for s in ("health_risk_v1", "engagement_churn_v1")
    }
    store.apply(settings)  # nothing changed; Feast re-stamps every source's created/updated times
    after = {s: definitions_hash(store.open_feature_store(settings), s) for s in before}
    assert after == before
    # and a real change is still seen: another description of one view's source
    fs = store.open_feature_store(settings)
    service = fs.get_feature_service("health_risk_v1")
    view = fs.get_feature_view(service.feature_view_projections[0].name)
    view.batch_source.description += " (edited)"
    fs.apply([view])
    assert definitions_hash(store.open_feature_store(settings), "health_risk_v1") != before["health_risk_v1"]


def test_epoch_seconds_iso_strings_and_datetimes_give_the_same_temporal_features(small_embedded):
    fs = store.open_feature_store(small_embedded)
    at = pd.Timestamp("2025-12-01T14:40:00Z")
    forms = [int(at.timestamp()), at.isoformat(), at.to_pydatetime()]
    answers = [
        fs.get_online_features(
            features=["temporal:day_of_year", "temporal:hour_sin", "temporal:days_since_signup"],
            entity_rows=[{"user_id": 1, "event_timestamp": form}],
        ).to_dict()
        for form in forms
    ]
    assert answers[0]["day_of_year"] == [335]
    assert answers[0] == answers[1] == answers[2]


@pytest.fixture
def temporal_inputs(monkeypatch):
    """Every Arrow table Feast hands a pandas-mode on-demand transformation during the test.

    A spy, not a stand-in: the transformation runs as usual; the list keeps its input and output."""
    from feast.transformation.pandas_transformation import PandasTransformation

    seen: list[tuple] = []
    transform = PandasTransformation.transform_arrow

    def spy(self, pa_table, features):
        out = transform(self, pa_table, features)
        seen.append((pa_table, out))
        return out

    monkeypatch.setattr(PandasTransformation, "transform_arrow", spy)
    return seen


@pytest.mark.parametrize(
    "profile",
    ["small_embedded", pytest.param("small_production", marks=[pytest.mark.postgres, pytest.mark.redis])],
)
def test_temporal_features_equal_the_dt_formulation_offline_and_online(
    profile, request, temporal_inputs, dt_temporal_reference
):
    """Through our offline store (DuckDB ASOF / Postgres LATERAL), Feast's online read and ours, the
    temporal view computes, on exactly the inputs Feast hands it, the bits the `.dt` formulation gave."""
    settings = request.getfixturevalue(profile)
    rng = np.random.default_rng(11)
    micros = rng.integers(1_735_689_600_000_000, 1_744_000_000_000_000, 40)  # 2025, with microseconds
    labels = pd.DataFrame(
        {
            "user_id": [*range(1, 13), 999] * 3 + [1],
            "event_timestamp": pd.to_datetime(micros, unit="us", utc=True),
        }
    )
    refs = [f"temporal:{name}" for name in ("hour_sin", "dow_cos", "month_sin", "is_weekend", "day_of_year")]
    refs.append("temporal:days_since_signup")
    frame = store.historical_features(settings, labels, features=refs)
    assert frame["days_since_signup"].notna().sum() >= 30  # known users: signup times were joined
    at = pd.Timestamp("2025-03-20 09:30:17.250", tz="UTC")
    online = store.online_features(settings, 3, feature_service="engagement_churn_v1", at=at)
    feast_online = (
        store.open_feature_store(settings)
        .get_online_features(features=refs, entity_rows=[{"user_id": 3, "event_timestamp": at}])
        .to_dict()
    )
    assert online["day_of_year"] == feast_online["day_of_year"][0] == 79
    # our online read runs the view without Feast's Arrow wrapper: its values are Feast's, bit for bit
    for ref in refs:
        name = ref.split(":")[1]
        assert np.float64(online[name]).tobytes() == np.float64(feast_online[name][0]).tobytes(), name
    assert len(temporal_inputs) >= 2  # offline, Feast's online read
    for table, out in temporal_inputs:
        want = dt_temporal_reference.as_feast_pandas_mode(dt_temporal_reference.dt_reference, table)
        assert out.select(want.column_names).equals(want)


CHANGE = re.compile(r"^(?:Created|Updated|Deleted) .*$", re.MULTILINE)  # registry and infrastructure lines


def test_feast_plan_after_apply_and_materialize_shows_no_change_but_shows_a_real_one(
    tiny_applied, clone_repo, tmp_path, feast_apply, feast_cli
):
    settings = clone_repo(tiny_applied, tmp_path / "repo")
    assert CHANGE.findall(feast_cli(settings.repo_path, "plan")) == []  # applied, not yet materialized
    store.materialize(settings)
    intervals = {v.name: v.materialization_intervals for v in store.open_feature_store(settings).list_feature_views()}
    assert all(intervals.values()), intervals

    # Feast's registry holds materialization intervals the repository's views do not: not a change
    out = feast_cli(settings.repo_path, "plan")
    assert CHANGE.findall(out) == [], out
    assert "No changes to registry" in out
    # `feast apply` agrees, and keeps the registry's record of what was materialized
    feast_apply(settings.repo_path)
    after = {v.name: v.materialization_intervals for v in store.open_feature_store(settings).list_feature_views()}
    assert after == intervals

    # a real change is still reported, for that view only
    views = settings.repo_path / "feature_repo" / "feature_views.py"
    views.write_text(views.read_text() + '\nhealth_daily_fv.description = "per user per day (edited)"\n')
    out = feast_cli(settings.repo_path, "plan")
    assert CHANGE.findall(out) == ["Updated feature view health_daily"], out
    assert "(edited)" in out


@pytest.mark.postgres
@pytest.mark.redis
def test_feast_plan_on_the_production_profile_shows_no_change_after_materialize(small_production, feast_cli):
    """The documented plain-CLI path: `eval "$(healthmate-features env)"`, then `feast -f ... plan`."""
    from healthmate_features.backends import backend_for

    assert store.open_feature_store(small_production).list_feature_views()[0].materialization_intervals
    env = {**os.environ, **backend_for(small_production).feast_env()}
    out = feast_cli(small_production.repo_path, "-f", "feature_store.production.yaml", "plan", env=env)
    assert CHANGE.findall(out) == [], out
