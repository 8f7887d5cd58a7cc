"""Incremental feature builds equal full rebuilds bit for bit, whatever order the raw data arrives in.

A generated population is delivered in steps chosen by a seeded random loop (several seeds; the
package does not depend on hypothesis): the next days, late rows for old days, a new user,
edited and deleted rows, events only. After each delivery the repository under test builds
incrementally (every other time from fingerprints kept at the ingest) and a second repository
builds the same ingest from scratch (`full=True`); every feature table must hold exactly the
same rows and the same bits.
"""

from __future__ import annotations

import random
import shutil

import duckdb
import pandas as pd
import pytest

from healthmate_features.config import Settings
from healthmate_features.features.build import build_features, keep_raw_fingerprints
from healthmate_features.features.catalog import FEATURE_TABLES
from healthmate_features.raw.ingest import ingest
from tests.helpers.files import read_frame


def _table(settings: Settings, name: str) -> pd.DataFrame:
    frame = read_frame(settings, settings.features_dir / f"{name}.parquet")  # encrypted at rest
    return frame.sort_values(["user_id", "event_timestamp"], kind="stable").reset_index(drop=True)


def _assert_same_tables(a: Settings, b: Settings, where: str) -> None:
    for name in FEATURE_TABLES:
        left, right = _table(a, name), _table(b, name)
        assert len(left) == len(right), f"{where}: {name} has {len(left)} rows, a full build {len(right)}"
        pd.testing.assert_frame_equal(left, right, check_exact=True, obj=f"{where}: {name}")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_incremental_builds_equal_full_builds_over_random_arrival_orders(
    population, incremental_arrivals, tmp_path, seed
):
    arrivals = incremental_arrivals.Arrivals(population, random.Random(seed))
    raw = tmp_path / "raw"
    inc = Settings(repo_path=tmp_path / "incremental")
    full = Settings(repo_path=tmp_path / "full")
    steps = arrivals.steps()
    for i, step in enumerate(steps):
        what = step()
        arrivals.write(raw)
        ingest(raw, inc.ingested_dir)
        shutil.rmtree(full.ingested_dir, ignore_errors=True)
        shutil.copytree(inc.ingested_dir, full.ingested_dir)
        keep = i % 2 == 1  # every other ingest fingerprinted as `healthmate-features ingest` does
        if keep:
            keep_raw_fingerprints(inc)
        got = build_features(raw, inc)
        reference = build_features(raw, full, full=True)
        assert got.incremental == (i > 0), f"step {i} ({what}) was {'not ' * (i > 0)}incremental"
        # kept fingerprints are used only while they describe the ingest (stale after the next one)
        assert got.kept_fingerprints == keep and not reference.kept_fingerprints, f"step {i} ({what})"
        assert dict(got) == dict(reference), f"seed {seed}, step {i} ({what}): rows per table"
        _assert_same_tables(inc, full, f"seed {seed}, step {i} ({what})")


def test_rolling_statistics_from_exact_sums_match_window_frames(population, tmp_path):
    """Means, deviations and slopes from exact window sums equal DuckDB's own window aggregates
    (avg, stddev_samp, regr_slope over the same frames) within 1e-9, relative or absolute."""
    import numpy as np

    from healthmate_features.features.catalog import LONGEST_WINDOW_DAYS, METRICS, WINDOWS

    settings = Settings(repo_path=tmp_path)
    ingest(population, settings.ingested_dir)
    build_features(population, settings)
    daily = settings.features_dir / "health_daily.parquet"
    rolling = settings.features_dir / "health_rolling.parquet"
    compared = 0
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("daily_rows", read_frame(settings, daily))  # encrypted at rest: decrypted here
    con.register("rolling_rows", read_frame(settings, rolling))
    for metric in (m for m in METRICS if m.key):
        v = "steps_total" if metric.name == "steps" else f"{metric.name}_mean"
        for n in WINDOWS:
            stats = ("mean", "std", "slope", "min", "max")
            ours = ", ".join(f"r.{metric.name}_{s}_{n}d" for s in stats)
            reference = con.execute(f"""
                WITH span AS (
                    SELECT user_id, min(event_timestamp) AS lo, max(event_timestamp) AS hi
                    FROM daily_rows GROUP BY user_id
                ), grid AS (
                    SELECT s.user_id, g.ts FROM span s,
                    generate_series(s.lo, s.hi + INTERVAL '{LONGEST_WINDOW_DAYS} days', INTERVAL '1 day') g(ts)
                ), dense AS (
                    SELECT g.user_id, g.ts, epoch(g.ts) // 86400 AS t, d.{v} AS v
                    FROM grid g LEFT JOIN daily_rows d
                        ON d.user_id = g.user_id AND d.event_timestamp = g.ts
                ), frames AS (
                    SELECT user_id, ts, avg(v) OVER w AS mean, stddev_samp(v) OVER w AS std,
                        CASE WHEN count(v) OVER w >= 2 THEN regr_slope(v, t) OVER w END AS slope,
                        min(v) OVER w AS lo, max(v) OVER w AS hi
                    FROM dense
                    WINDOW w AS (PARTITION BY user_id ORDER BY ts ROWS BETWEEN {n - 1} PRECEDING AND CURRENT ROW)
                )
                SELECT f.mean, f.std, f.slope, f.lo, f.hi, {ours}
                FROM frames f JOIN rolling_rows r ON r.user_id = f.user_id AND r.event_timestamp = f.ts
            """).fetchnumpy()
            for i, s in enumerate(stats):
                want = np.asarray(reference[list(reference)[i]], dtype=float)
                got = np.asarray(reference[list(reference)[i + len(stats)]], dtype=float)
                assert np.isnan(want).mean() < 0.9, f"{metric.name} {s} {n}d: too few values to compare"
                np.testing.assert_allclose(
                    got, want, rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=f"{metric.name} {s} {n}d"
                )
                compared += int(np.isfinite(want).sum())
    con.close()
    assert compared > 50_000
