"""Issue 14's acceptance on the demo: after `make demo` no Parquet file under data/ opens without
the key (pyarrow nor DuckDB), and every one opens with the repository's keyring."""

from __future__ import annotations

import duckdb
import pyarrow.parquet as pq
import pytest

from healthmate_features.crypto import file_key_id, parquet_footer_is_plain

from ..helpers.files import read_frame


def test_no_parquet_file_the_demo_wrote_opens_without_the_key(demo_run):
    settings = demo_run[0]
    files = sorted(settings.data_dir.rglob("*.parquet"))
    # generated raw data, ingested tables, feature tables and build state, the push table, dataset splits
    assert {p.relative_to(settings.data_dir).parts[0] for p in files} >= {"raw", "ingested", "features", "datasets"}
    assert (settings.features_dir / "health_pushed.parquet") in files
    for path in files:
        assert file_key_id(path), path
        rows = read_frame(settings, path)  # the keyring opens it
        if parquet_footer_is_plain(path):  # the push table: its schema is readable, and the demo pushed nothing
            assert path.name == "health_pushed.parquet" and rows.empty
            continue
        with pytest.raises((OSError, ValueError)):  # encrypted Parquet, or Parquet sealed in an envelope
            pq.read_table(path)
        with pytest.raises(duckdb.Error):
            duckdb.sql(f"SELECT * FROM read_parquet('{path}')").fetchall()
