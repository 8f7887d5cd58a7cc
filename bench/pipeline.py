"""Wall time and peak memory of generate, ingest and build-features (default: 10,000 users x 365 days).

    .venv/bin/python bench/pipeline.py [--users 10000] [--days 365] [--repeats 1] [--dir /tmp/hm-bench]

Each step runs as the real CLI command in a fresh process (peak memory is that process's
maximum RSS). With --repeats > 1 the median wall time is printed. The work directory is a
throw-away repository root (the feature tables land in <dir>/data/features).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/hm-bench-pipeline"))
    args = parser.parse_args()

    work = args.dir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copy(ROOT / "feature_store.yaml", work)
    cli = str(Path(sys.executable).parent / "healthmate-features")
    env = {**os.environ, "HM_REPO_PATH": str(work)}
    raw = str(work / "data" / "raw")
    steps = {
        "generate": [
            cli,
            "generate",
            "--users",
            str(args.users),
            "--days",
            str(args.days),
            "--seed",
            str(args.seed),
            "--out",
            raw,
            "--quiet",
        ],
        "ingest": [cli, "ingest", "--raw", raw, "--quiet"],
        "build-features": [cli, "build-features", "--raw", raw, "--quiet"],
    }
    print(f"pipeline at {args.users:,} users x {args.days} days, {os.cpu_count()} cores, median of {args.repeats}")
    print(f"{'step':<16}{'wall s':>10}{'peak MiB':>12}")
    for name, cmd in steps.items():
        walls, peaks = [], []
        for _ in range(args.repeats):
            wall, peak = run_measured(cmd, cwd=work, env=env)
            walls.append(wall)
            peaks.append(peak)
        print(f"{name:<16}{statistics.median(walls):>10.1f}{max(peaks):>12.0f}")
    sizes = {p.name: p.stat().st_size for p in (work / "data" / "raw").glob("*.parquet")}
    print("raw files: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in sorted(sizes.items())))


if __name__ == "__main__":
    main()
