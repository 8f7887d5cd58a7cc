"""The main job end to end: generate, ingest, build features, apply, materialize, read back.

`run_demo` is what `make demo` runs. It reports through an `echo` callable so the library
does not print by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pandas as pd

from healthmate_features.backends import backend_for, open_sql_store
from healthmate_features.config import Settings
from healthmate_features.datasets.registry import DatasetRegistry
from healthmate_features.features.build import build_features
from healthmate_features.raw.generate import generate
from healthmate_features.raw.ingest import ingest_raw
from healthmate_features.stores import feature_store as store
from healthmate_features.tracking import Tracker
from healthmate_features.training.builder import TrainingSetConfig, build_and_save, summary
from healthmate_features.training.entities import read_entity_frame
from healthmate_features.util.text import format_counts, format_fields, format_value


def demo_user(settings: Settings) -> int:
    """A user worth showing: one with a 7-day resting heart rate on the last day of data."""
    rows = backend_for(settings).query_feature_tables(
        "SELECT user_id FROM {0} WHERE resting_heart_rate_mean_7d IS NOT NULL "
        "ORDER BY event_timestamp DESC, user_id LIMIT 1",
        "health_rolling",
    )
    return int(rows[0][0]) if rows else 1


def training_frame(settings: Settings, labels_path, *, feature_service: str, label: str) -> pd.DataFrame:
    """Point-in-time training frame: the labels file joined through Feast with a feature service."""
    labels = read_entity_frame(labels_path, keyring=backend_for(settings).keyring)[
        ["user_id", "event_timestamp", label]
    ]
    return store.historical_features(settings, labels, feature_service=feature_service)


def summarize_frame(frame: pd.DataFrame, label: str) -> dict:
    """Rows, users, time range, label balance and the share of missing values of a frame."""
    features = [c for c in frame.columns if c not in ("user_id", "event_timestamp", label)]
    return {
        "rows": len(frame),
        "users": int(frame["user_id"].nunique()),
        "features": len(features),
        "time_range": {"start": frame["event_timestamp"].min(), "end": frame["event_timestamp"].max()},
        "label_positive_rate": round(float(frame[label].mean()), 4),
        "missing_share": round(float(frame[features].isna().to_numpy().mean()), 4) if features else 0.0,
    }


def train_baseline(dataset) -> dict[str, float]:
    """Fit a logistic-regression baseline on a dataset's train split; score it and a trivial predictor on test.

    The trivial predictor scores every row with the training positive rate (AUC 0.5).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, roc_auc_score

    model = LogisticRegression(max_iter=2000, class_weight="balanced")
    model.fit(dataset.X_train.to_numpy(), dataset.y_train.to_numpy())
    scores = model.predict_proba(dataset.X_test.to_numpy())[:, 1]
    y = dataset.y_test.to_numpy()
    return {
        "auc": round(float(roc_auc_score(y, scores)), 4),
        "average_precision": round(float(average_precision_score(y, scores)), 4),
        "trivial_auc": 0.5,
        "trivial_average_precision": round(float(y.mean()), 4),
    }


def run_demo(
    settings: Settings,
    *,
    users: int = 500,
    days: int = 270,
    seed: int = 7,
    echo: Callable[[str], None] = print,
    progress: bool = True,
) -> dict:
    """Run the whole pipeline on the settings' profile; return the figures it printed.

    Production: checks Postgres and Redis first (creating the database if needed), then loads
    and builds in Postgres and materializes into Redis.
    """
    raw = settings.raw_dir
    backend = backend_for(settings)
    timings: dict[str, float] = {}

    def step(name: str, fn, *args, **kwargs):
        echo(f"==> {name}")
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - t0, 2)
        return out

    description = backend.describe()
    if description:
        echo(f"    {description}")
        step("check servers", backend.prepare_servers)
    counts = step(
        "generate", generate, raw, users=users, days=days, seed=seed, progress=progress, keyring=backend.keyring()
    )
    echo("    " + ", ".join(f"{k}: {v:,}" for k, v in counts.items()))
    reports, _ = step("ingest", ingest_raw, raw, settings, progress=progress)
    for r in reports:
        echo(
            f"    {r.table}: {r.accepted:,} accepted, {r.rejected:,} rejected"
            + (f" ({format_counts(r.reasons)})" if r.reasons else "")
        )
    tables = step("build-features", build_features, raw, settings, progress=progress)
    echo("    " + ", ".join(f"{k}: {v:,}" for k, v in tables.items()))
    step("feast apply", store.apply, settings, progress=progress)
    materialized = step("materialize", store.materialize, settings, progress=progress)
    end = materialized.end
    echo(f"    window {materialized.start} .. {end}, {len(materialized.views)} feature views")
    user_id = demo_user(settings)
    online = step("online features", store.online_features, settings, user_id, feature_service="health_risk_v1", at=end)
    echo(f"    user {user_id}, feature service health_risk_v1 ({len(online) - 1} features):")
    # Feast groups a service's features in sets: its order (and so the lookup's) changes from process
    # to process. The summary shows the key, then names in alphabetical order, the same every run.
    for name in sorted(online, key=lambda name: (name != "user_id", name))[:12]:
        echo(f"      {name} = {format_value(online[name])}")
    echo(f"      ... (healthmate-features online --user-id {user_id} prints them all)")
    frame = step(
        "training frame",
        training_frame,
        settings,
        settings.ingested_dir / "labels.parquet",
        feature_service="health_risk_v1",
        label="adverse_event_30d",
    )
    frame_summary = summarize_frame(frame, "adverse_event_30d")
    echo("    " + format_fields(frame_summary))
    config = settings.repo_path / "configs" / "health_risk.yaml"
    ref, dataset, created = step("training set", build_and_save, TrainingSetConfig.from_file(config), settings)
    unchanged = "" if created else " (unchanged: the latest version already holds this data)"
    echo(f"    {ref}{unchanged}: " + format_fields(summary(dataset)))
    metrics = step("baseline model", train_baseline, dataset)
    echo(
        f"    logistic regression on {ref}: test AUC {metrics['auc']} (trivial {metrics['trivial_auc']}), "
        f"average precision {metrics['average_precision']} (trivial {metrics['trivial_average_precision']})"
    )
    with open_sql_store(settings) as sql:
        Tracker(sql, datasets=DatasetRegistry.from_settings(settings)).log_metrics(
            "health_risk_baseline",
            version="logreg-1",
            dataset=ref,
            environment="development",
            metrics={"auc": metrics["auc"], "average_precision": metrics["average_precision"]},
            params={"model": "LogisticRegression", "class_weight": "balanced"},
        )
    echo("    logged to model tracking: healthmate-features models history --model health_risk_baseline")
    echo("==> timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    return {
        "counts": counts,
        "tables": tables,
        "online": online,
        "frame": frame_summary,
        "dataset": ref,
        "metrics": metrics,
        "timings": timings,
    }
