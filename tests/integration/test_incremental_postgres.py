"""Incremental feature builds in Postgres equal full rebuilds bit for bit, and DuckDB's within 1e-9.

The raw data arrives in random steps (tests/helpers/arrivals.py, two seeds). After each step one
schema builds incrementally (rows replaced in one transaction; every other time from fingerprints
kept at the ingest) and a second schema of the same
database builds the same data from scratch; every table must be identical. At the end the
embedded profile builds the same data with DuckDB: equal within 1e-9, relative or absolute.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from healthmate_features.backends import postgres
from healthmate_features.config import Settings
from healthmate_features.features.build import build_features, keep_raw_fingerprints
from healthmate_features.features.catalog import FEATURE_TABLES
from healthmate_features.raw.ingest import ingest, ingest_raw
from tests.helpers.files import read_frame

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


def _table(settings: Settings, name: str) -> pd.DataFrame:
    with postgres.connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {postgres.table_name(settings, name)} ORDER BY user_id, event_timestamp")
        return pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])


@pytest.mark.parametrize("seed", [5, 6])
def test_postgres_incremental_builds_equal_full_builds_and_duckdb(
    prod, population, incremental_arrivals, tmp_path, seed
):
    arrivals = incremental_arrivals.Arrivals(population, random.Random(seed))
    raw = tmp_path / "raw"
    full = replace(prod, pg_schema=f"{prod.pg_schema}_full")
    for i, step in enumerate(arrivals.steps(k=5)):
        what = step()
        arrivals.write(raw)
        for settings in (prod, full):
            ingest_raw(raw, settings)
        keep = i % 2 == 0  # every other ingest fingerprinted as `healthmate-features ingest` does
        if keep:
            keep_raw_fingerprints(prod)
            if i > 0:  # the changed users compared at the ingest too, for this build to load
                with postgres.connect(prod) as conn:
                    dirty = postgres.table_name(prod, "_build_ingest_dirty")
                    assert conn.execute(f"SELECT count(*) FROM {dirty}").fetchone()[0] > 0, f"step {i} ({what})"
        got = build_features(raw, prod)
        reference = build_features(raw, full, full=True)
        assert got.incremental == (i > 0), f"step {i} ({what})"
        assert got.kept_fingerprints == keep and not reference.kept_fingerprints, f"step {i} ({what})"
        assert dict(got) == dict(reference), f"step {i} ({what}): rows per table"
        for name in FEATURE_TABLES:
            pd.testing.assert_frame_equal(
                _table(prod, name), _table(full, name), check_exact=True, obj=f"seed {seed} step {i} ({what}): {name}"
            )

    embedded = Settings(repo_path=tmp_path / "embedded")
    shutil.rmtree(embedded.ingested_dir, ignore_errors=True)
    ingest(raw, embedded.ingested_dir)
    build_features(raw, embedded)
    for name in FEATURE_TABLES:
        duck = read_frame(embedded, embedded.features_dir / f"{name}.parquet")
        duck = duck.sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)
        pg = _table(prod, name)
        assert list(duck.columns) == list(pg.columns) and len(duck) == len(pg) > 0, name
        assert (pd.to_datetime(duck.event_timestamp, utc=True) == pd.to_datetime(pg.event_timestamp, utc=True)).all()
        for col in duck.columns[2:]:
            if pd.api.types.is_numeric_dtype(duck[col]):
                np.testing.assert_allclose(
                    pg[col].astype(float),
                    duck[col].astype(float),
                    rtol=1e-9,
                    atol=1e-9,
                    equal_nan=True,
                    err_msg=f"{name}.{col}",
                )
            else:
                assert pg[col].tolist() == duck[col].tolist(), f"{name}.{col}"
