"""Dataset versions as Feast saved datasets: listed where Feast users look for them.

Every version the training-set builder saves is registered in its profile's Feast registry as
the saved dataset `<name>@<version>` (`feast saved-datasets list`, `feast ui`, Feast's registry
REST API, `FeatureStore.list_saved_datasets()`): the feature service and feature references of the
version, its join key, its time range, tags (the data hash, the manifest's path, the label, row
counts) and as storage the version's joined frames (`joined_*.parquet`: the train and test rows
as joined point-in-time, before preprocessing). The version directory stays the source of
truth; the Feast entry is a pointer to it, written once per version and never changed.

Saved datasets are not definitions of `feature_repo/`: `feast plan` and `feast apply` neither
show nor delete them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
from feast.infra.offline_stores.file_source import SavedDatasetFileStorage
from feast.saved_dataset import SavedDataset

from healthmate_features.backends import backend_for
from healthmate_features.config import Settings
from healthmate_features.datasets.manifest import MANIFEST_FILE
from healthmate_features.datasets.ref import DatasetRef
from healthmate_features.datasets.registry import DatasetRegistry
from healthmate_features.stores import feature_store as store

__all__ = ["JOIN_KEYS", "TAG", "register_versions", "saved_dataset"]

# The training-set builder keys every entity frame by user (training/entities.REQUIRED).
JOIN_KEYS = ["user_id"]
# The tag that marks our entries among a project's saved datasets; its value is the dataset name.
TAG = "healthmate_dataset"
JOINED = ("joined_train.parquet", "joined_test.parquet")


def _shown_path(path: Path, repo_path: Path) -> str:
    """`path` relative to the repository root when it lies inside it (Feast resolves it from there), else absolute."""
    try:
        return Path(os.path.relpath(path, repo_path)).as_posix() if path.is_relative_to(repo_path) else str(path)
    except ValueError:
        return str(path)


def saved_dataset(manifest: dict[str, Any], version_dir: Path, *, repo_path: Path) -> SavedDataset | None:
    """The Feast saved dataset of one version, from its manifest; None for a version Feast did not build.

    A version qualifies when it names its feature service and feature references and holds both
    joined frames (what the training-set builder saves).
    """
    files = manifest.get("files") or {}
    if not manifest.get("feature_service") or not manifest.get("feature_refs") or not all(f in files for f in JOINED):
        return None
    ref = DatasetRef(manifest["name"], manifest["version"])
    rows = manifest.get("row_counts") or {}
    label = (manifest.get("label") or {}).get("name")
    tags = {
        TAG: ref.name,
        "version": ref.version,
        "data_hash": str(manifest.get("data_hash", "")),
        "manifest": _shown_path(version_dir / MANIFEST_FILE, repo_path),
        "label": str(label or ""),
        "rows_train": str(rows.get("train", "")),
        "rows_test": str(rows.get("test", "")),
        "created_at": str(manifest.get("created_at", "")),
    }
    dataset = SavedDataset(
        name=str(ref),
        features=list(manifest["feature_refs"]),
        join_keys=list(JOIN_KEYS),
        storage=SavedDatasetFileStorage(path=_shown_path(version_dir / "joined_*.parquet", repo_path)),
        tags=tags,
        feature_service_name=manifest["feature_service"],
        description=(
            f"healthmate-features dataset version {ref}: the joined train and test rows (keys, event_timestamp, "
            f"label {label!r}, features before preprocessing); the processed splits and the fitted pipeline: "
            f"`healthmate-features datasets load {ref.name} {ref.version}`"
        ),
    )
    span = manifest.get("time_range") or {}
    if span.get("start") and span.get("end"):
        dataset.min_event_timestamp = pd.Timestamp(span["start"]).to_pydatetime()
        dataset.max_event_timestamp = pd.Timestamp(span["end"]).to_pydatetime()
    return dataset


def register_versions(settings: Settings, name: str, *, registry: DatasetRegistry | None = None) -> list[str]:
    """Register every version of dataset `name` that the profile's Feast registry lacks; return their refs.

    Side effect: writes the missing saved datasets to the Feast registry (one commit). A version
    Feast already lists is left as it is, so a re-run registers only what an earlier run missed
    (e.g. after the Feast registry was recreated).
    """
    registry = registry or DatasetRegistry.from_settings(settings)
    backend = backend_for(settings)
    fs = store.open_feature_store(settings)
    with backend.service_errors():
        known = {d.name for d in fs.registry.list_saved_datasets(fs.project, allow_cache=False)}
        added = []
        for version in registry.versions(name):
            ref = str(DatasetRef(name, version))
            if ref in known:
                continue
            dataset = saved_dataset(
                registry.show(name, version), Path(registry.root) / name / version, repo_path=settings.repo_path
            )
            if dataset is not None:
                fs.registry.apply_saved_dataset(dataset, fs.project, commit=False)
                added.append(ref)
        if added:
            fs.registry.commit()
    return added
