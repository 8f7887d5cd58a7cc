"""Full against incremental build-features, on both profiles: a year of data, then one more day.

    .venv/bin/python bench/build.py [--users 10000] [--days 365] [--raw DIR] [--dir /tmp/hm-bench-build]
        [--profiles embedded,production] [--database hm_bench_build]

For each profile, in fresh processes (wall time, CPU time and peak RSS of each): ingest all days but the
last and build them (`--full`); ingest the whole year and build incrementally (the added day);
then `--full` on the same data, the reference. Each ingest (printed too) also fingerprints the
raw tables for the next build, as `healthmate-features ingest` does. The incremental result is checked equal to the
full one (every row of every table, both ways). The production profile uses its own database
(dropped first) on the Postgres of HM_PG_*. Prints each step and the incremental / full ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import run_measured, run_measured_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "healthmate-features")


def snapshots(year: Path, work: Path) -> tuple[Path, Path]:
    """The raw year as given, and the same without its last day (readings and events)."""
    import duckdb

    before = work / "raw-before"
    before.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    last = con.execute(
        f"SELECT max(CAST(recorded_at AS DATE)) FROM read_parquet('{year / 'health_readings.parquet'}')"
    ).fetchone()[0]
    for table, column in (("health_readings", "recorded_at"), ("app_events", "at")):
        con.execute(
            f"COPY (SELECT * FROM read_parquet('{year / table}.parquet') "
            f"WHERE CAST(\"{column}\" AS DATE) < DATE '{last}') TO '{before / table}.parquet' (FORMAT parquet)"
        )
    shutil.copy(year / "users.parquet", before / "users.parquet")
    con.close()
    return before, year


def repo(work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    for name in ("feature_store.yaml", "feature_store.production.yaml", ".feastignore"):
        shutil.copy(ROOT / name, work)
    shutil.copytree(ROOT / "feature_repo", work / "feature_repo", ignore=shutil.ignore_patterns("__pycache__"))
    return work


def _copy_tables(profile: str, work: Path, env: dict, suffix: str) -> None:
    """Keep the feature tables as they are now, under `<table><suffix>`."""
    from healthmate_features.config import Settings
    from healthmate_features.features.catalog import FEATURE_TABLES

    settings = Settings.from_env()
    if profile == "embedded":
        for table in FEATURE_TABLES:
            shutil.copy(settings.features_dir / f"{table}.parquet", work / f"{table}{suffix}.parquet")
        return
    from healthmate_features.backends import postgres

    with postgres.connect(settings) as conn:
        for table in FEATURE_TABLES:
            copy = postgres.table_name(settings, table + suffix)
            conn.execute(f"DROP TABLE IF EXISTS {copy}")
            conn.execute(f"CREATE TABLE {copy} AS SELECT * FROM {postgres.table_name(settings, table)}")


def _differences(profile: str, work: Path, env: dict, suffix: str) -> dict[str, int]:
    """Rows in one of `<table><suffix>` and `<table>` but not the other (as multisets), per table."""
    from healthmate_features.config import Settings
    from healthmate_features.features.catalog import FEATURE_TABLES

    settings = Settings.from_env()
    out = {}
    if profile == "embedded":
        import duckdb

        from healthmate_features.backends import backend_for
        from healthmate_features.crypto.ciphers import duckdb_scan

        keyring = backend_for(settings).keyring
        con = duckdb.connect()
        for table in FEATURE_TABLES:  # the feature files are encrypted: read them with the repo's keys
            a = duckdb_scan(con, work / f"{table}{suffix}.parquet", keyring)
            b = duckdb_scan(con, settings.features_dir / f"{table}.parquet", keyring)
            out[table] = con.execute(
                f"SELECT (SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b})) + "
                f"(SELECT count(*) FROM (SELECT * FROM {b} EXCEPT ALL SELECT * FROM {a}))"
            ).fetchone()[0]
        con.close()
        return out
    from healthmate_features.backends import postgres

    with postgres.connect(settings) as conn:
        for table in FEATURE_TABLES:
            a, b = postgres.table_name(settings, table + suffix), postgres.table_name(settings, table)
            out[table] = conn.execute(
                f"SELECT (SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b}) x) + "
                f"(SELECT count(*) FROM (SELECT * FROM {b} EXCEPT ALL SELECT * FROM {a}) y)"
            ).fetchone()[0]
    return out


def run(profile: str, before: Path, year: Path, work: Path, database: str) -> None:
    work = repo(work)
    raw = work / "raw"
    env = {**os.environ, "HM_REPO_PATH": str(work), "HM_PROFILE": profile, "HM_PG_DATABASE": database}
    os.environ.update(env)  # the checks below read the same settings
    if profile == "production":
        from healthmate_features.backends import postgres
        from healthmate_features.config import Settings

        settings = Settings.from_env()
        with postgres.connect(replace(settings, pg_database="postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    def step(name: str, *args: str) -> tuple[float, float]:
        wall, peak, cpu = run_measured_cpu([CLI, *args, "--quiet"], cwd=work, env=env)
        print(f"  {name:<44}{wall:>9.1f}{cpu:>9.1f}{peak:>11.0f}", flush=True)
        return wall, cpu

    def deliver(source: Path, name: str) -> None:
        shutil.rmtree(raw, ignore_errors=True)
        shutil.copytree(source, raw)
        step(name, "ingest", "--raw", str(raw))

    print(f"\n{profile}: {'step':<44}{'wall s':>9}{'CPU s':>9}{'peak MiB':>11}")
    deliver(before, "ingest (and fingerprint) the year but a day")
    step("full build, the year but its last day", "build-features", "--raw", str(raw), "--full")
    deliver(year, "ingest (and fingerprint) the whole year")
    inc, inc_cpu = step("incremental build, + the last day", "build-features", "--raw", str(raw))
    _copy_tables(profile, work, env, "__incremental")
    full, full_cpu = step("full build of the same year (reference)", "build-features", "--raw", str(raw), "--full")
    differ = _differences(profile, work, env, "__incremental")
    # CPU of this process only: in production the work runs in the Postgres server (wall is the measure)
    cpu = f", CPU {inc_cpu / full_cpu:.3f}" if profile == "embedded" else ""
    print(
        f"  incremental / full: wall {inc / full:.3f}{cpu}   rows differing from the full build: {sum(differ.values())}"
    )
    if any(differ.values()):
        raise SystemExit(f"incremental build differs from the full build: {differ}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--raw", type=Path, help="a generated year to use instead of generating one")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/hm-bench-build"))
    parser.add_argument("--profiles", default="embedded,production")
    parser.add_argument("--database", default="hm_bench_build")
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    year = args.raw
    if year is None:
        year = args.dir / "raw-year"
        run_measured(
            [CLI, "generate", "--users", str(args.users), "--days", str(args.days), "--seed", "1"]
            + ["--out", str(year), "--quiet"]
        )
    before, year = snapshots(year, args.dir)
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    for profile in args.profiles.split(","):
        run(profile, before, year, args.dir / profile, args.database)
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
