"""Remove one user's rows from a Parquet or CSV file, atomically, leaving every other byte's meaning as it was.

A file is rewritten only when it holds the user's rows (so a file without them stays byte for
byte as it was), under a temporary name renamed into place (util.files): an interrupted rewrite
leaves the old file. `count_user_rows` is the read-only twin for `erase --verify`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from healthmate_features.util.files import atomic_path, atomic_write_text

USER_COLUMN = "user_id"


def _same_id(text: str | None, user_id: int) -> bool:
    """Whether a CSV cell names the user id (`5`, ` 5 `, `5.0`)."""
    if text is None:
        return False
    try:
        return float(text.strip()) == float(user_id)
    except ValueError:
        return False


def _parquet_mask(table: pa.Table, user_id: int) -> pa.ChunkedArray | None:
    """True for the user's rows of a Parquet table (None when it has no user_id column)."""
    if USER_COLUMN not in table.column_names:
        return None
    column = table.column(USER_COLUMN)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        mask = pc.equal(column, pa.scalar(user_id).cast(column.type))
    else:
        text = pc.utf8_trim_whitespace(pc.cast(column, pa.string()))
        mask = pc.or_(pc.equal(text, str(user_id)), pc.equal(text, f"{user_id}.0"))
    return pc.fill_null(mask, False)


def _csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        return header, [row for row in reader if row]


def count_user_rows(path: Path, user_id: int) -> int:
    """How many rows of a Parquet or CSV file belong to the user (0 without a user_id column)."""
    if path.suffix == ".parquet":
        table = pq.read_table(path, columns=None)
        mask = _parquet_mask(table, user_id)
        return 0 if mask is None else int(pc.sum(mask).as_py() or 0)
    header, rows = _csv_rows(path)
    if USER_COLUMN not in header:
        return 0
    at = header.index(USER_COLUMN)
    return sum(1 for row in rows if at < len(row) and _same_id(row[at], user_id))


def remove_user_rows(path: Path, user_id: int) -> int:
    """Rewrite a Parquet or CSV file without the user's rows; return how many were removed.

    Side effect: the file is replaced atomically when (and only when) it held such rows. Parquet
    keeps its schema (and metadata) and is written with zstd; CSV keeps its header and row order."""
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        mask = _parquet_mask(table, user_id)
        removed = 0 if mask is None else int(pc.sum(mask).as_py() or 0)
        if removed:
            with atomic_path(path) as tmp:
                pq.write_table(table.filter(pc.invert(mask)), tmp, compression="zstd")
        return removed
    header, rows = _csv_rows(path)
    if USER_COLUMN not in header:
        return 0
    at = header.index(USER_COLUMN)
    kept = [row for row in rows if not (at < len(row) and _same_id(row[at], user_id))]
    removed = len(rows) - len(kept)
    if removed:
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(kept)
        atomic_write_text(path, buffer.getvalue())
    return removed
