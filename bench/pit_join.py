"""Benchmark point-in-time joins: raw DuckDB ASOF vs our offline store vs Feast's DuckDB and file stores.

    .venv/bin/python bench/pit_join.py --users 10000 --days 365 --entities 100000

Generates U*D daily feature rows (10 float features, one row per user per day, stamped at the end
of the day) and E entity rows at random users and times, builds a Feast repository over them
(`feast apply`), then measures each method in a fresh subprocess: wall seconds of the join alone
(entity frame in, pandas frame out; median of --repeats), its CPU seconds (user + system, all
threads: steadier than wall time on a shared machine), the subprocess's peak RSS (wait4), the row
count, a checksum of one feature column, and the time ratios to raw DuckDB. "ours, encrypted" is
our store over the same rows written encrypted (crypto.write_parquet, as the package writes its
feature tables) in a second repository with its own keyring: DuckDB scans it through a pyarrow
dataset (README "Security and compliance"). Feast's file (dask) store is skipped with --skip-file
or above FILE_STORE_MAX_ROWS feature rows, Feast's DuckDB store above FEAST_DUCKDB_MAX_ROWS (both
need many GB there and would crowd a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = [f"f{i}" for i in range(10)]
START = np.datetime64("2024-01-01T23:59:59", "us")
FILE_STORE_MAX_ROWS = 5_000_000
FEAST_DUCKDB_MAX_ROWS = 10_000_000
SLOW_SECONDS = 30.0  # a method slower than this is run once, whatever --repeats says
METHODS = {
    "raw": "raw DuckDB ASOF join",
    "ours": "ours (HealthmateDuckDBOfflineStore)",
    "ours_encrypted": "ours, encrypted feature file",
    "feast_duckdb": "Feast DuckDB store",
    "feast_file": "Feast file (dask) store",
}
STORE_TYPES = {
    "ours": "healthmate_features.stores.duckdb_asof.HealthmateDuckDBOfflineStore",
    "feast_duckdb": "duckdb",
    "feast_file": "file",
}
DEFINITIONS = """from datetime import timedelta
from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
daily_source = FileSource(name="daily_source", path={path!r}, timestamp_field="event_timestamp")
daily_fv = FeatureView(
    name="daily_fv", entities=[user], ttl=timedelta(0), source=daily_source,
    schema=[Field(name="user_id", dtype=Int64)] + [Field(name=f"f{{i}}", dtype=Float64) for i in range(10)],
)
"""


def generate(workdir: Path, users: int, days: int, entities: int, seed: int) -> None:
    """Write features.parquet (users*days rows, in chunks) and entities.parquet into workdir."""
    rng = np.random.default_rng(seed)
    schema = pa.schema(
        [("user_id", pa.int64()), ("event_timestamp", pa.timestamp("us", tz="UTC"))]
        + [(name, pa.float64()) for name in FEATURES]
    )
    per_chunk = max(1, 2_000_000 // days)
    with pq.ParquetWriter(workdir / "features.parquet", schema) as writer:
        for first in range(0, users, per_chunk):
            block = np.arange(first, min(users, first + per_chunk), dtype=np.int64)
            n = len(block) * days
            columns = {
                "user_id": np.repeat(block, days),
                "event_timestamp": START + np.tile(np.arange(days), len(block)).astype("timedelta64[D]"),
            }
            columns |= {name: rng.standard_normal(n) for name in FEATURES}
            writer.write_table(pa.table(columns, schema=schema))
    offsets = rng.integers(0, (days + 1) * 86_400_000_000, entities).astype("timedelta64[us]")
    entity = pa.table(
        {
            "user_id": pa.array(rng.integers(0, users, entities), pa.int64()),
            "event_timestamp": pa.array(START - np.timedelta64(86_399, "s") + offsets, pa.timestamp("us", tz="UTC")),
        }
    )
    pq.write_table(entity, workdir / "entities.parquet")


def build_repo(workdir: Path, memory_limit: str | None) -> None:
    """Write one feature_store yaml per store over a shared registry and run `feast apply`."""
    repo = workdir / "repo"
    repo.mkdir(exist_ok=True)
    (repo / "definitions.py").write_text(DEFINITIONS.format(path=str(workdir / "features.parquet")))
    for method, store_type in STORE_TYPES.items():
        offline = f"  type: {store_type}\n"
        if method == "ours":
            offline += f"  temp_directory: {workdir / 'duckdb_tmp'}\n"
            if memory_limit:
                offline += f"  memory_limit: {memory_limit}\n"
        (repo / f"{method}.yaml").write_text(
            f"project: pitbench\nprovider: local\nregistry: {workdir / 'registry.db'}\n"
            f"online_store:\n  type: sqlite\n  path: {workdir / 'online.db'}\n"
            f"offline_store:\n{offline}entity_key_serialization_version: 3\n"
        )
    feast = Path(sys.executable).with_name("feast")
    done = subprocess.run([str(feast), "-f", "ours.yaml", "apply"], cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"feast apply failed:\n{done.stderr}")
    build_encrypted_repo(workdir)


def build_encrypted_repo(workdir: Path) -> None:
    """A second repository (its own keyring) over features.parquet rewritten encrypted, applied."""
    from healthmate_features.backends import backend_for
    from healthmate_features.config import Settings
    from healthmate_features.crypto import write_parquet

    repo = workdir / "repo_enc"
    repo.mkdir(exist_ok=True)
    keyring = backend_for(Settings.from_env(repo, profile="embedded")).keyring()
    source = pq.ParquetFile(workdir / "features.parquet")
    write_parquet(
        keyring,
        pa.RecordBatchReader.from_batches(source.schema_arrow, source.iter_batches()),
        workdir / "features.enc.parquet",
    )
    (repo / "definitions.py").write_text(DEFINITIONS.format(path=str(workdir / "features.enc.parquet")))
    (repo / "ours.yaml").write_text(
        f"project: pitbench\nprovider: local\nregistry: {workdir / 'registry_enc.db'}\n"
        f"online_store:\n  type: sqlite\n  path: {workdir / 'online_enc.db'}\n"
        f"offline_store:\n  type: {STORE_TYPES['ours']}\n  temp_directory: {workdir / 'duckdb_tmp'}\n"
        "entity_key_serialization_version: 3\n"
    )
    feast = Path(sys.executable).with_name("feast")
    done = subprocess.run([str(feast), "-f", "ours.yaml", "apply"], cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"feast apply (encrypted repository) failed:\n{done.stderr}")


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process so far, all threads (DuckDB's workers included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_method(method: str, workdir: Path, memory_limit: str | None) -> dict:
    """Inside a fresh subprocess: time one join and return seconds, rows and a checksum."""
    import pandas as pd

    entity_df = pd.read_parquet(workdir / "entities.parquet")
    if method == "raw":
        import duckdb

        con = duckdb.connect()
        con.execute("SET preserve_insertion_order = false")  # as our store does: ASOF order is lost anyway
        if memory_limit:
            con.execute(f"SET memory_limit = '{memory_limit}'")
            con.execute(f"SET temp_directory = '{workdir / 'duckdb_tmp'}'")
        features = ", ".join(f"f.{name}" for name in FEATURES)
        path = workdir / "features.parquet"
        started, cpu = time.perf_counter(), _cpu_seconds()
        result = con.sql(
            f"SELECT e.*, {features} FROM entity_df e ASOF LEFT JOIN read_parquet('{path}') f "
            "ON e.user_id = f.user_id AND e.event_timestamp >= f.event_timestamp"
        ).df()
    else:
        from feast import FeatureStore

        repo = workdir / ("repo_enc" if method == "ours_encrypted" else "repo")
        yaml_file = repo / ("ours.yaml" if method == "ours_encrypted" else f"{method}.yaml")
        store = FeatureStore(repo_path=str(repo), fs_yaml_file=yaml_file)
        refs = [f"daily_fv:{name}" for name in FEATURES]
        started, cpu = time.perf_counter(), _cpu_seconds()
        result = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    return {"seconds": seconds, "cpu": cpu, "rows": len(result), "checksum": float(result["f0"].sum())}


def run_once(method: str, args: argparse.Namespace, workdir: Path) -> dict:
    """Run one method in a fresh subprocess; its result plus that process's peak RSS in MB."""
    command = [sys.executable, __file__, "--run-method", method, "--workdir", str(workdir)]
    if args.memory_limit:
        command += ["--memory-limit", args.memory_limit]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + args.timeout
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            child.kill()
            os.wait4(child.pid, 0)
            return {"error": f"timed out after {args.timeout:.0f} s"}
        time.sleep(0.05)
    out, err = child.stdout.read(), child.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        return {"error": (err.strip().splitlines() or ["failed"])[-1][:120]}
    return json.loads(out.strip().splitlines()[-1]) | {"peak_mb": usage.ru_maxrss / 1024}  # KiB


