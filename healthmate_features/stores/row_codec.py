"""One feature view row of one entity as one byte string: the plaintext our online stores seal once per row.

Feast's stock online stores keep one stored value per (entity, feature): a Redis hash field per
feature, a SQLite row per feature, each a serialized `ValueProto`. Our encrypting stores
(`stores.encrypted_online`) seal a whole row of a view at once instead, so they pack the row's
serialized ValueProtos, the same bytes Feast's stock store would store, into one plaintext:

    version (1 byte, 1) | n (u16) | n x (field id: 4 bytes, width: u32) | n x (length: u32, value: width bytes)

all little endian. A field id is Feast's Redis field of the feature, murmur3 of `view:feature`
(`_feast.redis_field`), so a row names its view and features itself and the AEAD seal
authenticates them; `length` is the serialized ValueProto's length (0 for a null: Feast's empty
ValueProto), followed by padding up to the column's width (the longest value of the column in
the batch the row was written with). Fixed offsets let `encode_table` build every row of a batch
as one numpy matrix: doubles are the 9-byte string Feast's protobuf gives them, int64s a varint,
every other type Feast's own conversion (`_feast.serialized_values`); tests/unit/test_row_codec.py
checks the bytes against Feast's conversion value for value.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from healthmate_features import _feast
from healthmate_features.errors import OnlineReadError

VERSION = 1
_HEAD = struct.Struct("<BH")
_ENTRY = struct.Struct("<4sI")
_LEN = struct.Struct("<I")
_DOUBLE_TAG = 0x29  # ValueProto field 5 (double_val), 64-bit
_INT64_TAG = 0x20  # ValueProto field 4 (int64_val), varint


def encode_row(fields: Sequence[bytes], values: Sequence[bytes]) -> bytes:
    """One row from its field ids and serialized ValueProtos (each column as wide as its value)."""
    head = [_HEAD.pack(VERSION, len(fields))]
    body = []
    for field, value in zip(fields, values, strict=True):
        head.append(_ENTRY.pack(field, len(value)))
        body.append(_LEN.pack(len(value)))
        body.append(value)
    return b"".join(head) + b"".join(body)


@functools.lru_cache(maxsize=1024)
def _layout(head: bytes) -> tuple[tuple[bytes, int], ...]:
    """(field id, offset of its length) per column of a row whose header is `head`."""
    n = _HEAD.unpack_from(head)[1]
    offset = len(head)
    out = []
    for field, width in _ENTRY.iter_unpack(head[_HEAD.size :]):
        out.append((field, offset))
        offset += 4 + width
    assert len(out) == n
    return tuple(out)


def decode_row(row: bytes) -> dict[bytes, bytes]:
    """field id -> serialized ValueProto of a row; OnlineReadError for a row of another version."""
    if not row or row[0] != VERSION:
        raise OnlineReadError(
            f"an online row has layout version {row[:1].hex() or 'none'}, this package reads {VERSION}; "
            "re-run materialize to rewrite the online store"
        )
    n = _HEAD.unpack_from(row)[1]
    layout = _layout(row[: _HEAD.size + n * _ENTRY.size])
    unpack = _LEN.unpack_from
    out = {}
    for field, offset in layout:
        length = unpack(row, offset)[0]
        out[field] = row[offset + 4 : offset + 4 + length]
    return out


def values_of(row: bytes, fields: Sequence[bytes]) -> list[bytes | None]:
    """The serialized ValueProtos of `fields` in a row (None for a field the row does not hold)."""
    decoded = decode_row(row)
    return [decoded.get(field) for field in fields]


# --- whole batches, vectorized ---------------------------------------------------------------------


def encode_table(columns: Mapping[bytes, tuple[Any, Any]], rows: int) -> list[bytes]:
    """Every row of a batch: `columns` maps field id -> (Arrow array, Feast ValueType) of `rows` values.

    The values are serialized as Feast serializes them (`python_values_to_proto_values`), doubles
    and int64s without nulls straight into their wire bytes, each column one numpy block."""
    blocks: list[np.ndarray] = []
    head = [_HEAD.pack(VERSION, len(columns))]
    for field, (array, value_type) in columns.items():
        lengths, data = _column(array, value_type, rows)
        head.append(_ENTRY.pack(field, data.shape[1]))
        blocks.append(lengths.astype("<u4").view(np.uint8).reshape(rows, 4))
        blocks.append(data)
    header = b"".join(head)
    blocks.insert(0, np.broadcast_to(np.frombuffer(header, dtype=np.uint8), (rows, len(header))))
    matrix = np.ascontiguousarray(np.hstack(blocks)) if rows else np.zeros((0, 0), np.uint8)
    width = matrix.shape[1] if rows else 0
    buffer = matrix.tobytes()
    return [buffer[i * width : (i + 1) * width] for i in range(rows)]


def _column(array: Any, value_type: Any, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(length per row, (rows, width) uint8 matrix of the serialized values) of one column."""
    import pyarrow as pa

    kind = getattr(value_type, "name", "")
    if kind == "DOUBLE" and pa.types.is_float64(array.type):
        values = array.to_numpy(zero_copy_only=False)
        present = ~np.isnan(values)  # Feast: NaN and null are an empty ValueProto
        data = np.empty((rows, 9), dtype=np.uint8)
        data[:, 0] = _DOUBLE_TAG
        data[:, 1:] = values.astype("<f8").view(np.uint8).reshape(rows, 8)
        return np.where(present, 9, 0).astype(np.uint32), data
    if kind == "INT64" and pa.types.is_int64(array.type) and array.null_count == 0:
        return _varints(array.to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64), rows)
    serialized = _feast.serialized_values(array, value_type)
    width = max((len(v) for v in serialized), default=0)
    lengths = np.fromiter((len(v) for v in serialized), dtype=np.uint32, count=rows)
    data = np.frombuffer(b"".join(v.ljust(width, b"\0") for v in serialized), dtype=np.uint8).reshape(rows, width)
    return lengths, data


def _varints(values: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Int64 ValueProtos (tag, then the value's two's complement as a protobuf varint) of uint64 views."""
    sizes = np.ones(rows, dtype=np.int64)
    rest = values >> np.uint64(7)
    while rest.any():
        sizes += rest != 0
        rest = rest >> np.uint64(7)
    width = int(sizes.max()) if rows else 1
    data = np.zeros((rows, 1 + width), dtype=np.uint8)
    data[:, 0] = _INT64_TAG
    for k in range(width):
        group = ((values >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        more = (sizes > k + 1).astype(np.uint8) << 7
        data[:, 1 + k] = np.where(sizes > k, group | more, 0)
    return (sizes + 1).astype(np.uint32), data
