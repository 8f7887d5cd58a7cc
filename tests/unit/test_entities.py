"""The entity-frame column check: one definition for a frame and for a file's header (no repository needed)."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from healthmate_features.errors import EntityFrameError
from healthmate_features.training.entities import (
    check_entity_file,
    read_entity_columns,
    read_entity_frame,
    require_columns,
)

FRAME = pd.DataFrame(
    {"user_id": [1, 2], "event_timestamp": ["2025-05-01T00:00:00Z"] * 2, "adverse_event_30d": [0, 1]},
    index=pd.Index([10, 11], name="row"),
)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_files_columns_are_read_without_its_rows_and_equal_the_frames(tmp_path, suffix):
    path = tmp_path / f"labels{suffix}"
    if suffix == ".parquet":
        FRAME.to_parquet(path)  # the named index is stored, and read back as the index, not a column
    else:
        FRAME.to_csv(path, index=False)
    assert read_entity_columns(path) == list(read_entity_frame(path).columns) == list(FRAME.columns)


def test_unreadable_and_missing_files_are_named(tmp_path):
    with pytest.raises(EntityFrameError, match="does not exist"):
        read_entity_columns(tmp_path / "none.parquet")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(
        EntityFrameError,
        match=r"cannot read entity frame .*broken.parquet.* as Parquet \(ArrowInvalid\); expected Parquet",
    ):
        read_entity_columns(broken)


@pytest.mark.parametrize(
    "columns, label, message",
    [
        (
            ["user_id", "event_timestamp"],
            "y",
            "is missing column(s) 'y' (columns: user_id, event_timestamp); set label",
        ),
        (["user_id", "y"], "y", "missing column(s) 'event_timestamp' (columns: user_id, y); pass the prediction time"),
        (["event_timestamp", "y"], "y", "missing column(s) 'user_id' (columns: event_timestamp, y); add the user id"),
        ([], None, "missing column(s) 'user_id', 'event_timestamp' (columns: none)"),
    ],
)
def test_missing_columns_are_named_with_what_exists_and_the_fix(columns, label, message):
    with pytest.raises(EntityFrameError) as info:
        require_columns(columns, label=label, source="entities file 'x.parquet'")
    assert str(info.value).startswith("entities file 'x.parquet' is ") and message in str(info.value)
    require_columns([*columns, "user_id", "event_timestamp", *([label] if label else [])], label=label)  # complete


@pytest.fixture
def state(tmp_path):
    """A SQLite store in WAL mode with its -wal file, a dataset-versions directory, and a real labels file."""
    import sqlite3

    data = tmp_path / "data"
    (data / "datasets" / "d").mkdir(parents=True)
    (data / "ingested").mkdir()
    store = data / "healthmate.db"
    conn = sqlite3.connect(store)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    FRAME.to_parquet(data / "ingested" / "labels.parquet")
    FRAME.to_parquet(data / "datasets" / "d" / "train.parquet")
    yield data, [store, data / "healthmate.db-wal", data / "healthmate.db-shm"], [data / "datasets"]
    conn.close()


def _check(data, files, dirs, name):
    return check_entity_file(data.parent / name, name=name, state_files=files, state_dirs=dirs)


@pytest.mark.parametrize(
    "make, name, message",
    [
        (None, "data/healthmate.db", "is not a Parquet or CSV file by its name (suffix '.db')"),
        (None, "data/healthmate.db-wal", "by its name (suffix '.db-wal')"),
        ("symlink", "data/ingested/x.csv", "by its name (suffix '.csv', '.db')"),
        ("symlink_wal", "data/ingested/x.parquet", "by its name (suffix '.db-wal', '.parquet')"),
        ("hardlink", "data/ingested/x.csv", "is one of the package's own store files"),
        ("hardlink_wal", "data/ingested/x.parquet", "is one of the package's own store files"),
        (None, "data/datasets/d/train.parquet", "lies in the package's own state"),
        ("dir_symlink", "data/ingested/versions/d/train.parquet", "lies in the package's own state"),
        ("text", "data/ingested/x.parquet", "is named .parquet but its content is not Parquet"),
        ("binary", "data/ingested/x.csv", "is named .csv but its content is not CSV"),
        (None, "data/ingested/none.csv", "'data/ingested/none.csv' does not exist"),
    ],
)
def test_the_packages_state_is_refused_without_being_opened(state, make, name, message):
    data, files, dirs = state
    target = data.parent / name
    if make == "symlink":
        target.symlink_to(data / "healthmate.db")
    elif make == "symlink_wal":
        target.symlink_to(data / "healthmate.db-wal")
    elif make in ("hardlink", "hardlink_wal"):
        os.link(files[0] if make == "hardlink" else files[1], target)
    elif make == "dir_symlink":
        target.parent.parent.symlink_to(data / "datasets")
    elif make == "text":
        target.write_text("user_id,event_timestamp\n")
    elif make == "binary":
        target.write_bytes(b"SQLite format 3\x00")
    with pytest.raises(EntityFrameError) as info:
        _check(data, files, dirs, name)
    assert f"entities {name!r} " in str(info.value) or f"file {name!r} " in str(info.value)
    assert message in str(info.value) and str(data) not in str(info.value)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".CSV"])
def test_an_entity_file_of_the_users_passes(state, suffix):
    data, files, dirs = state
    path = data / "ingested" / f"labels2{suffix}"
    FRAME.to_parquet(path) if suffix == ".parquet" else FRAME.to_csv(path, index=False)
    assert _check(data, files, dirs, f"data/ingested/labels2{suffix}") == suffix.lower()
    assert read_entity_columns(path) == list(FRAME.columns)


def test_readers_refuse_other_suffixes_by_name(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text("{}")
    with pytest.raises(EntityFrameError, match=r"entities 'labels.json' is not a Parquet or CSV file by its name"):
        read_entity_frame(path, name="labels.json")
    with pytest.raises(EntityFrameError, match=r"suffix '.json'"):
        read_entity_columns(path)
