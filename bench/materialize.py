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
- materialization of the whole history through Feast's own `FeatureStore.materialize` into four
  online stores, one after the other: Feast's stock Redis and SQLite stores and ours (the same
  stores, every value encrypted: stores/encrypted_online.py), rows/s each, with a check that
  Feast reads the same values back from ours as from the stock store; and what sealing alone
  costs per value (AES-256-GCM, `crypto.seal_many`);
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


def materialization(settings, store_mod, postgres) -> tuple[int, int]:
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
        (full_rows, full_values), (inc_rows, inc_values), whole = (
            rows(lo - timedelta(seconds=1), cut),
            rows(cut, hi + timedelta(seconds=1)),
            rows(lo - timedelta(seconds=1), hi + timedelta(seconds=1)),
        )
    t0 = time.perf_counter()
    store_mod.materialize(settings, start=lo - timedelta(seconds=1), end=cut)
    full = time.perf_counter() - t0
    t0 = time.perf_counter()  # the window `materialize --incremental` takes next (explicit: --reuse safe)
    store_mod.materialize(settings, start=cut, end=hi + timedelta(seconds=1))
    inc = time.perf_counter() - t0
    print("\nmaterialize into Redis through our store (encrypting; online_write_batch_size from the YAML)")
    for name, n, values, seconds in (
        ("full, whole history", full_rows, full_values, full),
        ("incremental, last day", inc_rows, inc_values, inc),
    ):
        print(
            f"  {name:<22}{n:>8,} rows {seconds:7.1f} s {n / seconds:>8,.0f} rows/s {values / seconds:>10,.0f} values/s"
        )
    return whole


