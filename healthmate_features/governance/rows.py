"""Remove one user's rows from a Parquet or CSV file, atomically, leaving every other byte's meaning as it was.

A file is rewritten only when it holds the user's rows (so a file without them stays byte for
byte as it was), under a temporary name renamed into place (util.files): an interrupted rewrite
leaves the old file. `count_user_rows` is the read-only form for `erase --verify`;
`remove_rows_before` drops rows by age (retention) the same way.

An encrypted file (the package's own: ingested tables, rejects) is decrypted with `keyring` and
written back encrypted under the active data key; a plaintext one (a user's raw input) stays plaintext.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from healthmate_features.crypto import Keyring, file_key_id, open_parquet, seal, unseal, write_parquet
from healthmate_features.util.files import atomic_path, atomic_write_bytes

KeyringSource = Keyring | Callable[[], Keyring] | None

USER_COLUMN = "user_id"


def _same_id(text: str | None, user_id: int) -> bool:
    """Whether a CSV cell names the user id (`5`, ` 5 `, `5.0`)."""
    if text is None:
        return False
    try:
        return float(text.strip()) == float(user_id)
    except ValueError:
        return False


def _user_mask(column: pa.ChunkedArray, user_id: int) -> pa.ChunkedArray:
    """True for the user's rows of a Parquet user_id column."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        mask = pc.equal(column, pa.scalar(user_id).cast(column.type))
    else:
        text = pc.utf8_trim_whitespace(pc.cast(column, pa.string()))
        mask = pc.or_(pc.equal(text, str(user_id)), pc.equal(text, f"{user_id}.0"))
    return pc.fill_null(mask, False)


def _ring(keyring: KeyringSource, path: Path) -> Keyring:
    if keyring is None:
        from healthmate_features.errors import EncryptionKeyError

        raise EncryptionKeyError(f"{path} is encrypted and no keyring was given to rewrite it")
    return keyring if isinstance(keyring, Keyring) else keyring()


def _csv_rows(path: Path, keyring: KeyringSource) -> tuple[list[str], list[list[str]], bool]:
    """The header and rows of a CSV file (decrypted if sealed), and whether it was sealed."""
    blob = path.read_bytes()
    sealed = file_key_id(path) is not None
    if sealed:
        blob = unseal(_ring(keyring, path), blob, what=str(path))
    reader = csv.reader(io.StringIO(blob.decode("utf-8"), newline=""))
    header = next(reader, [])
    return header, [row for row in reader if row], sealed


def _older(column: pa.ChunkedArray, cutoff: datetime) -> pa.ChunkedArray:
    """True for the timestamps of a Parquet column before `cutoff` (naive ones read as UTC)."""
    if not pa.types.is_timestamp(column.type):
        column = pc.cast(column, pa.timestamp("us", tz="UTC"))
    unit = column.type.unit
    bound = pa.scalar(cutoff.astimezone(timezone.utc).replace(tzinfo=None), type=pa.timestamp(unit))
    return pc.fill_null(pc.less(pc.cast(column, pa.timestamp(unit)), bound), False)


def _csv_older(text: str | None, cutoff: datetime) -> bool:
    """Whether a CSV cell holds a time before `cutoff` (naive times read as UTC; unreadable cells are kept)."""
    if not text or not text.strip():
        return False
    try:
        stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return False
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)) < cutoff


def _filter_file(
    path: Path,
    column_name: str,
    parquet_mask: Callable[[pa.ChunkedArray], pa.ChunkedArray],
    csv_match: Callable[[str | None], bool],
    *,
    count_only: bool,
    keyring: KeyringSource,
) -> int:
    """Count the rows a mask marks in a Parquet or CSV file (0 without the column); unless `count_only`,
    rewrite the file without them (atomically, and only when there are any)."""
    if path.suffix == ".parquet":
        encrypted = file_key_id(path) is not None
        table = open_parquet(lambda: _ring(keyring, path), path).read()
        if column_name not in table.column_names:
            return 0
        mask = parquet_mask(table.column(column_name))
        removed = int(pc.sum(mask).as_py() or 0)
        if removed and not count_only:
            if encrypted:
                write_parquet(_ring(keyring, path), table.filter(pc.invert(mask)), path)
            else:
                with atomic_path(path) as tmp:
                    pq.write_table(table.filter(pc.invert(mask)), tmp, compression="zstd")
        return removed
    header, rows, sealed = _csv_rows(path, keyring)
    if column_name not in header:
        return 0
    at = header.index(column_name)
    kept = [row for row in rows if not (at < len(row) and csv_match(row[at]))]
    removed = len(rows) - len(kept)
    if removed and not count_only:
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(kept)
        data = buffer.getvalue().encode("utf-8")
        atomic_write_bytes(path, seal(_ring(keyring, path).active(), data) if sealed else data)
    return removed


def count_user_rows(path: Path, user_id: int, *, keyring: KeyringSource = None) -> int:
    """How many rows of a Parquet or CSV file belong to the user (0 without a user_id column)."""
    return remove_user_rows(path, user_id, count_only=True, keyring=keyring)


def remove_user_rows(path: Path, user_id: int, *, count_only: bool = False, keyring: KeyringSource = None) -> int:
    """Rewrite a Parquet or CSV file without the user's rows; return how many were removed.

    Side effect: the file is replaced atomically when (and only when) it held such rows. Parquet
    keeps its schema (and metadata) and is written with zstd; CSV keeps its header and row order."""
    return _filter_file(
        path,
        USER_COLUMN,
        lambda column: _user_mask(column, user_id),
        lambda cell: _same_id(cell, user_id),
        count_only=count_only,
        keyring=keyring,
    )


def remove_rows_before(
    path: Path, column: str, cutoff: datetime, *, count_only: bool = False, keyring: KeyringSource = None
) -> int:
    """Rewrite a Parquet or CSV file without the rows whose `column` time is before `cutoff` (retention).

    Returns how many (with `count_only`, only counts them); the file is replaced atomically when
    (and only when) it held such rows."""
    return _filter_file(
        path,
        column,
        lambda values: _older(values, cutoff),
        lambda cell: _csv_older(cell, cutoff),
        count_only=count_only,
        keyring=keyring,
    )
