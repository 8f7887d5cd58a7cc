"""Serving-time preprocessing: transform new rows with a dataset version's fitted pipeline.

A dataset version's pipeline was fitted on the point-in-time-joined frame (keys `user_id` and
`event_timestamp` included, label excluded). `transform_records` takes rows of that frame as
JSON-like dicts, casts each column to the dtype it had in training, and applies the very same
fitted transform, so a model sees at serving time what it saw in training.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from healthmate_features.datasets.dataset import ProcessedDataset
from healthmate_features.datasets.ref import DatasetRef
from healthmate_features.datasets.registry import DatasetRegistry
from healthmate_features.errors import HealthmateError, PreprocessingError

MAX_ROWS = 10_000


def input_columns(dataset: ProcessedDataset) -> dict[str, Any]:
    """The columns the pipeline expects, in training order, with their training dtypes.

    From the joined training frame when the version has one (minus the label), else from the
    pipeline's `feature_names_in_` (dtypes then unknown: None)."""
    label = dataset.metadata.get("label") or dataset.y_train.name
    if dataset.joined_train is not None:
        return {str(c): t for c, t in dataset.joined_train.dtypes.items() if c != label}
    names = getattr(dataset.pipeline, "feature_names_in_", None)
    if names is None:
        raise PreprocessingError(
            f"dataset {dataset.ref or 'unsaved'} records neither its joined frame nor the pipeline's "
            "input columns; rebuild it with the training-set builder"
        )
    return {str(c): None for c in names}


def transform_records(dataset: ProcessedDataset, records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Transform rows with the dataset's fitted pipeline; return the processed frame.

    Every row must hold exactly the expected columns (`input_columns`); null values are
    allowed where the pipeline imputes. Raises PreprocessingError naming missing or unknown
    columns, or a column and row whose value cannot be cast to the training dtype."""
    if dataset.pipeline is None:
        raise PreprocessingError(f"dataset {dataset.ref or 'unsaved'} has no fitted pipeline; it cannot transform rows")
    if not records or len(records) > MAX_ROWS:
        raise PreprocessingError(f"send between 1 and {MAX_ROWS} rows, got {len(records)}")
    expected = input_columns(dataset)
    label = dataset.metadata.get("label") or dataset.y_train.name
    for i, row in enumerate(records):
        if not isinstance(row, Mapping):
            raise PreprocessingError(f"row {i} is not an object of column: value")
        missing = [c for c in expected if c not in row]
        unknown = [str(c) for c in row if c not in expected]
        if missing or unknown:
            hint = f" (drop the label {label!r})" if label in unknown else ""
            raise PreprocessingError(
                f"row {i}: "
                + "; ".join(
                    filter(
                        None,
                        [
                            f"missing column(s) {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else "")
                            if missing
                            else "",
                            f"unknown column(s) {', '.join(unknown[:10])}{hint}" if unknown else "",
                        ],
                    )
                )
                + f"; rows hold the {len(expected)} joined columns incl. user_id and event_timestamp"
            )
    frame = pd.DataFrame({c: _cast(c, [row[c] for row in records], dtype) for c, dtype in expected.items()})
    try:
        return dataset.pipeline.transform(frame)
    except HealthmateError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise PreprocessingError(f"the pipeline of {dataset.ref} cannot transform these rows: {exc}") from exc


def _cast(column: str, values: list[Any], dtype: Any) -> pd.Series:
    """One column's posted values as a Series of its training dtype; errors name column and row."""
    raw = pd.Series(values, dtype=object)
    present = raw.notna()
    if any(isinstance(v, (dict, list)) for v in values):
        bad = next(i for i, v in enumerate(values) if isinstance(v, (dict, list)))
        raise PreprocessingError(f"column {column!r}, row {bad}: a value must be a number, string, boolean or null")
    if dtype is None:
        return pd.Series(pd.array(values)) if values else raw
    if pd.api.types.is_datetime64_any_dtype(dtype):
        out = pd.to_datetime(raw.map(_text_or_none), utc=True, errors="coerce", format="ISO8601")
        _check(column, present & out.isna(), "is not an ISO 8601 timestamp")
        return out.astype(dtype) if getattr(dtype, "tz", None) is not None else out.dt.tz_localize(None).astype(dtype)
    if pd.api.types.is_bool_dtype(dtype):
        _check(column, present & ~raw.map(lambda v: isinstance(v, bool)), "is not true or false")
        return raw if not present.all() else raw.astype(bool)
    if pd.api.types.is_numeric_dtype(dtype):
        numbers = pd.to_numeric(raw.map(lambda v: None if isinstance(v, bool) or v is None else v), errors="coerce")
        _check(column, present & numbers.isna(), "is not a number")
        if pd.api.types.is_integer_dtype(dtype) and present.all() and np.all(np.mod(numbers, 1) == 0):
            return numbers.astype(dtype)
        return numbers.astype("float64")
    _check(column, present & ~raw.map(lambda v: isinstance(v, str)), "is not a string")
    return raw.astype(dtype) if isinstance(dtype, pd.CategoricalDtype) else raw


def _text_or_none(value: Any) -> Any:
    return value if isinstance(value, str) else None


def _check(column: str, bad: pd.Series, what: str) -> None:
    if bad.any():
        rows = list(bad[bad].index[:5])
        raise PreprocessingError(f"column {column!r}: the value in row(s) {rows} {what}")


class DatasetCache:
    """Loaded dataset versions with their pipelines, by `name@version` (least recently used out).

    Versions are immutable, so a loaded version never goes stale. Loading verifies the
    version's hashes before unpickling its pipeline (see `versioning`'s trust model)."""

    def __init__(self, registry: DatasetRegistry, *, size: int = 4) -> None:
        self.registry = registry
        self._size = size
        self._items: OrderedDict[str, ProcessedDataset] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ref: str) -> ProcessedDataset:
        """The dataset version `name@version`, loaded once and then served from memory."""
        parsed = DatasetRef.parse(ref)
        name, version = parsed.name, parsed.version
        with self._lock:
            if ref in self._items:
                self._items.move_to_end(ref)
                return self._items[ref]
            dataset = self.registry.load(name, version)
            self._items[ref] = dataset
            while len(self._items) > self._size:
                self._items.popitem(last=False)
            return dataset
