"""ProcessedDataset consistency checks, the canonical data hash and summary statistics."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from healthmate_features.datasets.dataset import (
    ProcessedDataset,
    column_stats,
    data_hash,
    frame_hash,
    label_balance,
)
from healthmate_features.errors import DatasetVersionError


def small_dataset(**overrides) -> ProcessedDataset:
    X = pd.DataFrame({"a": [0.1, 0.2, 0.3, 0.4], "b": [1.0, 2.0, 3.0, 4.0]})
    y = pd.Series([0, 1, 0, 1], name="label")
    values = dict(
        X_train=X.iloc[:3],
        X_test=X.iloc[3:],
        y_train=y.iloc[:3],
        y_test=y.iloc[3:],
        feature_names=["a", "b"],
    )
    values.update(overrides)
    return ProcessedDataset(**values)


def test_frame_hash_is_deterministic_and_sensitive_to_every_part(rich_frame):
    base = frame_hash(rich_frame())
    assert base == frame_hash(rich_frame())
    changed_value = rich_frame()
    changed_value.loc[30, "f"] = 0.0  # -0.0 -> 0.0 is a different stored value
    changed_dtype = rich_frame().astype({"i": "int64"})
    renamed = rich_frame().rename(columns={"f": "g"})
    reordered = rich_frame()[list(reversed(rich_frame().columns))]
    reindexed = rich_frame().reset_index(drop=True)
    null_moved = rich_frame()
    null_moved.loc[10, "s"], null_moved.loc[20, "s"] = None, "ab"
    hashes = {frame_hash(f) for f in (changed_value, changed_dtype, renamed, reordered, reindexed, null_moved)}
    assert base not in hashes and len(hashes) == 6


def test_frame_hash_has_no_concatenation_collisions():
    assert frame_hash(pd.DataFrame({"a": ["ab", "c"]})) != frame_hash(pd.DataFrame({"a": ["a", "bc"]}))
    assert frame_hash(pd.DataFrame({"ab": [1]})) != frame_hash(pd.DataFrame({"a": [1]}).rename(columns={"a": "ab "}))


def test_frame_hash_ignores_parquet_writer_and_layout(tmp_path, rich_frame):
    frame = rich_frame()
    table = pa.Table.from_pandas(frame)
    pq.write_table(table, tmp_path / "snappy.parquet", compression="snappy")
    pq.write_table(
        table,
        tmp_path / "gzip.parquet",
        compression="gzip",
        row_group_size=1,
        write_statistics=False,
        data_page_size=64,
    )
    raw = [(tmp_path / n).read_bytes() for n in ("snappy.parquet", "gzip.parquet")]
    assert raw[0] != raw[1]
    back = [pq.read_table(tmp_path / n).to_pandas() for n in ("snappy.parquet", "gzip.parquet")]
    assert frame_hash(back[0]) == frame_hash(back[1]) == frame_hash(frame)


def test_frame_hash_is_identical_in_another_process(rich_frame, repo_root):
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from tests.helpers.frames import rich_frame; from healthmate_features.datasets.dataset import frame_hash;"
        "print(frame_hash(rich_frame()))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(repo_root)], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == frame_hash(rich_frame())


def test_data_hash_covers_splits_and_joined_frames_but_not_pipeline_or_metadata():
    base = small_dataset()
    assert data_hash(base) == data_hash(small_dataset(pipeline=object(), metadata={"x": 1}))
    y = base.y_train.copy()
    y.iloc[0] = 1
    assert data_hash(small_dataset(y_train=y)) != data_hash(base)
    joined = dict(
        joined_train=base.X_train.assign(label=base.y_train), joined_test=base.X_test.assign(label=base.y_test)
    )
    assert data_hash(small_dataset(**joined)) != data_hash(base)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(feature_names=["a"]), "feature_names"),
        (dict(X_test=pd.DataFrame({"b": [1.0], "a": [0.4]}, index=[3])), "columns differ"),
        (dict(y_train=pd.Series([0, 1], name="label")), "rows"),
        (dict(y_test=pd.Series([1], name="label", index=[99])), "different row indexes"),
        (dict(X_train=np.zeros((3, 2))), "expected a pandas DataFrame"),
        (dict(joined_train=pd.DataFrame({"a": [1, 2, 3]})), "together"),
        (dict(joined_train=pd.DataFrame({"a": [1]}), joined_test=pd.DataFrame({"a": [1]})), "joined_train has 1 rows"),
        (dict(X_train=pd.DataFrame({0: [1.0, 2.0, 3.0]})), "non-string column names"),
    ],
)
def test_inconsistent_datasets_are_refused(overrides, message):
    with pytest.raises(DatasetVersionError, match=message):
        small_dataset(**overrides)


def test_label_balance_and_column_stats(rich_frame):
    assert label_balance(pd.Series([0, 1, 1, None])) == {
        "kind": "classification",
        "rows": 4,
        "nulls": 1,
        "counts": {"0": 1, "1": 2},
        "fractions": {"0": 1 / 3, "1": 2 / 3},
    }
    regression = label_balance(pd.Series(np.linspace(0, 1, 50)))
    assert regression["kind"] == "regression" and regression["mean"] == pytest.approx(0.5)
    stats = column_stats(rich_frame())
    assert stats["f"]["null_fraction"] == pytest.approx(1 / 3)
    assert stats["f"]["mean"] == pytest.approx(0.75)
    assert stats["nullable_int"]["max"] == 3.0
    assert set(stats["s"]) == {"null_fraction"}
    assert column_stats(pd.DataFrame({"x": [1.0]}))["x"]["std"] is None
