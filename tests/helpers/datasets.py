"""A small ProcessedDataset for the registry tests (the `make_dataset` fixture).

A plain function, so that a worker process (which has no fixtures) can build the very same data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from healthmate_features.datasets.dataset import ProcessedDataset


def make_dataset(seed: int = 0, rows: int = 40, columns=("a", "b", "c"), **metadata) -> ProcessedDataset:
    """A small classification training set with joined frames and a fitted scaler pipeline."""
    rng = np.random.default_rng(seed)
    stamps = pd.date_range("2024-01-01", periods=rows, freq="D", tz="UTC", unit="s")
    joined = pd.DataFrame(rng.normal(size=(rows, len(columns))), columns=list(columns))
    joined.insert(0, "user_id", [f"u{i % 7}" for i in range(rows)])
    joined.insert(1, "event_timestamp", stamps)
    joined["label"] = rng.integers(0, 2, rows)
    cut = int(rows * 0.75)
    train, test = joined.iloc[:cut], joined.iloc[cut:]
    pipeline = Pipeline([("scale", StandardScaler())]).set_output(transform="pandas")
    pipeline.fit(train[list(columns)])
    meta = {
        "feature_service": "health_risk_v1",
        "feature_refs": [f"health_daily_fv:{c}" for c in columns],
        "entity_frame_hash": "entity-1",
        "feast_definitions_hash": "defs-1",
        "split_config": {"kind": "time", "cutoff": train["event_timestamp"].max()},
        "preprocessing_config": {"scaling": "standard"},
        "build_spec": {"config": {"name": "demo"}, "entity_source": "labels.parquet"},
        "leakage_report": {"guards": ["time split", "embargo"], "embargo_days": np.int64(30)},
    }
    meta.update(metadata)
    return ProcessedDataset(
        X_train=pipeline.transform(train[list(columns)]),
        X_test=pipeline.transform(test[list(columns)]),
        y_train=train["label"],
        y_test=test["label"],
        feature_names=list(columns),
        pipeline=pipeline,
        metadata=meta,
        joined_train=train,
        joined_test=test,
    )
