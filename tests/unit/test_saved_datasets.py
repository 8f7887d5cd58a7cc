"""A dataset version as a Feast saved dataset, built from its manifest (no Feast registry here)."""

from __future__ import annotations

from datetime import timezone

import pandas as pd
from feast.saved_dataset import SavedDataset

from healthmate_features.datasets.registry import DatasetRegistry
from healthmate_features.datasets.saved import TAG, saved_dataset


def test_a_builder_version_becomes_a_saved_dataset_pointing_at_its_joined_frames(tmp_path, make_dataset):
    registry = DatasetRegistry(tmp_path / "data" / "datasets")
    version = registry.save(make_dataset(), "risk")
    manifest = registry.show("risk", version)
    found = saved_dataset(manifest, tmp_path / "data" / "datasets" / "risk" / version, repo_path=tmp_path)
    assert found is not None
    assert found.name == f"risk@{version}" == "risk@1.0.0"
    assert found.features == manifest["feature_refs"] == ["health_daily_fv:a", "health_daily_fv:b", "health_daily_fv:c"]
    assert found.join_keys == ["user_id"] and found.feature_service_name == "health_risk_v1"
    assert found.storage.file_options.uri == "data/datasets/risk/1.0.0/joined_*.parquet"  # from the repository root
    assert found.tags == {
        TAG: "risk",
        "version": "1.0.0",
        "data_hash": manifest["data_hash"],
        "manifest": "data/datasets/risk/1.0.0/manifest.json",
        "label": "label",
        "rows_train": "30",
        "rows_test": "10",
        "created_at": manifest["created_at"],
    }
    assert (found.min_event_timestamp, found.max_event_timestamp) == (
        pd.Timestamp("2024-01-01", tz=timezone.utc),
        pd.Timestamp("2024-02-09", tz=timezone.utc),
    )
    assert "risk@1.0.0" in found.description and "datasets load risk 1.0.0" in found.description
    assert SavedDataset.from_proto(found.to_proto()).to_proto() == found.to_proto()  # what the registry stores


def test_a_root_outside_the_repository_is_named_by_its_absolute_path(tmp_path, make_dataset):
    registry = DatasetRegistry(tmp_path / "elsewhere")
    version = registry.save(make_dataset(), "risk")
    found = saved_dataset(
        registry.show("risk", version), tmp_path / "elsewhere" / "risk" / version, repo_path=tmp_path / "repo"
    )
    assert found is not None and found.storage.file_options.uri == str(
        tmp_path / "elsewhere/risk/1.0.0/joined_*.parquet"
    )


def test_a_version_feast_did_not_build_is_not_a_saved_dataset(tmp_path, make_dataset):
    registry = DatasetRegistry(tmp_path)
    plain = registry.save(make_dataset(feature_refs=[]), "plain")
    assert saved_dataset(registry.show("plain", plain), tmp_path / "plain" / plain, repo_path=tmp_path) is None
    unjoined = make_dataset()
    unjoined.joined_train = unjoined.joined_test = None
    version = registry.save(unjoined, "unjoined")
    assert (
        saved_dataset(registry.show("unjoined", version), tmp_path / "unjoined" / version, repo_path=tmp_path) is None
    )
