"""Validate and normalize an entity/label frame before a point-in-time join.

Rules (README "Entity frames"):
- `user_id` and `event_timestamp` (the prediction time) are required, and the label column
  when one is named; none of them may be null.
- Timestamps may be datetimes or strings; unparseable values are an error that quotes them.
- Timezone: aware timestamps are converted to UTC; naive ones are taken to be UTC (Feast's
  rule too), and how many were naive is reported.
- Precision: timestamps are floored to microseconds, the precision of the feature tables, so
  the join result is the same as at nanosecond precision (Feast's DuckDB store crashes on
  nanosecond timestamps; ours does not need this but the frame stays portable).
- Duplicate rows are kept; row order and count are the input's. Users the feature tables do
  not know are counted and reported (their features come back null), not dropped.
- Files: Parquet (`.parquet`) or CSV (`.csv`), by name; `check_entity_file` also refuses the
  package's own state (store files, dataset versions, feature tables) without opening it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from healthmate_features.crypto.ciphers import KeyringSource, open_parquet
from healthmate_features.errors import EncryptionKeyError, EntityFrameError

REQUIRED = ("user_id", "event_timestamp")
log = logging.getLogger(__name__)


@dataclass
class EntityReport:
    """What validation found and did; goes into the dataset's metadata."""

    rows: int
    users: int
    duplicate_rows: int
    naive_timestamps_assumed_utc: int
    converted_to_utc: int
    sub_microsecond_floored: int
    unknown_users: int = 0
    unknown_user_rows: int = 0
    time_range: list[str] = field(default_factory=list)


FORMATS = {".parquet": "Parquet", ".csv": "CSV"}  # an entity file's suffix (any case) -> its format
_SNIFF_BYTES = 4096


def entity_format(path: Path, *, name: str | None = None) -> str:
    """The format of an entity file by its name, and by its target's name for a symlink: `.parquet` or `.csv`.

    Raises EntityFrameError naming the file (`name`, default the path) for any other suffix."""
    shown = name or str(path)
    suffixes = {path.suffix.lower(), path.resolve().suffix.lower() if path.is_symlink() else path.suffix.lower()}
    if len(suffixes) != 1 or not suffixes <= set(FORMATS):
        got = ", ".join(repr(s or "(none)") for s in sorted(suffixes))
        raise EntityFrameError(
            f"entities {shown!r} is not a Parquet or CSV file by its name (suffix {got}); "
            "pass a .parquet or .csv file with user_id, event_timestamp and the label, "
            "e.g. data/ingested/labels.parquet"
        )
    return suffixes.pop()


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def check_entity_file(path: Path, *, name: str, state_files: Iterable[Path], state_dirs: Iterable[Path]) -> str:
    """Refuse an entity file that is not Parquet or CSV, or that is part of the package's own state.

    `state_files` are the stores' files (SQLite databases with their -wal/-shm/-journal files,
    the Feast registry, ...), `state_dirs` directories of package state (dataset versions,
    feature tables). A state file is never opened here: the file is compared by path (symlinks
    resolved) and by device and inode (hard links too) with `os.stat`, because closing any file
    descriptor of a SQLite database drops the locks the whole process holds on it. Only then is
    the file's start read: a Parquet file starts with `PAR1`, a CSV file has no NUL bytes.
    Returns the format's suffix; raises EntityFrameError naming `name` and the fix."""
    suffix = entity_format(path, name=name)
    target = path.resolve()
    fix = "pass your own Parquet or CSV file of labels, e.g. data/ingested/labels.parquet"
    if any(target.is_relative_to(d.resolve()) for d in state_dirs):
        raise EntityFrameError(
            f"entities {name!r} lies in the package's own state (dataset versions, feature tables), "
            f"which is never read as an entity frame; {fix}"
        )
    stat = _existing(path, name).stat()
    for state in state_files:
        try:
            known = state.stat()
        except OSError:
            continue
        if target == state.resolve() or _same_file(stat, known):
            raise EntityFrameError(
                f"entities {name!r} is one of the package's own store files (SQL store, job broker, "
                f"Feast registry or online store), which is never read as an entity frame; {fix}"
            )
    try:
        with open(path, "rb") as handle:
            start = handle.read(_SNIFF_BYTES)
    except OSError as exc:
        raise _unreadable(name, suffix, exc) from exc
    if (suffix == ".parquet" and not start.startswith((b"PAR1", b"PARE"))) or (suffix == ".csv" and b"\x00" in start):
        raise EntityFrameError(
            f"entities {name!r} is named {suffix} but its content is not {FORMATS[suffix]}; "
            f"write it as {FORMATS[suffix]} (with user_id, event_timestamp and the label) or rename it"
        )
    return suffix


def _existing(path: Path, name: str) -> Path:
    if not path.exists():
        raise EntityFrameError(
            f"entity frame file {name!r} does not exist; "
            "pass a Parquet or CSV file with user_id, event_timestamp and the label"
        )
    return path


def _unreadable(name: str, suffix: str, exc: Exception) -> EntityFrameError:
    """The error for an entity file its reader fails on: the reader's error kind only (its text may quote the file)."""
    log.info("entity file %r is unreadable as %s: %s", name, FORMATS[suffix], type(exc).__name__)
    return EntityFrameError(
        f"cannot read entity frame {name!r} as {FORMATS[suffix]} ({type(exc).__name__}); "
        "expected Parquet (.parquet) or CSV with a header (.csv)"
    )


