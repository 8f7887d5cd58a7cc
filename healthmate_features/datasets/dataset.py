"""The training-set result type, its canonical content hash and its summary statistics.

A `ProcessedDataset` is what the training-set builder returns and what the dataset registry
(`versioning`) stores. Besides the processed splits it optionally carries the point-in-time-joined
frames *before* preprocessing (`joined_train`, `joined_test`): the builder should always fill them.
They cost one more copy of the raw features, and buy three things: `diff` compares raw feature
statistics (after standard scaling every mean is 0 and every std 1, so processed statistics hide
drift); a patch version with new preprocessing can be made without re-joining; and the entity keys,
timestamps and labels of every split stay inspectable for leakage audits.

`data_hash` is SHA-256 over a canonical serialization of the frames' *values* (column names,
dtypes, index, null masks, values), so identical data has an identical hash no matter when, where
or with which Parquet writer it was stored.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from healthmate_features.errors import DatasetVersionError
from healthmate_features.util.files import atomic_path

#: Identifies the canonical serialization below; bump it if the encoding ever changes.
HASH_SCHEME = "healthmate-canonical-v1"

#: Splits in their fixed (hashing and storage) order; joined frames are optional.
SPLITS = ("X_train", "X_test", "y_train", "y_test", "joined_train", "joined_test")
OPTIONAL_SPLITS = ("joined_train", "joined_test")

#: A label with at most this many distinct (integral) values is treated as a class label.
MAX_CLASSES = 20


@dataclass(eq=False, repr=False)
class ProcessedDataset:
    """A point-in-time-joined, split and preprocessed training set.

    `metadata` holds anything JSON-serializable; the registry reads these keys when present:
    `feature_service`, `feature_refs`, `entity_frame_hash`, `feast_definitions_hash`,
    `time_range` ({"start": iso, "end": iso}), `split_config`, `preprocessing_config`,
    `leakage_report`, `build_spec` (everything `rebuild` needs). `ref` is "name@version" on a
    dataset loaded from the registry and None otherwise; it is not part of the data.
    Construction checks the splits agree (lengths, indexes, columns) and raises
    DatasetVersionError otherwise.
    """

    X_train: pd.DataFrame
    X_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series
    feature_names: list[str]
    pipeline: Any | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    joined_train: pd.DataFrame | None = None
    joined_test: pd.DataFrame | None = None
    ref: str | None = None

    def __post_init__(self) -> None:
        self.feature_names = list(self.feature_names)
        self.metadata = dict(self.metadata or {})
        self.validate()

    def frames(self) -> Iterator[tuple[str, pd.DataFrame | pd.Series]]:
        """Yield (split name, frame or series) in the fixed order, skipping absent joined frames."""
        for name in SPLITS:
            value = getattr(self, name)
            if value is not None:
                yield name, value

    def write_parquet(self, directory: str | Path) -> list[Path]:
        """Write every split as `<directory>/<split>.parquet` (created if needed; each file replaced atomically).

        Series become one-column frames. Returns the paths written, in the fixed split order.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for split, value in self.frames():
            frame = value.to_frame() if isinstance(value, pd.Series) else value
            with atomic_path(directory / f"{split}.parquet") as tmp:
                frame.to_parquet(tmp)
            written.append(directory / f"{split}.parquet")
        return written

    def __repr__(self) -> str:
        joined = "with" if self.joined_train is not None else "without"
        return (
            f"ProcessedDataset({self.ref or 'unsaved'}: {len(self.X_train)} train / "
            f"{len(self.X_test)} test rows, {len(self.feature_names)} features, "
            f"pipeline={type(self.pipeline).__name__ if self.pipeline is not None else None}, "
            f"{joined} joined frames)"
        )

    def validate(self) -> None:
        """Raise DatasetVersionError unless the splits agree (types, lengths, indexes, columns).

        Runs on construction; the registry runs it again before saving, in case of mutation."""
        problems: list[str] = []
        for name in ("X_train", "X_test", "joined_train", "joined_test"):
            value = getattr(self, name)
            if value is None and name in OPTIONAL_SPLITS:
                continue
            if not isinstance(value, pd.DataFrame):
                problems.append(f"{name} is a {type(value).__name__}, expected a pandas DataFrame")
                continue
            bad = [c for c in value.columns if not isinstance(c, str)]
            if bad:
                problems.append(f"{name} has non-string column names {bad[:5]}; rename them")
            dupes = sorted(set(value.columns[value.columns.duplicated()]), key=str)
            if dupes:
                problems.append(f"{name} has duplicate columns {dupes[:5]}")
        for name in ("y_train", "y_test"):
            if not isinstance(getattr(self, name), pd.Series):
                problems.append(f"{name} is a {type(getattr(self, name)).__name__}, expected a pandas Series")
        if (self.joined_train is None) != (self.joined_test is None):
            problems.append("joined_train and joined_test must be given together (or neither)")
        if problems:
            raise DatasetVersionError("invalid ProcessedDataset: " + "; ".join(problems))

        if list(self.X_train.columns) != list(self.X_test.columns):
            only_train = [c for c in self.X_train.columns if c not in self.X_test.columns]
            only_test = [c for c in self.X_test.columns if c not in self.X_train.columns]
            problems.append(
                "X_train and X_test columns differ (only in train: "
                f"{only_train[:5]}, only in test: {only_test[:5]}, or a different order)"
            )
        if self.feature_names != list(self.X_train.columns):
            problems.append(
                f"feature_names ({len(self.feature_names)}) differ from X_train's columns "
                f"({self.X_train.shape[1]}); pass feature_names=list(X_train.columns)"
            )
        for side in ("train", "test"):
            X, y = getattr(self, f"X_{side}"), getattr(self, f"y_{side}")
            joined = getattr(self, f"joined_{side}")
            if len(X) != len(y):
                problems.append(f"X_{side} has {len(X)} rows but y_{side} has {len(y)}")
            elif not X.index.equals(y.index):
                problems.append(f"X_{side} and y_{side} have different row indexes; reset both or neither")
            if joined is not None and len(joined) != len(X):
                problems.append(
                    f"joined_{side} has {len(joined)} rows but X_{side} has {len(X)}; "
                    "the joined frame must hold exactly the rows of its split"
                )
        if problems:
            raise DatasetVersionError("invalid ProcessedDataset: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------
# Canonical content hash
# --------------------------------------------------------------------------------------------


def data_hash(dataset: ProcessedDataset) -> str:
    """Return the SHA-256 hex digest of the dataset's data (splits and joined frames, not the
    pipeline or metadata). Identical data gives an identical hash in any process, at any time."""
    digest = hashlib.sha256(HASH_SCHEME.encode())
    for name in SPLITS:
        _put(digest, name.encode())
        value = getattr(dataset, name)
        if value is None:
            _put(digest, b"absent")
        else:
            _update_frame(digest, as_frame(value))
    return digest.hexdigest()


def frame_hash(frame: pd.DataFrame | pd.Series) -> str:
    """Return the SHA-256 hex digest of one frame's canonical serialization (names, dtypes,
    index, values); e.g. the entity-frame hash the training builder records."""
    digest = hashlib.sha256(HASH_SCHEME.encode())
    _update_frame(digest, as_frame(frame))
    return digest.hexdigest()


def as_frame(value: pd.DataFrame | pd.Series) -> pd.DataFrame:
    """A DataFrame as is; a Series as the one-column frame it is stored and hashed as."""
    if isinstance(value, pd.Series):
        return value.to_frame(name=series_column(value))
    return value


def restore_resolution(values: Any, dtype: str | None) -> Any:
    """Give a datetime/timedelta column back the resolution it was saved with.

    Parquet has no second resolution, so datetime64[s] comes back as [ms]; the manifest records
    the original dtype. Other dtypes round-trip through Parquet unchanged."""
    if dtype is None or str(values.dtype) == dtype:
        return values
    kinds = (pd.api.types.is_datetime64_any_dtype, pd.api.types.is_timedelta64_dtype)
    if not any(kind(values.dtype) for kind in kinds):
        return values
    try:
        return values.astype(dtype)
    except (TypeError, ValueError):
        return values  # the data-hash check will report the difference


def series_column(series: pd.Series) -> str:
    """The column name a Series is stored (and hashed) under: its name, or "y" when unnamed."""
    return "y" if series.name is None else str(series.name)


def _put(digest: Any, data: bytes) -> None:
    """Feed length-prefixed bytes, so that concatenations cannot collide."""
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)


