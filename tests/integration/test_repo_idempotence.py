"""A `feast apply` that changes nothing changes nothing we version; request times read alike in every form."""

from __future__ import annotations

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