def online(settings, store_mod, repeats: int, users_n: int, stock=None) -> None:
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
        users = [rng.integers(1, users_n + 1, batch).tolist() for _ in range(repeats)]
        times: dict[str, list[float]] = {
            "Feast, stock store": [],
            "Feast, ours (encrypting)": [],
            "ours (OnlineReader)": [],
            "raw HGETALL pipeline": [],
        }
        warm = [int(u) for u in users[0]]
        want = fs.get_online_features(
            features=service, entity_rows=[{"user_id": u, "event_timestamp": at} for u in warm]
        ).to_dict()
        assert reader.get(warm, feature_service=SERVICE, at=at) == want, "ours differs from Feast"
        for ids in users:
            ids = [int(u) for u in ids]
            rows = [{"user_id": u, "event_timestamp": at} for u in ids]
            if stock is not None:  # Feast's own Redis store, values in plain: the read cost of encryption
                t0 = time.perf_counter()
                stock.get_online_features(features=service, entity_rows=rows).to_dict()
                times["Feast, stock store"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            fs.get_online_features(features=service, entity_rows=rows).to_dict()
            times["Feast, ours (encrypting)"].append(time.perf_counter() - t0)
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
            if not seconds:
                continue
            ratio = np.percentile(seconds, 50) / raw50
            print(f"  {batch:>3} user(s)  {name:<26}{quantiles(seconds)}   vs raw at p50: {ratio:5.1f}x")
    reader.close()
    client.close()


STOCK_REDIS_DB = 15  # Feast's stock Redis store writes the bench project's keys into this database


def feast_store(settings, online: dict):
    """A FeatureStore of the bench repository whose online store section is replaced by `online`
    (tables created on SQLite; our encrypting stores get the backend's keyring)."""
    import yaml
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    from healthmate_features import _feast
    from healthmate_features.backends import backend_for
    from healthmate_features.backends.base import substitute_placeholders

    backend = backend_for(settings)
    raw = substitute_placeholders(yaml.safe_load(backend.feature_store_yaml.read_text()), backend.feast_variables(), "")
    raw["online_store"] = online
    config = RepoConfig(**raw)
    config.repo_path = settings.repo_path
    fs = backend.bind_keyring(FeatureStore(repo_path=str(settings.repo_path), config=config))
    views = [v for v in fs.list_feature_views() if v.online]
    _feast.online_store_of(fs).update(config, [], views, [], fs.list_entities(), partial=False)
    return fs


def online_stores(settings, work: Path, rows: int, values: int, users_n: int) -> dict:
    """The whole history into Feast's stock Redis and SQLite stores and into ours (encrypting), rows/s each."""
    from healthmate_features.backends import backend_for
    from healthmate_features.features.catalog import FEATURE_TABLES

    lo, hi = backend_for(settings).feature_time_range(list(FEATURE_TABLES))
    connection = backend_for(settings).feast_variables()["HM_FEAST_REDIS"]
    stock_redis = ",".join(f"db={STOCK_REDIS_DB}" if p.startswith("db=") else p for p in connection.split(","))
    ttl = 1_209_600
    ours = "healthmate_features.stores.encrypted_online."
    for name in ("online-stock.db", "online-ours.db"):
        (work / "data" / name).unlink(missing_ok=True)
    (work / "data").mkdir(exist_ok=True)
    stores: dict[str, dict] = {
        "Redis, Feast stock": {"type": "redis", "connection_string": stock_redis, "key_ttl_seconds": ttl},
        "Redis, ours (encrypting)": {
            "type": ours + "EncryptedRedisOnlineStore",
            "connection_string": connection,
            "key_ttl_seconds": ttl,
            "profile": "production",
        },
        "SQLite, Feast stock": {"type": "sqlite", "path": str(work / "data" / "online-stock.db")},
        "SQLite, ours (encrypting)": {
            "type": ours + "EncryptedSqliteOnlineStore",
            "path": str(work / "data" / "online-ours.db"),
            "profile": "production",
        },
    }
    print(f"\nmaterialize the whole history through FeatureStore.materialize: {rows:,} rows, {values:,} values")
    opened, seconds = {}, {}
    for name, online in stores.items():
        fs = opened[name] = feast_store(settings, online)
        t0 = time.perf_counter()
        fs.materialize(start_date=lo - timedelta(seconds=1), end_date=hi + timedelta(seconds=1))
        seconds[name] = time.perf_counter() - t0
        rate = f"{rows / seconds[name]:>9,.0f} rows/s {values / seconds[name]:>11,.0f} values/s"
        print(f"  {name:<28}{seconds[name]:7.1f} s {rate}")
    rng = np.random.default_rng(4)
    users = [{"user_id": int(u)} for u in rng.integers(1, users_n + 1, 200)]
    for kind in ("Redis", "SQLite"):
        stock, mine = opened[f"{kind}, Feast stock"], opened[f"{kind}, ours (encrypting)"]
        refs = [f"{v.name}:{f.name}" for v in stock.list_feature_views() for f in v.features]
        want = stock.get_online_features(features=refs, entity_rows=users).to_dict()
        assert mine.get_online_features(features=refs, entity_rows=users).to_dict() == want, f"{kind}: ours differs"
        print(
            f"  {kind}: Feast reads the same {len(refs)} features of {len(users)} users from ours as from stock; "
            f"ours / stock time: {seconds[f'{kind}, ours (encrypting)'] / seconds[f'{kind}, Feast stock']:.2f}x"
        )
    sealing()
    return opened


def sealing(n: int = 200_000) -> None:
    """What sealing alone costs: AES-256-GCM per 9-byte double value (crypto.seal_many) vs serializing it."""
    from healthmate_features.backends import backend_for
    from healthmate_features.config import Settings
    from healthmate_features.crypto import seal_many

    key = backend_for(Settings.from_env()).keyring().active()
    plain = [b"\x29" + np.float64(i).tobytes() for i in range(n)]
    aads = [b"k" * 40 + i.to_bytes(4, "little") for i in range(n)]
    t0 = time.perf_counter()
    seal_many(key, plain, aads)
    spent = time.perf_counter() - t0
    print(f"  sealing alone: {spent / n * 1e6:.2f} us per value ({n / spent:,.0f} values/s on one core)")


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
        rows, values = materialization(settings, store, postgres)
        opened = online_stores(settings, work, rows, values, args.users)
        online(settings, store, args.repeats, args.users, stock=opened["Redis, Feast stock"])
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

        base = settings.redis_url.rsplit("/", 1)[0]
        for client in (redis.Redis.from_url(settings.redis_url), redis.Redis.from_url(f"{base}/{STOCK_REDIS_DB}")):
            keys = list(client.scan_iter(match=f"*{PROJECT}", count=5000))
            for i in range(0, len(keys), 5000):
                client.delete(*keys[i : i + 5000])
            client.close()
    print(f"\npeak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
