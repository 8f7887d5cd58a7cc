"""build-features and a training frame on the spark profile (local[2]) next to the embedded profile:
wall time, CPU time and peak memory.

    .venv/bin/python bench/spark.py [--users 10000] [--days 365] [--frame-rows 100000]
        [--master local[2]] [--driver-memory 2g] [--memory-limit 4GB]
        [--dir /tmp/hm-bench-spark] [--database hm_bench_spark] [--keep]

The same generated raw data is ingested and built on both profiles, the definitions applied, and
the same entity frame joined (`training-frame --labels`), each step as the real CLI command in a
fresh process. The entity frame is `--frame-rows` rows drawn from the generated labels (so users
of the data, at times inside its range; with replacement when there are fewer), written as
Parquet to <dir>/entities.parquet. Both profiles' training frames must be equal (same rows and
order, values within 1e-12 relative). Peak memory is sampled from /proc every 0.1 s: the command's own
Python process, and the JVM it starts (the Spark driver; on local[N] the executors run in it);
CPU seconds are the sum over the command's process tree (less loaded than wall time by other
work on the machine). The spark profile uses its own database on the Postgres of HM_PG_* and Redis
of HM_REDIS_URL; its warehouse is <dir>/spark/data/spark/warehouse. The database and <dir> are
dropped first and, unless --keep, at the end. `--memory-limit` is passed to the embedded
build-features (DuckDB; default: DuckDB's, 80% of RAM). Needs the spark extra.
Prints each step and the spark / embedded ratios of build-features and training-frame.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "healthmate-features")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _is_java(pid: int) -> bool:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")) == "java"
    except OSError:
        return False


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def run_sampled(cmd: list[str], *, cwd: Path, env: dict[str, str]) -> tuple[float, float, float, float]:
    """Wall seconds, CPU seconds of the process tree (each process's last sample, so up to 0.1 s
    short per process), peak RSS (MiB) of the command's process, and of the largest JVM among its
    descendants."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL)
    python_peak = jvm_peak = 0.0
    cpu: dict[int, float] = {}
    while proc.poll() is None:
        python_peak = max(python_peak, _rss_mib(proc.pid))
        tree, stack = _children(), [proc.pid]
        while stack:
            pid = stack.pop()
            if (seconds := _cpu_seconds(pid)) is not None:
                cpu[pid] = seconds
            for child in tree.get(pid, []):
                stack.append(child)
                if _is_java(child):
                    jvm_peak = max(jvm_peak, _rss_mib(child))
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return wall, sum(cpu.values()), python_peak, jvm_peak


def write_entity_frame(raw: Path, dest: Path, *, rows: int, seed: int) -> tuple[int, int]:
    """`rows` rows of the generated labels (user_id, event_timestamp, the labels), drawn at random,
    with replacement only when there are fewer; written as plain Parquet, as a user's file is.
    Returns the rows written and the distinct users among them."""
    import numpy as np
    import pyarrow.parquet as pq

    labels = pq.read_table(raw / "labels.parquet")
    rng = np.random.default_rng(seed)
    picked = rng.choice(labels.num_rows, size=rows, replace=labels.num_rows < rows)
    frame = labels.take(picked)
    pq.write_table(frame, dest)
    return frame.num_rows, len(frame.column("user_id").unique())


def frames_equal(left: Path, right: Path) -> int:
    """The rows of two training frames, which must have the same columns, rows and order, and
    equal values (floats within 1e-12 relative); raises SystemExit naming the first difference."""
    import pandas as pd

    ours, reference = pd.read_parquet(left), pd.read_parquet(right)
    try:
        pd.testing.assert_frame_equal(ours, reference, check_dtype=False, check_exact=False, rtol=1e-12)
    except AssertionError as exc:
        raise SystemExit(f"training frames differ: {left} and {right}: {exc}") from exc
    return len(reference)


