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
_STRING_TAG = 0x12  # ValueProto field 2 (string_val), length-delimited


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

    The values are serialized as Feast serializes them (`python_values_to_proto_values`): doubles,
    int64s (with or without nulls, also as Feast sees an int64 column with nulls: doubles) and
    strings straight into their wire bytes, each column one numpy block written into one (rows,
    row width) matrix; any other type through Feast's own conversion. A row's columns come doubles
    first (their fixed 13 bytes each written for all double columns at once), then the others;
    the header names each column, so `decode_row` reads any order."""
    import pyarrow as pa

    doubles: list[tuple[bytes, Any]] = []
    others: list[tuple[bytes, np.ndarray, np.ndarray]] = []
    for field, (array, value_type) in columns.items():
        if getattr(value_type, "name", "") == "DOUBLE" and pa.types.is_float64(array.type):
            doubles.append((field, array))
        else:
            others.append((field, *_column(array, value_type, rows)))
    head = [_HEAD.pack(VERSION, len(columns))]
    head += [_ENTRY.pack(field, 9) for field, _ in doubles]
    head += [_ENTRY.pack(field, data.shape[1]) for field, _, data in others]
    header = b"".join(head)
    width = len(header) + 13 * len(doubles) + sum(4 + data.shape[1] for _, _, data in others)
    if not rows:
        return []
    matrix = np.empty((rows, width), dtype=np.uint8)
    matrix[:, : len(header)] = np.frombuffer(header, dtype=np.uint8)
    offset = len(header)
    if doubles:
        k = len(doubles)
        values = np.empty((rows, k), dtype="<f8")
        for j, (_, array) in enumerate(doubles):
            values[:, j] = array.to_numpy(zero_copy_only=False)  # a null is NaN here, as Feast sees it
        block = matrix[:, offset : offset + 13 * k].reshape(rows, k, 13)  # a view: (length u32, tag, 8 bytes)
        lengths = np.where(np.isnan(values), 0, 9).astype("<u4")  # Feast: NaN and null are an empty ValueProto
        block[:, :, :4] = lengths.view(np.uint8).reshape(rows, k, 4)
        block[:, :, 4] = _DOUBLE_TAG
        block[:, :, 5:] = values.view(np.uint8).reshape(rows, k, 8)
        offset += 13 * k
    for _, lengths, data in others:
        matrix[:, offset : offset + 4] = lengths.astype("<u4").view(np.uint8).reshape(rows, 4)
        matrix[:, offset + 4 : offset + 4 + data.shape[1]] = data
        offset += 4 + data.shape[1]
    buffer = matrix.tobytes()
    return [buffer[i * width : (i + 1) * width] for i in range(rows)]


def _column(array: Any, value_type: Any, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(length per row, (rows, width) uint8 matrix of the serialized values) of one column."""
    import pyarrow as pa

    kind = getattr(value_type, "name", "")
    if kind == "DOUBLE" and pa.types.is_float64(array.type):
        values = array.to_numpy(zero_copy_only=False)
        data = np.empty((rows, 9), dtype=np.uint8)
        data[:, 0] = _DOUBLE_TAG
        data[:, 1:] = values.astype("<f8").view(np.uint8).reshape(rows, 8)
        return np.where(np.isnan(values), 0, 9).astype(np.uint32), data
    if kind == "INT64" and pa.types.is_int64(array.type) and array.null_count == 0:
        return _varints(array.to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64), rows)
    if kind == "INT64" and (pa.types.is_int64(array.type) or pa.types.is_float64(array.type)):
        values = array.to_numpy(zero_copy_only=False)  # what Feast converts: with nulls, doubles (NaN for null)
        present = ~np.isnan(values)
        kept = values[present]
        if np.all((kept >= -(2.0**63)) & (kept < 2.0**63)):  # else (inf, out of range) Feast's conversion and error
            ints = np.zeros(rows, dtype=np.int64)
            ints[present] = kept.astype(np.int64)  # Feast's int(x): truncation toward zero
            lengths, data = _varints(ints.view(np.uint64), rows)
            return np.where(present, lengths, 0).astype(np.uint32), data
    if kind == "STRING" and (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        return _strings(array, rows)
    serialized = _feast.serialized_values(array, value_type)
    width = max((len(v) for v in serialized), default=0)
    lengths = np.fromiter((len(v) for v in serialized), dtype=np.uint32, count=rows)
    data = np.frombuffer(b"".join(v.ljust(width, b"\0") for v in serialized), dtype=np.uint8).reshape(rows, width)
    return lengths, data


def _varint_sizes(values: np.ndarray) -> np.ndarray:
    """Bytes of each uint64 as a protobuf varint (7 bits a byte)."""
    sizes = np.ones(len(values), dtype=np.int64)
    rest = values >> np.uint64(7)
    while rest.any():
        sizes += rest != 0
        rest = rest >> np.uint64(7)
    return sizes


def _put_varints(data: np.ndarray, column: int, values: np.ndarray, sizes: np.ndarray) -> None:
    """Write each uint64 of `values` as a varint into its row of `data`, from `column` on."""
    for k in range(int(sizes.max()) if len(sizes) else 0):
        group = ((values >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        more = (sizes > k + 1).astype(np.uint8) << 7
        data[:, column + k] = np.where(sizes > k, group | more, data[:, column + k])


def _varints(values: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Int64 ValueProtos (tag, then the value's two's complement as a protobuf varint) of uint64 views."""
    sizes = _varint_sizes(values)
    width = int(sizes.max()) if rows else 1
    data = np.zeros((rows, 1 + width), dtype=np.uint8)
    data[:, 0] = _INT64_TAG
    _put_varints(data, 1, values, sizes)
    return (sizes + 1).astype(np.uint32), data


def _strings(array: Any, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """String ValueProtos (tag, the UTF-8 length as a varint, the UTF-8 bytes; a null: empty) of an
    Arrow string column, the bytes copied from Arrow's buffers at once."""
    import pyarrow as pa

    chunk = array
    if isinstance(array, pa.ChunkedArray):  # one chunk (a batch of a table: offset into its buffers) or a copy
        chunk = array.chunk(0) if array.num_chunks == 1 else array.combine_chunks()
    offsets_type = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
    _, offsets_buffer, data_buffer = chunk.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=offsets_type)[chunk.offset : chunk.offset + rows + 1].astype(np.int64)
    present = ~np.asarray(chunk.is_null(), dtype=bool) if chunk.null_count else np.ones(rows, dtype=bool)
    sizes = np.where(present, np.diff(offsets), 0)
    varint = _varint_sizes(sizes.astype(np.uint64))
    lengths = np.where(present, 1 + varint + sizes, 0)
    width = int(lengths.max()) if rows else 0
    data = np.zeros((rows, width), dtype=np.uint8)
    if not present.any():
        return lengths.astype(np.uint32), data
    data[:, 0] = np.where(present, _STRING_TAG, 0)
    _put_varints(data, 1, sizes.astype(np.uint64), np.where(present, varint, 0))
    total = int(sizes.sum())
    if total:
        source = np.frombuffer(data_buffer, dtype=np.uint8)
        before = np.cumsum(sizes) - sizes  # bytes of the rows before each row
        step = np.arange(total)
        starts = np.arange(rows) * width + 1 + varint
        flat = data.reshape(-1)
        flat[step + np.repeat(starts - before, sizes)] = source[step + np.repeat(offsets[:-1] - before, sizes)]
    return lengths.astype(np.uint32), data