def read_entity_frame(
    source: pd.DataFrame | str | Path, *, name: str | None = None, keyring: KeyringSource = None
) -> pd.DataFrame:
    """A DataFrame as is, or read from a Parquet or CSV path (by its suffix); `name` shows the path in errors.

    A user's file is plaintext; the package's own labels (data/ingested) are encrypted and need `keyring`."""
    if isinstance(source, pd.DataFrame):
        return source.copy()
    path = Path(source)
    shown = name or str(path)
    suffix = entity_format(path, name=shown)
    _existing(path, shown)
    try:
        return open_parquet(keyring, path).read().to_pandas() if suffix == ".parquet" else pd.read_csv(path)
    except EncryptionKeyError:
        raise
    except Exception as exc:
        raise _unreadable(shown, suffix, exc) from exc


def read_entity_columns(source: str | Path, *, name: str | None = None, keyring: KeyringSource = None) -> list[str]:
    """The column names `read_entity_frame` would give, read from the file's schema or header only."""
    path = Path(source)
    shown = name or str(path)
    suffix = entity_format(path, name=shown)
    _existing(path, shown)
    try:
        if suffix != ".parquet":
            return [str(c) for c in pd.read_csv(path, nrows=0).columns]
        schema = open_parquet(keyring, path).schema_arrow
        index = {c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)}
        return [name for name in schema.names if name not in index]  # a stored pandas index is not a column
    except EncryptionKeyError:
        raise
    except Exception as exc:
        raise _unreadable(shown, suffix, exc) from exc


def require_columns(columns: Iterable[object], *, label: str | None = None, source: str = "entity frame") -> None:
    """Raise EntityFrameError naming what is missing of user_id, event_timestamp and the label.

    The one column check of an entity frame: `validate_entity_frame` runs it on a frame, the
    builder's `check_sources` on a file's header before a build is accepted."""
    present = [str(c) for c in columns]
    missing = [c for c in (*REQUIRED, *([label] if label else [])) if c not in present]
    if not missing:
        return
    if "event_timestamp" in missing:
        hint = "pass the prediction time per row"
    elif "user_id" in missing:
        hint = "add the user id per row"
    else:
        hint = f"set label to one of the columns, or add a {label!r} column"
    raise EntityFrameError(
        f"{source} is missing column(s) {', '.join(repr(c) for c in missing)} "
        f"(columns: {', '.join(present) or 'none'}); {hint}"
    )


def _utc_timestamps(values: pd.Series, report: dict) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(values):
        ts = values
    else:
        ts = pd.to_datetime(values, errors="coerce", utc=False, format="mixed")
        bad = values.notna() & ts.isna()
        if bad.any():
            examples = ", ".join(repr(v) for v in values[bad].astype(str).unique()[:3])
            raise EntityFrameError(
                f"entity frame column 'event_timestamp' has {int(bad.sum())} unparseable value(s) (e.g. {examples}); "
                "use ISO 8601 such as 2025-03-01T12:00:00Z"
            )
        if ts.dtype == object:  # mixed offsets
            ts = pd.to_datetime(values, utc=True, format="mixed")
    if getattr(ts.dt, "tz", None) is None:
        report["naive_timestamps_assumed_utc"] = int(ts.notna().sum())
        ts = ts.dt.tz_localize("UTC")
    elif str(ts.dt.tz) != "UTC":
        report["converted_to_utc"] = int(ts.notna().sum())
        ts = ts.dt.tz_convert("UTC")
    floored = ts.dt.floor("us")
    report["sub_microsecond_floored"] = int((floored != ts).sum())
    return floored.astype("datetime64[us, UTC]")


def validate_entity_frame(
    frame: pd.DataFrame,
    *,
    label: str | None = None,
    known_users: pd.Series | None = None,
) -> tuple[pd.DataFrame, EntityReport]:
    """Return the normalized frame (same rows, same order) and a report; raise EntityFrameError if unusable."""
    required = [*REQUIRED, *([label] if label else [])]
    require_columns(frame.columns, label=label)
    if frame.empty:
        raise EntityFrameError("entity frame has no rows; pass at least one (user_id, event_timestamp) row")
    for column in required:
        nulls = int(frame[column].isna().sum())
        if nulls:
            raise EntityFrameError(
                f"entity frame column '{column}' has {nulls} null value(s) of {len(frame)} rows; "
                "fill or drop those rows before building (rows are never dropped for you)"
            )
    out = frame.reset_index(drop=True).copy()
    ids = pd.to_numeric(out["user_id"], errors="coerce")
    bad_ids = ids.isna() | (ids != ids.round())
    if bad_ids.any():
        examples = ", ".join(repr(v) for v in out.loc[bad_ids, "user_id"].astype(str).unique()[:3])
        raise EntityFrameError(
            f"entity frame column 'user_id' has {int(bad_ids.sum())} non-integer value(s) (e.g. {examples}); "
            "user ids are integers"
        )
    out["user_id"] = ids.astype("int64")
    counts: dict = {"naive_timestamps_assumed_utc": 0, "converted_to_utc": 0}
    out["event_timestamp"] = _utc_timestamps(out["event_timestamp"], counts)
    report = EntityReport(
        rows=len(out),
        users=int(out["user_id"].nunique()),
        duplicate_rows=int(out.duplicated(subset=list(REQUIRED)).sum()),
        naive_timestamps_assumed_utc=counts["naive_timestamps_assumed_utc"],
        converted_to_utc=counts["converted_to_utc"],
        sub_microsecond_floored=counts.get("sub_microsecond_floored", 0),
        time_range=[out["event_timestamp"].min().isoformat(), out["event_timestamp"].max().isoformat()],
    )
    if known_users is not None:
        unknown = ~out["user_id"].isin(set(known_users))
        report.unknown_user_rows = int(unknown.sum())
        report.unknown_users = int(out.loc[unknown, "user_id"].nunique())
    return out, report