@contextlib.contextmanager
def bench_database(settings, name: str, *, keep: bool):
    """A fresh Postgres database `name` (dropped first), dropped again at the end unless `keep`."""
    import psycopg

    admin = f"host={settings.pg_host} port={settings.pg_port} user={settings.pg_user} dbname=postgres connect_timeout=5"

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True, password=settings.pg_password or None) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    drop()
    try:
        yield
    finally:
        if not keep:
            drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--frame-rows", type=int, default=100_000, help="rows of the training frame")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="2g")
    parser.add_argument("--memory-limit", default=None, help="DuckDB memory limit of the embedded build, e.g. 4GB")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/hm-bench-spark"))
    parser.add_argument("--database", default="hm_bench_spark")
    parser.add_argument("--keep", action="store_true", help="keep the database and --dir afterwards")
    args = parser.parse_args()

    from healthmate_features.config import Settings

    work = args.dir
    shutil.rmtree(work, ignore_errors=True)
    raw, entities = work / "raw", work / "entities.parquet"
    repos = {"embedded": work / "embedded", "spark": work / "spark"}
    for repo in repos.values():
        repo.mkdir(parents=True)
        for name in ("feature_store.yaml", "feature_store.spark.yaml", ".feastignore"):
            shutil.copy(ROOT / name, repo)
        shutil.copytree(ROOT / "feature_repo", repo / "feature_repo", ignore=shutil.ignore_patterns("__pycache__"))
    envs = {
        "embedded": {**os.environ, "HM_REPO_PATH": str(repos["embedded"]), "HM_PROFILE": "embedded"},
        "spark": {
            **os.environ,
            "HM_REPO_PATH": str(repos["spark"]),
            "HM_PROFILE": "spark",
            "HM_PG_DATABASE": args.database,
            "HM_SPARK_MASTER": args.master,
            "HM_SPARK_DRIVER_MEMORY": args.driver_memory,
        },
    }
    base = Settings.from_env(repos["spark"], profile="spark")
    try:
        with bench_database(base, args.database, keep=args.keep):
            run(args, raw, entities, repos, envs)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, raw: Path, entities: Path, repos: dict[str, Path], envs: dict[str, dict]) -> None:
    """Generate, then each step on each profile; print the table and the ratios."""
    work = args.dir
    print(
        f"{args.users:,} users x {args.days} days, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.2f} at start; spark on {args.master}, driver memory {args.driver_memory}; "
        f"embedded DuckDB memory limit {args.memory_limit or 'default'}",
        flush=True,
    )
    generate = [CLI, "generate", "--users", str(args.users), "--days", str(args.days), "--seed", str(args.seed)]
    wall, cpu, python_peak, _ = run_sampled([*generate, "--out", str(raw), "--quiet"], cwd=work, env=envs["embedded"])
    frame_rows, frame_users = write_entity_frame(raw, entities, rows=args.frame_rows, seed=args.seed)
    print(f"generate: {wall:.1f} s, {python_peak:.0f} MiB; entity frame: {frame_rows:,} rows, {frame_users:,} users")
    print(f"{'profile':<10}{'step':<16}{'wall s':>10}{'CPU s':>10}{'python MiB':>12}{'JVM MiB':>10}", flush=True)
    steps = {
        "ingest": ["--raw", str(raw), "--quiet"],
        "build-features": ["--raw", str(raw), "--quiet"],
        "apply": ["--quiet"],
        "training-frame": ["--labels", str(entities), "--label", "adverse_event_30d"],
    }
    results: dict[tuple[str, str], tuple[float, float, float, float]] = {}
    for profile in ("embedded", "spark"):
        for step, options in steps.items():
            cmd = [CLI, step, *options]
            if step == "build-features" and profile == "embedded" and args.memory_limit:
                cmd += ["--memory-limit", args.memory_limit]
            if step == "training-frame":
                cmd += ["--out", str(work / f"frame.{profile}.parquet")]
            results[profile, step] = measured = run_sampled(cmd, cwd=repos[profile], env=envs[profile])
            wall, cpu, python_peak, jvm_peak = measured
            print(f"{profile:<10}{step:<16}{wall:>10.1f}{cpu:>10.1f}{python_peak:>12.0f}{jvm_peak:>10.0f}", flush=True)
    rows = frames_equal(work / "frame.spark.parquet", work / "frame.embedded.parquet")
    print(f"training frames equal: {rows:,} rows on both profiles")
    for step in ("build-features", "training-frame"):
        (e_wall, e_cpu, e_py, _), (s_wall, s_cpu, s_py, s_jvm) = results["embedded", step], results["spark", step]
        print(
            f"{step} spark / embedded: wall {s_wall / e_wall:.2f}x, CPU {s_cpu / e_cpu:.2f}x, "
            f"peak memory (python + JVM) {(s_py + s_jvm) / e_py:.2f}x"
        )
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
