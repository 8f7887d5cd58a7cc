"""build-features on the spark profile (local[2]) next to the embedded profile: wall time and peak memory.

    .venv/bin/python bench/spark.py [--users 10000] [--days 365] [--master local[2]] [--driver-memory 2g]
        [--dir /tmp/hm-bench-spark] [--database hm_bench_spark]

The same generated raw data is ingested and built on both profiles, each step as the real CLI
command in a fresh process. Peak memory is sampled from /proc every 0.1 s: the command's own
Python process, and the JVM it starts (the Spark driver; on local[N] the executors run in it).
The spark profile uses its own database (dropped first) on the Postgres of HM_PG_* and Redis of
HM_REDIS_URL; its warehouse is <dir>/spark/data/spark/warehouse. Needs the spark extra.
Prints each step and the spark / embedded ratios of build-features.
"""

from __future__ import annotations

import argparse
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


def run_sampled(cmd: list[str], *, cwd: Path, env: dict[str, str]) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MiB) of the command's process, and of the largest JVM among its descendants."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL)
    python_peak = jvm_peak = 0.0
    while proc.poll() is None:
        python_peak = max(python_peak, _rss_mib(proc.pid))
        tree, stack = _children(), [proc.pid]
        while stack:
            for child in tree.get(stack.pop(), []):
                stack.append(child)
                if _is_java(child):
                    jvm_peak = max(jvm_peak, _rss_mib(child))
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return wall, python_peak, jvm_peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="2g")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/hm-bench-spark"))
    parser.add_argument("--database", default="hm_bench_spark")
    args = parser.parse_args()

    import psycopg

    from healthmate_features.config import Settings

    work = args.dir
    shutil.rmtree(work, ignore_errors=True)
    raw = work / "raw"
    repos = {"embedded": work / "embedded", "spark": work / "spark"}
    for repo in repos.values():
        repo.mkdir(parents=True)
        for name in ("feature_store.yaml", "feature_store.spark.yaml", ".feastignore"):
            shutil.copy(ROOT / name, repo)
    base = Settings.from_env(repos["spark"], profile="spark")
    admin = f"host={base.pg_host} port={base.pg_port} user={base.pg_user} dbname=postgres connect_timeout=5"
    with psycopg.connect(admin, autocommit=True, password=base.pg_password or None) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
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
    generate = [CLI, "generate", "--users", str(args.users), "--days", str(args.days), "--seed", str(args.seed)]
    subprocess.run([*generate, "--out", str(raw), "--quiet"], cwd=work, env=envs["embedded"], check=True)
    print(
        f"build-features at {args.users:,} users x {args.days} days, {os.cpu_count()} cores; "
        f"spark on {args.master}, driver memory {args.driver_memory}"
    )
    print(f"{'profile':<10}{'step':<16}{'wall s':>10}{'python MiB':>12}{'JVM MiB':>10}")
    results: dict[tuple[str, str], tuple[float, float, float]] = {}
    for profile in ("embedded", "spark"):
        for step in ("ingest", "build-features"):
            cmd = [CLI, step, "--raw", str(raw), "--quiet"]
            results[profile, step] = measured = run_sampled(cmd, cwd=repos[profile], env=envs[profile])
            wall, python_peak, jvm_peak = measured
            print(f"{profile:<10}{step:<16}{wall:>10.1f}{python_peak:>12.0f}{jvm_peak:>10.0f}")
    (e_wall, e_py, _), (s_wall, s_py, s_jvm) = results["embedded", "build-features"], results["spark", "build-features"]
    print(
        f"build-features spark / embedded: wall {s_wall / e_wall:.2f}x, "
        f"peak memory (python + JVM) {(s_py + s_jvm) / e_py:.2f}x"
    )


if __name__ == "__main__":
    main()
