"""The main job end to end: generate, ingest, build features, apply, materialize, read back.

`run_demo` is what `make demo` runs. It reports through an `echo` callable so the library
does not print by itself.
"""
from __future__ import annotations

import time
from typing import Callable

import pandas as pd

from . import postgres, profiles, store
from .config import Settings
from .engineering import build_features
from .generate import generate
from .ingest import ingest

DEMO_USER_ID = 1


def training_frame(settings: Settings, labels_path, *, feature_service: str, label: str) -> pd.DataFrame:
    """Point-in-time training frame: the labels file joined through Feast with a feature service."""
    labels = pd.read_parquet(labels_path, columns=["user_id", "event_timestamp", label])
    return store.historical_features(settings, labels, feature_service=feature_service)


def summarize_frame(frame: pd.DataFrame, label: str) -> dict:
    """Rows, users, time range, label balance and the share of missing values of a frame."""
    features = [c for c in frame.columns if c not in ("user_id", "event_timestamp", label)]
    return {
        "rows": len(frame),
        "users": int(frame["user_id"].nunique()),
        "features": len(features),
        "time_range": [str(frame["event_timestamp"].min()), str(frame["event_timestamp"].max())],
        "label_positive_rate": round(float(frame[label].mean()), 4),
        "missing_share": round(float(frame[features].isna().to_numpy().mean()), 4) if features else 0.0,
    }


def _check_servers(settings: Settings) -> None:
    """Create the database if needed, then check that Postgres and Redis answer."""
    postgres.ensure_database(settings)
    profiles.check_services(settings)


def run_demo(
    settings: Settings,
    *,
    users: int = 300,
    days: int = 180,
    seed: int = 7,
    echo: Callable[[str], None] = print,
    progress: bool = True,
) -> dict:
    """Run the whole pipeline on the settings' profile; return the figures it printed.

    Production: checks Postgres and Redis first (creating the database if needed), then loads
    and builds in Postgres and materializes into Redis.
    """
    raw = settings.raw_dir
    production = settings.profile == "production"
    timings: dict[str, float] = {}

    def step(name: str, fn, *args, **kwargs):
        echo(f"==> {name}")
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - t0, 2)
        return out

    if production:
        echo(f"    profile production: postgres {settings.pg_host}:{settings.pg_port}/{settings.pg_database} "
             f"(schema {settings.pg_schema}), redis {settings.redis_url}")
        step("check servers", _check_servers, settings)
    counts = step("generate", generate, raw, users=users, days=days, seed=seed, progress=progress)
    echo("    " + ", ".join(f"{k}: {v:,}" for k, v in counts.items()))
    if production:
        reports, _ = step("ingest", postgres.ingest, raw, settings, progress=progress)
    else:
        reports = step("ingest", ingest, raw, settings.ingested_dir, progress=progress)
    for r in reports:
        echo(f"    {r.table}: {r.accepted:,} accepted, {r.rejected:,} rejected" + (f" {r.reasons}" if r.reasons else ""))
    build = postgres.build_features if production else build_features
    tables = step("build-features", build, raw, settings, progress=progress)
    echo("    " + ", ".join(f"{k}: {v:,}" for k, v in tables.items()))
    step("feast apply", store.apply, settings)
    start, end = step("materialize", store.materialize, settings)
    echo(f"    window {start} .. {end}")
    online = step("online features", store.online_features, settings, DEMO_USER_ID, feature_service="health_risk_v1", at=end)
    echo(f"    user {DEMO_USER_ID}, feature service health_risk_v1 ({len(online) - 1} features):")
    for name in list(online)[:12]:
        echo(f"      {name} = {online[name]}")
    echo(f"      ... (healthmate-features online --user-id {DEMO_USER_ID} prints them all)")
    frame = step(
        "training frame", training_frame, settings, settings.ingested_dir / "labels.parquet",
        feature_service="health_risk_v1", label="adverse_event_30d",
    )
    summary = summarize_frame(frame, "adverse_event_30d")
    echo("    " + ", ".join(f"{k}: {v}" for k, v in summary.items()))
    echo("==> timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    return {"counts": counts, "tables": tables, "online": online, "summary": summary, "timings": timings}