def _update_frame(digest: Any, frame: pd.DataFrame) -> None:
    _put(digest, f"frame {frame.shape[0]}x{frame.shape[1]} index-levels {frame.index.nlevels}".encode())
    for level in range(frame.index.nlevels):
        values = frame.index.get_level_values(level)
        _update_column(digest, f"index:{values.name!r}", pd.Series(values, copy=False))
    for name, column in frame.items():
        _update_column(digest, f"column:{name!r}", column)


def _update_column(digest: Any, label: str, column: pd.Series) -> None:
    dtype = column.dtype
    _put(digest, label.encode())
    _put(digest, _dtype_token(dtype).encode())
    mask = np.asarray(pd.isna(column), dtype=bool)
    _put(digest, np.packbits(mask).tobytes())
    present = column[~mask] if mask.any() else column
    if isinstance(dtype, pd.CategoricalDtype):
        _update_column(digest, "categories", pd.Series(dtype.categories, copy=False))
        _put(digest, np.asarray(present.cat.codes, dtype="<i8").tobytes())
    elif pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        _put(digest, np.asarray(present.array.asi8, dtype="<i8").tobytes())
    elif pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
        # Masked and Arrow dtypes name their NumPy dtype in `numpy_dtype` (not in pandas-stubs).
        numpy_dtype: Any = getattr(dtype, "numpy_dtype", dtype)
        values = np.asarray(present.to_numpy(dtype=numpy_dtype))
        _put(digest, np.ascontiguousarray(values.astype(values.dtype.newbyteorder("<"))).tobytes())
    else:
        _put(digest, _encode_objects(present.tolist()))


