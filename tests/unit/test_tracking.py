"""Model tracking on SQLite (the contract of tests/contracts/tracking.py), dataset references and metric directions."""

from __future__ import annotations

import pytest

from healthmate_features.errors import TrackingError
from healthmate_features.tracking import DatasetRef, metric_direction

from ..contracts.tracking import TrackingContract


class TestTrackingOnSqlite(TrackingContract):
    @pytest.fixture
    def backend_settings(self, sqlite_settings):
        return sqlite_settings


def test_dataset_refs_and_directions():
    assert str(DatasetRef.parse("health_risk@v3")) == "health_risk@v3"
    assert DatasetRef.parse("a.b-c@2024-05-01T10.00") == DatasetRef("a.b-c", "2024-05-01T10.00")
    with pytest.raises(TrackingError, match=r"dataset 'name@' is not NAME@VERSION; .* e\.g\. health_risk@1\.0\.0"):
        DatasetRef.parse("name@")
    assert metric_direction("R2") == "higher"
    assert metric_direction("log_loss") == "lower"
    assert metric_direction("ndcg") == "unknown"
    assert metric_direction("ndcg", {"NDCG": True}) == "higher"