def measure(methods: list[str], args: argparse.Namespace, workdir: Path) -> dict[str, dict]:
    """Run the methods round-robin, --repeats rounds (a slow one runs once), and summarize each.

    Interleaving spreads the load of a shared machine evenly over the methods.
    """
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    failed: dict[str, dict] = {}
    for _ in range(args.repeats):
        for method in methods:
            done = runs[method]
            if method in failed or (done and done[0]["seconds"] > SLOW_SECONDS):
                continue
            result = run_once(method, args, workdir)
            print(f"  {METHODS[method]}: {result}", file=sys.stderr, flush=True)
            if "error" in result:
                failed[method] = result
            else:
                done.append(result)
    summary = {}
    for method in methods:
        done = runs[method]
        summary[method] = failed.get(method) or {
            "seconds": statistics.median(r["seconds"] for r in done),
            "cpu": statistics.median(r["cpu"] for r in done),
            "runs": len(done),
            "peak_mb": max(r["peak_mb"] for r in done),
            "rows": done[-1]["rows"],
            "checksum": done[-1]["checksum"],
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3, help="runs per method (slow ones run once)")
    parser.add_argument("--memory-limit", help='DuckDB memory limit for raw and ours, e.g. "4GB"')
    parser.add_argument("--skip-file", action="store_true", help="skip Feast's file (dask) store")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run before giving up")
    parser.add_argument("--workdir", help="keep generated data here (default: a temporary directory)")
    parser.add_argument("--run-method", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run_method:
        print(json.dumps(run_method(args.run_method, Path(args.workdir), args.memory_limit)))
        return

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pit_join_"))
    workdir.mkdir(parents=True, exist_ok=True)
    feature_rows = args.users * args.days
    try:
        started = time.perf_counter()
        generate(workdir, args.users, args.days, args.entities, args.seed)
        build_repo(workdir, args.memory_limit)
        print(
            f"{feature_rows:,} feature rows x {args.entities:,} entity rows, 10 features; "
            f"{os.cpu_count()} cores; data + feast apply in {time.perf_counter() - started:.1f} s"
        )
        skipped = {}
        if args.skip_file:
            skipped["feast_file"] = "skipped (--skip-file)"
        elif feature_rows > FILE_STORE_MAX_ROWS:
            skipped["feast_file"] = f"skipped (> {FILE_STORE_MAX_ROWS:,} feature rows)"
        if feature_rows > FEAST_DUCKDB_MAX_ROWS:
            skipped["feast_duckdb"] = f"skipped (> {FEAST_DUCKDB_MAX_ROWS:,} feature rows)"
        results = measure([m for m in METHODS if m not in skipped], args, workdir)
        results |= {method: {"error": reason} for method, reason in skipped.items()}
        base = results["raw"].get("seconds")
        base_cpu = results["raw"].get("cpu")
        print(
            "\n| method | wall s (median) | runs | vs raw DuckDB | CPU s (median) | CPU vs raw "
            "| peak RSS MB | rows | sum(f0) |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for method, label in METHODS.items():
            r = results[method]
            if "error" in r:
                print(f"| {label} | {r['error']} | | | | | | | |")
                continue
            ratio = f"{r['seconds'] / base:.2f}x" if base else "n/a"
            cpu_ratio = f"{r['cpu'] / base_cpu:.2f}x" if base_cpu else "n/a"
            print(
                f"| {label} | {r['seconds']:.2f} | {r['runs']} | {ratio} | {r['cpu']:.2f} | {cpu_ratio} | "
                f"{r['peak_mb']:,.0f} | "
                f"{r['rows']:,} | {r['checksum']:.3f} |"
            )
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