def _dtype_token(dtype: Any) -> str:
    if isinstance(dtype, pd.CategoricalDtype):
        return f"category ordered={bool(dtype.ordered)}"
    return str(dtype)


def _encode_objects(values: list[Any]) -> bytes:
    parts = []
    for value in values:
        if isinstance(value, str):
            raw = b"s" + value.encode("utf-8", "surrogatepass")
        elif isinstance(value, (bytes, bytearray)):
            raw = b"b" + bytes(value)
        else:
            raw = b"r" + f"{type(value).__module__}.{type(value).__qualname__}:{value!r}".encode()
        parts.append(len(raw).to_bytes(8, "little") + raw)
    return b"".join(parts)


# --------------------------------------------------------------------------------------------
# Summary statistics (stored in the manifest, compared by diff)
# --------------------------------------------------------------------------------------------


def column_stats(frame: pd.DataFrame) -> dict[str, dict[str, float | None]]:
    """Per column: null fraction; for numeric and boolean columns also mean, std, min and max.

    Values are plain floats, None where undefined (empty column, a single row's std)."""
    stats: dict[str, dict[str, float | None]] = {}
    rows = len(frame)
    for name, column in frame.items():
        entry: dict[str, float | None] = {"null_fraction": _num(column.isna().sum() / rows) if rows else None}
        dtype = column.dtype
        numeric = pd.api.types.is_numeric_dtype(dtype) and not isinstance(dtype, pd.CategoricalDtype)
        if numeric or pd.api.types.is_bool_dtype(dtype):
            values = column.astype("float64")
            entry.update(
                mean=_num(values.mean()),
                std=_num(values.std()),
                min=_num(values.min()),
                max=_num(values.max()),
            )
        stats[str(name)] = entry
    return stats


def label_balance(y: pd.Series) -> dict[str, Any]:
    """Summarize a label: class counts and fractions for a class label (non-float, or integral
    floats, with at most MAX_CLASSES distinct values), else mean/std/min/max for a regression."""
    present = y.dropna()
    nulls = int(len(y) - len(present))
    distinct = present.unique()
    is_float = pd.api.types.is_float_dtype(y.dtype)
    integral = not is_float or bool(np.all(np.mod(present.to_numpy(dtype="float64"), 1) == 0))
    if len(distinct) <= MAX_CLASSES and integral:
        counts = present.value_counts(sort=False)
        total = int(counts.sum())
        try:
            keys = sorted(counts.index)
        except TypeError:
            keys = sorted(counts.index, key=str)
        return {
            "kind": "classification",
            "rows": int(len(y)),
            "nulls": nulls,
            "counts": {_class_key(k): int(counts[k]) for k in keys},
            "fractions": {_class_key(k): _num(counts[k] / total) for k in keys},
        }
    values = present.astype("float64")
    return {
        "kind": "regression",
        "rows": int(len(y)),
        "nulls": nulls,
        "mean": _num(values.mean()),
        "std": _num(values.std()),
        "min": _num(values.min()),
        "max": _num(values.max()),
    }


def _class_key(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value.item() if isinstance(value, np.generic) else value)


def _num(value: Any) -> float | None:
    """A plain float for JSON, None for NaN/inf/missing."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
