"""Production profile: materialization into Redis, online latency, training-set build on Postgres.

    .venv/bin/python bench/materialize.py [--users 10000] [--days 365] [--labels 100000]
        [--raw DIR] [--reuse] [--dir /tmp/hm-bench-production] [--repeats 200] [--sample 1000]
        [--materialize-repeats 1] [--skip-training] [--skip-embedded]

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
  online stores, one after the other: Feast's stock Redis and SQLite stores with Feast's local
  engine (the reference) and ours (encrypting, stores/encrypted_online.py) with our engine
  (stores/online_engine.py, the YAML's `batch_engine`), rows/s each, next to the raw write floor
  of the same bytes (a pipelined HSET + EXPIRE loop in Python, Redis: of the stock layout and of
  ours; SQLite: an executemany upsert of ours' rows); then every row ours stored is opened and
  compared with the stock store's values byte for byte (Redis: same keys, `_ts` timestamps and
  key TTL too), and Feast's reads of `--sample` users through both are compared value for value;
  and what sealing alone costs per value (AES-256-GCM, `crypto.seal_many`); ours and the floors
  run `--materialize-repeats` times (medians printed), Feast's stock stores once; each Redis run
  starts with the project's keys deleted (both stores skip a row no newer than the stored one, so
  a run over stored rows would write nothing);
- the embedded profile end to end (unless --skip-embedded): the same raw data ingested and built
  with DuckDB in `<dir>/embedded`, then the whole history through `FeatureStore.materialize` from
  our DuckDB offline store into Feast's stock SQLite store (Feast's engine) and into ours
  (encrypting, our engine), the raw write floor and the same byte-for-byte and Feast-read checks;
- a point-in-time training frame of `--labels` rows with health_risk_v1 through Feast: our
  offline store (LATERAL join) next to Feast's own Postgres store, checking both are equal.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import shutil
import statistics
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
    clear_redis(settings)  # (--reuse: a previous run's rows would be skipped, not written)
    t0 = time.perf_counter()
    store_mod.materialize(settings, start=lo - timedelta(seconds=1), end=cut)
    full = time.perf_counter() - t0
    t0 = time.perf_counter()  # the window `materialize --incremental` takes next (explicit: --reuse safe)
    store_mod.materialize(settings, start=cut, end=hi + timedelta(seconds=1))
    inc = time.perf_counter() - t0
    # (wall time: Postgres and Redis work in their own processes on the same cores)
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


def clear_redis(settings, db: int | None = None) -> None:
    """Delete the bench project's keys in the Redis database of HM_REDIS_URL (or database `db`): a
    measured materialization writes every row (Redis skips a row no newer than the stored one)."""
    import redis

    url = settings.redis_url if db is None else f"{settings.redis_url.rsplit('/', 1)[0]}/{db}"
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"*{PROJECT}", count=5000))
    for i in range(0, len(keys), 5000):
        client.delete(*keys[i : i + 5000])
    client.close()


FLOOR_SUFFIX = b":floor"  # the raw write floor writes copies of the keys under this suffix (same database 15)


def feast_store(settings, online: dict, engine: str | None = None):
    """A FeatureStore of the bench repository whose online store section is replaced by `online`
    (and its batch engine by `engine`, else the YAML's; tables created on SQLite; our encrypting
    stores get the backend's keyring)."""
    import yaml
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    from healthmate_features import _feast
    from healthmate_features.backends import backend_for
    from healthmate_features.backends.base import substitute_placeholders

    backend = backend_for(settings)
    raw = substitute_placeholders(yaml.safe_load(backend.feature_store_yaml.read_text()), backend.feast_variables(), "")
    raw["online_store"] = online
    if engine is not None:
        raw["batch_engine"] = {"type": engine}
    config = RepoConfig(**raw)
    config.repo_path = settings.repo_path
    fs = backend.bind_keyring(FeatureStore(repo_path=str(settings.repo_path), config=config))
    views = [v for v in fs.list_feature_views() if v.online]
    _feast.online_store_of(fs).update(config, [], views, [], fs.list_entities(), partial=False)
    return fs


def load() -> str:
    """The machine's load averages (1, 5, 15 min), printed next to timings (other work shares the cores)."""
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def online_stores(
    settings,
    work: Path,
    rows: int | None,
    values: int | None,
    users_n: int,
    sample: int,
    repeats: int = 1,
    kinds: tuple[str, ...] = ("Redis", "SQLite"),
) -> dict:
    """The whole history through Feast's `FeatureStore.materialize` into Feast's stock Redis and SQLite
    stores (Feast's engine) and into ours (encrypting, our engine), rows/s each, next to the raw
    write floor of the same bytes; then every stored row of ours checked against the stock store's
    values, and Feast's reads of `sample` users through both compared value for value. Ours and
    the floors run `repeats` times (the median is the figure), the stock stores once. `kinds`:
    the online stores to measure (the embedded profile: SQLite only). `rows` and `values` None:
    counted in the stock store after its run (`stored_rows`)."""
    from healthmate_features.backends import backend_for
    from healthmate_features.features.catalog import FEATURE_TABLES

    lo, hi = backend_for(settings).feature_time_range(list(FEATURE_TABLES))
    ttl = 1_209_600
    ours = "healthmate_features.stores.encrypted_online."
    for name in ("online-stock.db", "online-ours.db", "online-floor.db"):
        for suffix in ("", "-wal", "-shm"):
            (work / "data" / f"{name}{suffix}").unlink(missing_ok=True)
    (work / "data").mkdir(exist_ok=True)
    stores: dict[str, tuple[dict, str | None]] = {}
    if "Redis" in kinds:
        connection = backend_for(settings).feast_variables()["HM_FEAST_REDIS"]
        stock_redis = ",".join(f"db={STOCK_REDIS_DB}" if p.startswith("db=") else p for p in connection.split(","))
        stores["Redis, Feast stock"] = (
            {"type": "redis", "connection_string": stock_redis, "key_ttl_seconds": ttl},
            "local",
        )
        stores["Redis, ours (encrypting)"] = (
            {
                "type": ours + "EncryptedRedisOnlineStore",
                "connection_string": connection,
                "key_ttl_seconds": ttl,
                "profile": settings.profile,
            },
            None,
        )
    if "SQLite" in kinds:
        stores["SQLite, Feast stock"] = ({"type": "sqlite", "path": str(work / "data" / "online-stock.db")}, "local")
        stores["SQLite, ours (encrypting)"] = (
            {
                "type": ours + "EncryptedSqliteOnlineStore",
                "path": str(work / "data" / "online-ours.db"),
                "profile": settings.profile,
            },
            None,
        )
    counts = f"{rows:,} rows (users x views), {values:,} values" if rows is not None else "rows counted below"
    print(
        f"\nmaterialize the whole history through FeatureStore.materialize: {counts}; stock stores with "
        f"Feast's engine, ours with ours (x{repeats}, median); {load()}"
    )
    opened, seconds = {}, {}
    for name, (online, engine) in stores.items():
        fs = opened[name] = feast_store(settings, online, engine)
        walls, cpus = [], []
        for _ in range(1 if engine == "local" else repeats):
            if name.startswith("Redis"):  # every run writes every row (a stored row as new is skipped)
                clear_redis(settings, STOCK_REDIS_DB if engine == "local" else None)
            t0, c0 = time.perf_counter(), time.process_time()
            with contextlib.redirect_stdout(io.StringIO()):  # Feast prints a line per view
                fs.materialize(start_date=lo - timedelta(seconds=1), end_date=hi + timedelta(seconds=1))
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        seconds[name], cpu = statistics.median(walls), statistics.median(cpus)
        if rows is None or values is None:
            rows, values = stored_rows(fs)
            print(f"  the window: {rows:,} rows (users x views), {values:,} values")
        rate = f"{rows / seconds[name]:>9,.0f} rows/s {values / seconds[name]:>11,.0f} values/s"
        each = f"; runs {', '.join(f'{w:.2f}' for w in walls)} s" if len(walls) > 1 else ""
        print(f"  {name:<34}{seconds[name]:7.2f} s {rate}   (CPU of this process {cpu:5.2f} s{each})")
        if name.startswith("Redis, ours"):
            floor = floor_redis(settings, opened, rows, ttl, repeats)
            print(f"    ours at {seconds[name] / floor:.2f}x the floor's time of our layout")
        if name.startswith("SQLite, ours"):
            floor = floor_sqlite(opened[name], work / "data" / "online-floor.db", rows, repeats)
            print(f"    ours at {seconds[name] / floor:.2f}x the floor's time")
    for kind in kinds:
        ratio = seconds[f"{kind}, Feast stock"] / seconds[f"{kind}, ours (encrypting)"]
        print(f"  {kind}: ours is {ratio:.1f}x Feast's stock path")
    rng = np.random.default_rng(4)
    users = [{"user_id": int(u)} for u in rng.choice(np.arange(1, users_n + 1), min(sample, users_n), replace=False)]
    for kind in kinds:
        stock, mine = opened[f"{kind}, Feast stock"], opened[f"{kind}, ours (encrypting)"]
        compared = same_stored(settings, kind, stock, mine)
        refs = [f"{v.name}:{f.name}" for v in stock.list_feature_views() for f in v.features]
        want = stock.get_online_features(features=refs, entity_rows=users).to_dict()
        got = mine.get_online_features(features=refs, entity_rows=users).to_dict()
        assert list(got) == list(want), f"{kind}: ours answers other columns"
        for column, values_ in want.items():
            for x, y in zip(got[column], values_, strict=True):
                assert type(x) is type(y) and (x == y or (x != x and y != y)), f"{kind}: ours differs in {column}"
        print(
            f"  {kind}: every stored row of ours holds the stock store's {compared:,} values, byte for byte; "
            f"Feast reads the same {len(refs)} features of {len(users)} users from both"
        )
    sealing()
    return opened


def floor_redis(settings, opened: dict, rows: int, ttl: int, repeats: int = 1) -> float:
    """The raw write floor: a pipelined HSET (+ EXPIRE) loop in Python of bytes ready to store, in
    batches of 2,000: the stock layout (a field per feature) and ours (two fields per view), each
    `repeats` times; the median seconds of ours."""
    import redis

    from healthmate_features import _feast
    from healthmate_features.stores.encrypted_online import redis_row_field

    base = settings.redis_url.rsplit("/", 1)[0]
    ours_client, floor = redis.Redis.from_url(settings.redis_url), redis.Redis.from_url(f"{base}/{STOCK_REDIS_DB}")
    stock_fs = opened["Redis, Feast stock"]
    project = stock_fs.project.encode()
    keys = list(ours_client.scan_iter(match=b"*" + project, count=5000))
    stored_ours = fetch_hashes(ours_client, keys)
    stored_stock = fetch_hashes(floor, keys)
    views = {  # `_ts:<view>` -> the view's other fields, in each layout
        _feast.redis_timestamp_field(v.name): {
            "stock": [_feast.redis_field(v.name, f.name) for f in v.features],
            "ours": [redis_row_field(v.name)],
        }
        for v in stock_fs.list_feature_views()
    }
    for label, stored, layout in (("stock layout", stored_stock, "stock"), ("ours", stored_ours, "ours")):
        writes = []  # (key, mapping) per user and view: what one row's write sends
        for key, fields in zip(keys, stored, strict=True):
            for view, others in views.items():
                if view in fields:
                    writes.append((key + FLOOR_SUFFIX, {view: fields[view], **{f: fields[f] for f in others[layout]}}))
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for start in range(0, len(writes), 2000):
                with floor.pipeline(transaction=False) as pipe:
                    for key, mapping in writes[start : start + 2000]:
                        pipe.hset(key, mapping=mapping)
                        pipe.expire(key, ttl)
                    pipe.execute()
            runs.append(time.perf_counter() - t0)
            written = list({k for k, _ in writes})
            for start in range(0, len(written), 5000):
                floor.delete(*written[start : start + 5000])
        spent = statistics.median(runs)
        print(f"    raw pipelined HSET floor, {label:<13}{spent:7.2f} s {len(writes) / spent:>9,.0f} rows/s")
    assert len(writes) == rows, f"the floor wrote {len(writes)} rows, the window has {rows}"
    ours_client.close()
    floor.close()
    return spent


def fetch_hashes(client, keys: list[bytes]) -> list[dict]:
    out = []
    for start in range(0, len(keys), 2000):
        with client.pipeline(transaction=False) as pipe:
            for key in keys[start : start + 2000]:
                pipe.hgetall(key)
            out.extend(pipe.execute())
    return out


def floor_sqlite(fs, path: Path, rows: int, repeats: int = 1) -> float:
    """The raw write floor on SQLite: the rows ours stored, upserted again with executemany into a
    fresh file of Feast's table layout (WAL, one transaction per 10,000 rows), `repeats` times
    (each into a fresh file); the median seconds."""
    import sqlite3

    from healthmate_features import _feast

    conn = _feast.sqlite_connection(fs)
    tables = [_feast.sqlite_view_table(fs.config, v) for v in fs.list_feature_views() if v.online]
    copies = {
        t: conn.execute(f'SELECT entity_key, feature_name, value, event_ts, created_ts FROM "{t}"').fetchall()
        for t in tables
    }
    runs = []
    for _ in range(repeats):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        floor = sqlite3.connect(path)
        floor.execute("PRAGMA journal_mode = WAL")
        for table in tables:
            floor.execute(
                f'CREATE TABLE "{table}" (entity_key BLOB, feature_name TEXT, value BLOB, value_text TEXT, '
                "event_ts timestamp, created_ts timestamp, PRIMARY KEY(entity_key, feature_name))"
            )
        t0 = time.perf_counter()
        written = 0
        for table, data in copies.items():
            for start in range(0, len(data), 10_000):
                with floor:
                    floor.executemany(
                        f'INSERT INTO "{table}" (entity_key, feature_name, value, value_text, event_ts, created_ts) '
                        "VALUES (?, ?, ?, NULL, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
                        "value = excluded.value, event_ts = excluded.event_ts, created_ts = excluded.created_ts",
                        data[start : start + 10_000],
                    )
                written += len(data[start : start + 10_000])
        runs.append(time.perf_counter() - t0)
        floor.close()
    spent = statistics.median(runs)
    print(f"    raw executemany floor, ours' rows   {spent:7.2f} s {written / spent:>9,.0f} rows/s")
    assert written == rows, f"the floor wrote {written} rows, the window has {rows}"
    return spent


def same_stored(settings, kind: str, stock, mine) -> int:
    """Every row ours stores, opened, holds exactly the serialized values the stock store holds for
    that entity and view (and the same timestamps); the number of values compared."""
    import redis

    from healthmate_features import _feast
    from healthmate_features.crypto import unseal_many
    from healthmate_features.stores import encrypted_online, row_codec

    keyring = _feast.online_store_of(mine).keyring(mine.config)
    views = [v for v in stock.list_feature_views() if v.online]
    compared = 0
    if kind == "SQLite":
        a, b = _feast.sqlite_connection(stock), _feast.sqlite_connection(mine)
        for view in views:
            table = _feast.sqlite_view_table(stock.config, view)
            want: dict[bytes, dict] = {}
            times: dict[bytes, tuple] = {}
            for key, feature, value, event, created in a.execute(
                f'SELECT entity_key, feature_name, value, event_ts, created_ts FROM "{table}"'
            ):
                want.setdefault(key, {})[_feast.redis_field(view.name, feature)] = value
                times[key] = (event, created)
            got = b.execute(f'SELECT entity_key, feature_name, value, event_ts, created_ts FROM "{table}"').fetchall()
            assert len(got) == len(want), f"SQLite {table}: {len(got)} rows, stock has {len(want)} entities"
            opened = unseal_many(
                keyring, [r[2] for r in got], [encrypted_online.sqlite_aad(table, r[0]) for r in got], what="bench"
            )
            for (key, feature, _, event, created), plain in zip(got, opened, strict=True):
                assert feature == encrypted_online.ROW_FEATURE and times[key] == (event, created)
                assert row_codec.decode_row(plain) == want[key], f"SQLite {table}: a row differs"
                compared += len(want[key])
        return compared
    ours_client = _feast.online_store_of(mine).redis_client(mine.config)
    stock_client = redis.Redis.from_url(f"{settings.redis_url.rsplit('/', 1)[0]}/{STOCK_REDIS_DB}")
    project = stock.project.encode()
    keys = sorted(ours_client.scan_iter(match=b"*" + project, count=5000))
    assert keys == sorted(stock_client.scan_iter(match=b"*" + project, count=5000)), "Redis: other keys"
    for start in range(0, len(keys), 2000):
        chunk = keys[start : start + 2000]
        ours_hashes, stock_hashes = fetch_hashes(ours_client, chunk), fetch_hashes(stock_client, chunk)
        blobs, aads, expected = [], [], []
        for key, mine_hash, stock_hash in zip(chunk, ours_hashes, stock_hashes, strict=True):
            for view in views:
                ts = _feast.redis_timestamp_field(view.name)
                if ts not in stock_hash:
                    assert ts not in mine_hash
                    continue
                assert mine_hash[ts] == stock_hash[ts], "Redis: another timestamp"
                row = encrypted_online.redis_row_field(view.name)
                blobs.append(mine_hash[row])
                aads.append(encrypted_online.redis_aad(key, row))
                expected.append(
                    {f: stock_hash[f] for f in (_feast.redis_field(view.name, x.name) for x in view.features)}
                )
        for plain, want_row in zip(unseal_many(keyring, blobs, aads, what="bench"), expected, strict=True):
            assert row_codec.decode_row(plain) == want_row, "Redis: a row differs"
            compared += len(want_row)
        ttls = [(ours_client.ttl(k), stock_client.ttl(k)) for k in chunk[:20]]
        assert all(abs(x - y) < 600 and x > 0 for x, y in ttls), f"Redis: key TTLs differ: {ttls}"
    stock_client.close()
    return compared


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


def embedded(args, work: Path, raw: Path) -> None:
    """The embedded profile end to end: the same raw data ingested and built with DuckDB in
    `work/embedded` (unless --reuse finds it built), then the whole history through
    `FeatureStore.materialize` from our DuckDB offline store into Feast's stock SQLite store and
    into ours, with the floor and the checks of `online_stores`."""
    from healthmate_features.config import Settings

    root = work / "embedded"
    root.mkdir(exist_ok=True)
    for name in ("feature_store.yaml", ".feastignore"):
        shutil.copy(ROOT / name, root)
    shutil.copytree(
        ROOT / "feature_repo", root / "feature_repo", dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HM_PROFILE", "HM_PG_DATABASE")}
    env.update({"HM_REPO_PATH": str(root), "HM_PROFILE": "embedded"})
    print(f"\nembedded profile (DuckDB offline store, SQLite online store) in {root}")
    if not (args.reuse and (root / "data" / "registry.db").exists()):
        cli = str(Path(sys.executable).parent / "healthmate-features")
        print(f"{'step':<28}{'wall s':>10}{'peak MiB':>12}")
        for name, cmd in {
            "ingest (duckdb)": [cli, "ingest", "--profile", "embedded", "--raw", str(raw), "--quiet"],
            "build-features (duckdb)": [cli, "build-features", "--profile", "embedded", "--raw", str(raw), "--quiet"],
            "apply": [cli, "apply", "--profile", "embedded"],
        }.items():
            wall, peak = run_measured(cmd, cwd=root, env=env)
            print(f"{name:<28}{wall:>10.1f}{peak:>12.0f}")
    settings = Settings.from_env(repo_path=root, profile="embedded")
    here = Path.cwd()
    os.chdir(root)
    try:
        online_stores(settings, root, None, None, args.users, args.sample, args.materialize_repeats, ("SQLite",))
    finally:
        os.chdir(here)


def stored_rows(fs) -> tuple[int, int]:
    """(users x views, feature values) in Feast's stock SQLite store: what a whole-history window wrote."""
    from healthmate_features import _feast

    conn = _feast.sqlite_connection(fs)
    rows = values = 0
    for view in (v for v in fs.list_feature_views() if v.online):
        table = _feast.sqlite_view_table(fs.config, view)
        n = conn.execute(f'SELECT count(DISTINCT entity_key) FROM "{table}"').fetchone()[0]
        rows, values = rows + n, values + n * len(view.features)
    return rows, values


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
    parser.add_argument("--sample", type=int, default=1000, help="users whose Feast reads are compared")
    parser.add_argument("--skip-training", action="store_true", help="leave out the training-frame comparison")
    parser.add_argument(
        "--materialize-repeats", type=int, default=1, help="runs of ours and of the floors (medians printed)"
    )
    parser.add_argument("--skip-embedded", action="store_true", help="leave out the embedded profile")
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
        opened = online_stores(settings, work, rows, values, args.users, args.sample, args.materialize_repeats)
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
        if not args.skip_training:
            training(settings, store, labels)
        if not args.skip_embedded:
            embedded(args, work, args.raw or work / "raw")
    finally:
        clear_redis(settings)
        clear_redis(settings, STOCK_REDIS_DB)
    print(f"\npeak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
