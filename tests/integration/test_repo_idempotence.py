"""A `feast apply` that changes nothing changes nothing we version, and `feast plan` says so; request
times read alike in every form."""

from __future__ import annotations

import os
import re

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
