"""Production profile: materialization into Redis, online latency, training-set build on Postgres.

    .venv/bin/python bench/materialize.py [--users 10000] [--days 365] [--labels 100000]
        [--raw DIR] [--reuse] [--dir /tmp/hm-bench-production] [--repeats 200]

Needs the Postgres and Redis named by HM_PG_* / HM_REDIS_URL. Uses its own database (default
hm_bench, re-created unless --reuse) and its own Feast project `hm_bench`, whose Redis keys are
deleted at the end. In one run it measures, next to a reference each:

- materialization into Redis, full (whole history but the last day) and incremental (the last
  day, the window a daily `materialize --incremental` writes), in rows/s (one row = one user's
  values of one feature view) and feature values/s;
- online lookups of every feature of a feature service, for 1 and for 100 users, p50/p99: Feast's
  get_online_features, our OnlineReader (healthmate_features.stores.online; checked equal to Feast's) and
  a raw pipelined HGETALL of the same Redis keys (the floor: no decoding), round-robin;
- a point-in-time training frame of `--labels` rows with health_risk_v1 through Feast: our
  offline store (LATERAL join) next to Feast's own Postgres store, checking both are equal.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from _measure import run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "hm_bench"
SERVICE = "health_risk_v1"


def quantiles(seconds: list[float]) -> str:
    ms = np.array(seconds) * 1000
    return f"p50 {np.percentile(ms, 50):7.2f} ms   p99 {np.percentile(ms, 99):7.2f} ms"


def prepare(args, work: Path, env: dict) -> None:
    """Repository copy, raw data, ingest and build-features in Postgres (timed, in fresh processes)."""
    cli = str(Path(sys.executable).parent / "healthmate-features")
    raw = args.raw or work / "raw"
    steps = {}
    if not args.raw:
        steps["generate"] = [
            cli,
            "generate",
            "--users",
            str(args.users),
            "--days",
            str(args.days),
            "--seed",
            "1",
            "--out",
            str(raw),
            "--quiet",
        ]
    steps["ingest (postgres)"] = [cli, "ingest", "--profile", "production", "--raw", str(raw), "--quiet"]
    steps["build-features (postgres)"] = [
        cli,
        "build-features",
        "--profile",
        "production",
        "--raw",
        str(raw),
        "--quiet",
    ]
    steps["apply"] = [cli, "apply", "--profile", "production"]
    print(f"{'step':<28}{'wall s':>10}{'peak MiB':>12}")
    for name, cmd in steps.items():
        wall, peak = run_measured(cmd, cwd=work, env=env)
        print(f"{name:<28}{wall:>10.1f}{peak:>12.0f}")


def materialization(settings, store_mod, postgres) -> None:
    """Full materialization up to the last day, then incremental over the last day."""
    from healthmate_features.backends import backend_for
    from healthmate_features.features.catalog import FEATURE_TABLES

    lo, hi = backend_for(settings).feature_time_range(list(FEATURE_TABLES))

    with postgres.connect(settings) as conn:

        def rows(start, end) -> tuple[int, int]:
            """(users x views, feature values) the window writes: the latest row per user and view."""
            counts = {
                name: conn.execute(
                    f"SELECT count(DISTINCT user_id) FROM {postgres.table_name(settings, name)} "
                    "WHERE event_timestamp > %s AND event_timestamp <= %s",
                    (start, end),
                ).fetchone()[0]
                for name in FEATURE_TABLES
            }
            return sum(counts.values()), sum(n * len(FEATURE_TABLES[name].features) for name, n in counts.items())

        cut = hi - timedelta(days=1)
        (full_rows, full_values), (inc_rows, inc_values) = (
            rows(lo - timedelta(seconds=1), cut),
            rows(cut, hi + timedelta(seconds=1)),
        )
    t0 = time.perf_counter()
    store_mod.materialize(settings, start=lo - timedelta(seconds=1), end=cut)
    full = time.perf_counter() - t0
    t0 = time.perf_counter()  # the window `materialize --incremental` takes next (explicit: --reuse safe)
    store_mod.materialize(settings, start=cut, end=hi + timedelta(seconds=1))
    inc = time.perf_counter() - t0
    print("\nmaterialize into Redis (online_write_batch_size from feature_store.production.yaml)")
    for name, n, values, seconds in (
        ("full, whole history", full_rows, full_values, full),
        ("incremental, last day", inc_rows, inc_values, inc),
    ):
        print(
            f"  {name:<22}{n:>8,} rows {seconds:7.1f} s {n / seconds:>8,.0f} rows/s {values / seconds:>10,.0f} values/s"
        )


def online(settings, store_mod, repeats: int) -> None:
    """Online lookups of a whole feature service: Feast, our OnlineReader, raw pipelined HGETALLs of the same keys.

    The three run round-robin per lookup (same users, same moment); ours is checked equal to Feast's.
    """
    import redis

    from healthmate_features._feast import feast_redis_key
    from healthmate_features.stores.online import OnlineReader

    fs = store_mod.open_feature_store(settings)
    reader = OnlineReader(settings, store=fs)
    service = fs.get_feature_service(SERVICE)
    n_features = sum(len(p.features) for p in service.feature_view_projections)
    client = redis.Redis.from_url(settings.redis_url)
    rng = np.random.default_rng(0)
    at = pd.Timestamp("2025-12-31 12:00", tz="UTC")
    print(f"\nonline lookup, feature service {SERVICE} ({n_features} features), {repeats} lookups each, round-robin")
    for batch in (1, 100):
        users = [rng.integers(1, 10_001, batch).tolist() for _ in range(repeats)]
        times = {"Feast get_online_features": [], "ours (OnlineReader)": [], "raw HGETALL pipeline": []}
        warm = [int(u) for u in users[0]]
        want = fs.get_online_features(
            features=service, entity_rows=[{"user_id": u, "event_timestamp": at} for u in warm]
        ).to_dict()
        assert reader.get(warm, feature_service=SERVICE, at=at) == want, "ours differs from Feast"
        for ids in users:
            ids = [int(u) for u in ids]
            rows = [{"user_id": u, "event_timestamp": at} for u in ids]
            t0 = time.perf_counter()
            fs.get_online_features(features=service, entity_rows=rows).to_dict()
            times["Feast get_online_features"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            reader.get(ids, feature_service=SERVICE, at=at)
            times["ours (OnlineReader)"].append(time.perf_counter() - t0)
            keys = [feast_redis_key(PROJECT, "user_id", u) for u in ids]
            t0 = time.perf_counter()
            with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                values = pipe.execute()
            times["raw HGETALL pipeline"].append(time.perf_counter() - t0)
            assert all(values), "bench keys missing in Redis"
        raw50 = np.percentile(times["raw HGETALL pipeline"], 50)
        for name, seconds in times.items():
            ratio = np.percentile(seconds, 50) / raw50
            print(f"  {batch:>3} user(s)  {name:<26}{quantiles(seconds)}   vs raw at p50: {ratio:5.1f}x")
    reader.close()
    client.close()


def training(settings, store_mod, labels: pd.DataFrame) -> None:
    from healthmate_features.backends import backend_for

    """health_risk_v1 for the label rows through our offline store and through Feast's own Postgres store."""
    from feast import FeatureStore

    ours = store_mod.open_feature_store(settings)
    feasts = FeatureStore(
        repo_path=str(settings.repo_path), config=backend_for(settings).feast_config(offline_store={"type": "postgres"})
    )
    frames, times = {}, {}
    for name, fs in (("ours (LATERAL)", ours), ("Feast's Postgres store", feasts)):
        t0 = time.perf_counter()
        frame = fs.get_historical_features(entity_df=labels, features=fs.get_feature_service(SERVICE)).to_df()
        times[name] = time.perf_counter() - t0
        frames[name] = frame.sort_values("row").reset_index(drop=True)
    a, b = frames.values()
    b["event_timestamp"] = (
        b["event_timestamp"].dt.tz_localize("UTC").astype(a["event_timestamp"].dtype)
    )  # Feast drops the zone
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12)
    print(f"\ntraining frame: {len(labels):,} label rows x {SERVICE} ({a.shape[1]} columns), results equal")
    for name, seconds in times.items():
        print(f"  {name:<24}{seconds:8.1f} s")
    ratio = times["Feast's Postgres store"] / times["ours (LATERAL)"]
    print(f"  Feast's store / ours: {ratio:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--labels", type=int, default=100_000)
    parser.add_argument("--raw", type=Path, default=None, help="use this raw directory instead of generating one")
    parser.add_argument("--reuse", action="store_true", help="keep the database and feature tables of a previous run")
    parser.add_argument("--database", default="hm_bench")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/hm-bench-production"))
    args = parser.parse_args()

    from healthmate_features.backends import backend_for, postgres
    from healthmate_features.config import Settings
    from healthmate_features.features.catalog import FEATURE_TABLES
    from healthmate_features.stores import feature_store as store

    work = args.dir
    if not args.reuse:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    for name in ("feature_store.yaml", "feature_store.production.yaml", ".feastignore"):
        shutil.copy(ROOT / name, work)
    shutil.copytree(
        ROOT / "feature_repo", work / "feature_repo", dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
    )
    yaml_path = work / "feature_store.production.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("project: healthmate", f"project: {PROJECT}"))
    env = {**os.environ, "HM_REPO_PATH": str(work), "HM_PG_DATABASE": args.database, "HM_PROFILE": "production"}
    os.environ.update(env)
    settings = Settings.from_env()
    os.chdir(work)
    print(
        f"production profile at {args.users:,} users x {args.days} days, {os.cpu_count()} cores; "
        f"postgres {settings.pg_host}:{settings.pg_port}/{settings.pg_database}, redis {settings.redis_url}"
    )
    if not args.reuse:
        with postgres.connect(replace(settings, pg_database="postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
        prepare(args, work, env)
    try:
        materialization(settings, store, postgres)
        online(settings, store, args.repeats)
        rng = np.random.default_rng(2)
        _, hi = backend_for(settings).feature_time_range(list(FEATURE_TABLES))
        span = args.days * 86_400  # label times spread over the simulated period
        labels = pd.DataFrame(
            {
                "user_id": rng.integers(1, args.users + 1, args.labels),
                "event_timestamp": (hi - pd.to_timedelta(rng.integers(0, span, args.labels), unit="s")).astype(
                    "datetime64[us, UTC]"
                ),
            }
        ).assign(row=lambda df: np.arange(len(df)))
        training(settings, store, labels)
    finally:
        import redis

        client = redis.Redis.from_url(settings.redis_url)
        keys = list(client.scan_iter(match=f"*{PROJECT}", count=5000))
        for i in range(0, len(keys), 5000):
            client.delete(*keys[i : i + 5000])
        client.close()
    print(f"\npeak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
