"""healthmate_features: HealthMate's feature store and training-data builder on Feast.

The public API, importable from the package itself; everything else is internal and may change:

    from healthmate_features import Settings, build_and_save, TrainingSetConfig, DatasetRegistry

Names are resolved on first use (PEP 562), so `import healthmate_features` stays cheap: Feast
imports our offline stores through this package, and a CLI call should not load pandas first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from healthmate_features.monitoring.multiprocess import share_values_with_children as _share_metric_values

__version__ = "0.1.0"

# Before anything imports prometheus_client: metric values go to files that this process shares with
# its children (a prefork worker's, several `serve` workers), so a metrics endpoint sums them all.
_share_metric_values()

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # settings, profiles and stores
    "Settings": "healthmate_features.config",
    "PROFILES": "healthmate_features.config",
    "Backend": "healthmate_features.backends",
    "backend_for": "healthmate_features.backends",
    "open_sql_store": "healthmate_features.backends",
    "open_feature_store": "healthmate_features.stores.feature_store",
    "online_features": "healthmate_features.stores.feature_store",
    "online_lookup": "healthmate_features.stores.feature_store",
    "historical_features": "healthmate_features.stores.feature_store",
    "OnlineReader": "healthmate_features.stores.online",
    "OnlineResult": "healthmate_features.stores.online",
    # raw data and features
    "generate": "healthmate_features.raw.generate",
    "ingest_raw": "healthmate_features.raw.ingest",
    "build_features": "healthmate_features.features.build",
    # training sets and dataset versions
    "TrainingSetConfig": "healthmate_features.training.builder",
    "build_training_set": "healthmate_features.training.builder",
    "build_and_save": "healthmate_features.training.builder",
    "rebuild": "healthmate_features.training.builder",
    "refit_preprocessing": "healthmate_features.training.builder",
    "split_frame": "healthmate_features.training.splits",
    "build_pipeline": "healthmate_features.training.preprocessing",
    "fit_transform_splits": "healthmate_features.training.preprocessing",
    "ProcessedDataset": "healthmate_features.datasets.dataset",
    "data_hash": "healthmate_features.datasets.dataset",
    "DatasetRegistry": "healthmate_features.datasets.registry",
    # tracking, access, serving, the demo
    "Tracker": "healthmate_features.tracking",
    "ApiKeys": "healthmate_features.access.keys",
    "AuditLog": "healthmate_features.access.audit",
    "create_app": "healthmate_features.api.app",
    "JobQueue": "healthmate_features.jobs",
    "run_demo": "healthmate_features.demo",
    # governance
    "erase_user": "healthmate_features.governance.erasure",
    "scan_user": "healthmate_features.governance.erasure",
    # errors
    "HealthmateError": "healthmate_features.errors",
    "ConfigError": "healthmate_features.errors",
    "RawDataError": "healthmate_features.errors",
    "NotIngestedError": "healthmate_features.errors",
    "FeatureRepoError": "healthmate_features.errors",
    "FeatureServiceNotFoundError": "healthmate_features.errors",
    "EntityFrameError": "healthmate_features.errors",
    "PreprocessingError": "healthmate_features.errors",
    "DatasetVersionError": "healthmate_features.errors",
    "DatasetNotFoundError": "healthmate_features.errors",
    "ServiceUnavailableError": "healthmate_features.errors",
    "StoreError": "healthmate_features.errors",
    "TrackingError": "healthmate_features.errors",
    "OfflineStoreError": "healthmate_features.errors",
    "OnlineReadError": "healthmate_features.errors",
    "UserNotFoundError": "healthmate_features.errors",
    "ErasureError": "healthmate_features.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'healthmate_features' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from healthmate_features.access.audit import AuditLog
    from healthmate_features.access.keys import ApiKeys
    from healthmate_features.api.app import create_app
    from healthmate_features.backends import Backend, backend_for, open_sql_store
    from healthmate_features.config import PROFILES, Settings
    from healthmate_features.datasets.dataset import ProcessedDataset, data_hash
    from healthmate_features.datasets.registry import DatasetRegistry
    from healthmate_features.demo import run_demo
    from healthmate_features.errors import (
        ConfigError,
        DatasetNotFoundError,
        DatasetVersionError,
        EntityFrameError,
        ErasureError,
        FeatureRepoError,
        FeatureServiceNotFoundError,
        HealthmateError,
        NotIngestedError,
        OfflineStoreError,
        OnlineReadError,
        PreprocessingError,
        RawDataError,
        ServiceUnavailableError,
        StoreError,
        TrackingError,
        UserNotFoundError,
    )
    from healthmate_features.features.build import build_features
    from healthmate_features.governance.erasure import erase_user, scan_user
    from healthmate_features.jobs import JobQueue
    from healthmate_features.raw.generate import generate
    from healthmate_features.raw.ingest import ingest_raw
    from healthmate_features.stores.feature_store import (
        historical_features,
        online_features,
        online_lookup,
        open_feature_store,
    )
    from healthmate_features.stores.online import OnlineReader, OnlineResult
    from healthmate_features.tracking import Tracker
    from healthmate_features.training.builder import (
        TrainingSetConfig,
        build_and_save,
        build_training_set,
        rebuild,
        refit_preprocessing,
    )
    from healthmate_features.training.preprocessing import build_pipeline, fit_transform_splits
    from healthmate_features.training.splits import split_frame
