"""Distribution sketches of raw features: what drift and the dataset pictures compare.

A manifest stores one sketch per raw feature of each joined split (`splits.joined_train.sketches`),
small enough to read without the data files:

- numeric (more than MAX_CATEGORIES distinct values): `edges`, the distinct 1st..99th
  percentiles of the non-null values, and `counts`, how many values fall in each of the
  len(edges) + 1 bins (-inf, e0], (e0, e1], ..., (e_last, +inf);
- categorical (strings, booleans, categories, or numbers with at most MAX_CATEGORIES distinct
  values): `counts`, values (as strings) to counts, the MAX_CATEGORIES most frequent and the
  rest under OTHER.

Both carry `rows` and `nulls`. Percentile edges and category counts are aggregates over the
whole split: no row can be read back from them. `place` counts new values into a sketch's
bins, so that two samples compare bin by bin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

#: A numeric column with at most this many distinct values is sketched as categories.
MAX_CATEGORIES = 20
#: Where the categories beyond the MAX_CATEGORIES most frequent are counted.
OTHER = "__other__"
_PERCENTILES = np.arange(1, 100)


def sketch_frame(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """One sketch per column of `frame` (those named in `columns`, when given); datetimes are left out."""
    names = [c for c in (columns if columns is not None else frame.columns) if c in frame.columns]
    found = {}
    for name in names:
        sketch = sketch_column(frame[name])
        if sketch is not None:
            found[str(name)] = sketch
    return found


def sketch_column(column: pd.Series) -> dict[str, Any] | None:
    """The sketch of one column (see the module docstring); None for datetimes and timedeltas."""
    dtype = column.dtype
    if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        return None
    present = column.dropna()
    rows, nulls = int(len(column)), int(len(column) - len(present))
    numeric = (
        pd.api.types.is_numeric_dtype(dtype)
        and not pd.api.types.is_bool_dtype(dtype)
        and not isinstance(dtype, pd.CategoricalDtype)
    )
    if numeric and present.nunique() > MAX_CATEGORIES:
        values = present.to_numpy(dtype="float64")
        edges = np.unique(np.percentile(values, _PERCENTILES))
        counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
        return {
            "kind": "numeric",
            "rows": rows,
            "nulls": nulls,
            "edges": [float(e) for e in edges],
            "counts": [int(c) for c in counts],
        }
    counts_by_value = present.map(category_key).value_counts()
    top = counts_by_value.iloc[:MAX_CATEGORIES]
    categories = {str(k): int(v) for k, v in top.items()}
    rest = int(counts_by_value.iloc[MAX_CATEGORIES:].sum())
    if rest:
        categories[OTHER] = rest
    return {"kind": "categorical", "rows": rows, "nulls": nulls, "counts": categories}


def place(sketch: Mapping[str, Any], column: pd.Series) -> dict[str, Any]:
    """Count the values of `column` into the bins (or categories) of `sketch`: a sketch of the same shape.

    Numbers go to the bins of the sketch's edges; categories the sketch does not know count under
    OTHER. A numeric sketch given non-numbers counts them as nulls."""
    rows = int(len(column))
    if sketch["kind"] == "numeric":
        values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64")
        present = values[~np.isnan(values)]
        edges = np.asarray(sketch["edges"], dtype="float64")
        counts = np.bincount(np.searchsorted(edges, present, side="left"), minlength=len(edges) + 1)
        return {
            "kind": "numeric",
            "rows": rows,
            "nulls": int(rows - len(present)),
            "edges": list(sketch["edges"]),
            "counts": [int(c) for c in counts],
        }
    present = column.dropna()
    known = set(sketch["counts"])
    keys = present.map(category_key)
    keys = keys.where(keys.isin(known), OTHER)
    observed = keys.value_counts()
    categories = {key: int(observed.get(key, 0)) for key in sketch["counts"]}
    if OTHER in observed.index and OTHER not in categories:
        categories[OTHER] = int(observed[OTHER])
    return {"kind": "categorical", "rows": rows, "nulls": int(rows - len(present)), "counts": categories}


def bin_counts(sketch: Mapping[str, Any]) -> list[int]:
    """A sketch's counts as one list (numeric bins or categories in the sketch's order) plus the null count last."""
    counts = sketch["counts"]
    values = list(counts.values()) if isinstance(counts, Mapping) else list(counts)
    return [int(v) for v in values] + [int(sketch["nulls"])]


def bin_labels(sketch: Mapping[str, Any]) -> list[str]:
    """Labels of `bin_counts`' entries: "<= e0", "(e0, e1]", ..., "> e_last" or the categories, then "null"."""
    if sketch["kind"] == "categorical":
        return [*sketch["counts"], "null"]
    edges = [f"{e:.4g}" for e in sketch["edges"]]
    if not edges:
        return ["all", "null"]
    middle = [f"({a}, {b}]" for a, b in zip(edges, edges[1:], strict=False)]
    return [f"<= {edges[0]}", *middle, f"> {edges[-1]}", "null"]


def category_key(value: Any) -> str:
    """The string a category is counted under: integral floats without ".0", NumPy scalars as Python's."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)
