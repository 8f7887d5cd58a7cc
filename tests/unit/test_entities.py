"""The entity-frame column check: one definition for a frame and for a file's header (no repository needed)."""

from __future__ import annotations

import pandas as pd
import pytest

from healthmate_features.errors import EntityFrameError
from healthmate_features.training.entities import read_entity_columns, read_entity_frame, require_columns

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
    with pytest.raises(EntityFrameError, match=r"cannot read entity frame .*broken.parquet.*expected Parquet"):
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
