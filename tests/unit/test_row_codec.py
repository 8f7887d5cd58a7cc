"""The rows our encrypting online stores seal (stores/row_codec.py, `encrypted_online.rows_of_table`):
the same entity keys, serialized values and times as Feast's own conversion of a materialized
Arrow table (`feast.utils._convert_arrow_to_proto`, what its engine hands `online_write_batch`),
value for value, over every value kind our views use and their edge cases."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest
from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.repo_config import RepoConfig
from feast.types import Bool, Float32, Float64, Int32, Int64, String, UnixTimestamp
from feast.utils import _convert_arrow_to_proto

from healthmate_features import _feast
from healthmate_features.errors import OnlineReadError
from healthmate_features.stores import encrypted_online, row_codec

DOUBLES = [1.5, -0.0, 0.0, float("inf"), float("-inf"), float("nan"), None, 1e308, -2.5e-300, 3.0]
INT64S = [0, 1, -1, 127, 128, 2**63 - 1, -(2**63), 300, -(2**40), 2**35]
ROWS = len(DOUBLES)


FEATURES = {
    "steps": Float64,
    "sessions": Int64,
    "sessions_or_null": Int64,
    "sessions_as_doubles": Int64,  # an int64 column with nulls after a pandas round trip (Feast's nodes)
    "label": String,
    "long_label": String,  # lengths needing 1, 2 and 3 varint bytes
    "flag": Bool,
    "small": Int32,
    "ratio": Float32,
    "seen_at": UnixTimestamp,
}


def view(created: bool) -> FeatureView:
    """A view with a feature of every kind above, keyed by an INT64 user id."""
    source = FileSource(
        name="src",
        path="unused.parquet",
        timestamp_field="event_timestamp",
        created_timestamp_column="created" * created,
    )
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    fields = [Field(name="user_id", dtype=Int64), *(Field(name=n, dtype=t) for n, t in FEATURES.items())]
    return FeatureView(name="health_daily", entities=[user], ttl=timedelta(days=2), schema=fields, source=source)


def table(tz: str | None) -> pa.Table:
    start = datetime(2025, 1, 1, 7, 59, 59, 123456)
    times = [start + timedelta(days=i, microseconds=i) for i in range(ROWS)]
    return pa.table(
        {
            "user_id": pa.array(range(1, ROWS + 1), pa.int64()),
            "steps": pa.array(DOUBLES, pa.float64()),
            "sessions": pa.array(INT64S, pa.int64()),
            "sessions_or_null": pa.array([None if i % 3 == 0 else i for i in range(ROWS)], pa.int64()),
            "sessions_as_doubles": pa.array(
                [None, 279.0, -3.0, 2.7, -2.7, float("nan"), 0.0, -0.0, 2.0**62, -(2.0**63)], pa.float64()
            ),
            "label": pa.array([None if i == 2 else f"l{i}é" * i for i in range(ROWS)], pa.string()),
            "long_label": pa.array(
                [None if i == 5 else "é" * (i * i * 300 + i) for i in range(ROWS)],
                pa.large_string() if tz == "UTC" else pa.string(),
            ),
            "flag": pa.array([None if i == 4 else bool(i % 2) for i in range(ROWS)], pa.bool_()),
            "small": pa.array([i - 5 for i in range(ROWS)], pa.int32()),
            "ratio": pa.array([None if i == 1 else i / 4 for i in range(ROWS)], pa.float32()),
            "seen_at": pa.array(times, pa.timestamp("us", tz="UTC")),
            "event_timestamp": pa.array(times, pa.timestamp("ns", tz=tz)),
            "created": pa.array([t + timedelta(hours=1) for t in times], pa.timestamp("us", tz=tz)),
        }
    )


def config(tmp_path) -> RepoConfig:
    """The repository settings the conversion reads: entity key version 3, no view versioning."""
    files = {"registry": str(tmp_path / "registry.db"), "repo_path": tmp_path}
    return RepoConfig(project="healthmate", provider="local", entity_key_serialization_version=3, **files)


def micros(moment: datetime) -> int:
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)


@pytest.mark.parametrize("tz", [None, "UTC", "Europe/Berlin"])
@pytest.mark.parametrize("created", [False, True])
@pytest.mark.parametrize("rows", [slice(0, ROWS), slice(3, 9)])  # a batch of a table: Arrow arrays with an offset
def test_rows_equal_feasts_conversion_value_for_value(tmp_path, tz, created, rows):
    fv, data = view(created), table(tz).slice(rows.start, rows.stop - rows.start)
    feast_rows = _convert_arrow_to_proto(data.to_batches()[0], fv, {"user_id": ValueType.INT64})
    ours = encrypted_online.rows_of_table(config(tmp_path), fv, data)
    assert len(ours.keys) == len(ours.plaintexts) == len(feast_rows) == data.num_rows
    for i, (entity_key, values, event, created_at) in enumerate(feast_rows):
        assert ours.keys[i] == serialize_entity_key(entity_key, entity_key_serialization_version=3)
        want = {_feast.redis_field(fv.name, name): v.SerializeToString() for name, v in values.items()}
        assert row_codec.decode_row(ours.plaintexts[i]) == want, i
        assert ours.micros[i] == micros(event)
        assert ours.created[i] == (micros(created_at) if created_at is not None else None)


def test_a_row_round_trips_and_names_its_layout():
    fields = [b"abcd", b"efgh", b"ijkl"]
    values = [b"\x29" + np.float64(2.5).tobytes(), b"", b"\x12\x03abc"]
    row = row_codec.encode_row(fields, values)
    assert row_codec.decode_row(row) == dict(zip(fields, values, strict=True))
    assert row_codec.values_of(row, [b"ijkl", b"zzzz"]) == [b"\x12\x03abc", None]
    with pytest.raises(OnlineReadError, match="layout version 02.*re-run materialize"):
        row_codec.decode_row(b"\x02" + row[1:])


def test_a_batch_of_rows_is_one_fixed_layout():
    """Every row of a batch has the same header (the column widths of the batch): one layout to parse."""
    columns = {
        b"aaaa": (pa.array([1.0, None, 3.0]), ValueType.DOUBLE),
        b"bbbb": (pa.array([1, 2**40, -1]), ValueType.INT64),
    }
    rows = row_codec.encode_table(columns, 3)
    assert len({len(r) for r in rows}) == 1
    assert [row_codec.decode_row(r)[b"aaaa"] for r in rows] == [
        b"\x29" + np.float64(1.0).tobytes(),
        b"",
        b"\x29" + np.float64(3.0).tobytes(),
    ]
    empty = {
        b"aaaa": (pa.array([], pa.float64()), ValueType.DOUBLE),
        b"bbbb": (pa.array([], pa.int64()), ValueType.INT64),
    }
    assert row_codec.encode_table(empty, 0) == []
