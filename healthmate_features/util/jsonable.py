"""Plain JSON values from what pandas, numpy and the standard library hand us: the one converter.

numpy scalars and arrays become numbers and lists, NaN/inf and NaT None, datetimes ISO
strings, timedeltas ISO-8601 durations, paths strings, sets sorted lists, enums their values.
Manifests convert strictly (anything else is an error naming where it is); API responses
leniently (anything else is left for the response encoder).
"""

from __future__ import annotations

import enum
import json
import math
import os
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from healthmate_features.errors import HealthmateError


class NotJsonError(HealthmateError):
    """A value has no JSON form; the message names where it is, `fix` says what to pass instead."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


def to_jsonable(value: Any, where: str = "value", *, strict: bool = True) -> Any:
    """`value` as plain JSON values. Strict: raise NotJsonError naming `where` for anything else;
    lenient: return anything else (and any key, as its str) unchanged."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if strict and not isinstance(key, (str, int, float, bool)) and key is not None:
                raise NotJsonError(f"{where} has a key of type {type(key).__name__} ({key!r})", "use string keys")
            kind = type(item)
            if item is None or kind is str or kind is int or kind is bool:  # the bulk of feature values: as they are
                out[str(key)] = item
            elif kind is float:
                out[str(key)] = item if math.isfinite(item) else None
            else:
                out[str(key)] = to_jsonable(item, f"{where}[{key!r}]", strict=strict)
        return out
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item, f"{where}[{i}]", strict=strict) for i, item in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        items = [to_jsonable(item, f"{where} item", strict=strict) for item in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True, default=str))
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist(), where, strict=strict)
    if value is pd.NaT:
        return None
    if isinstance(value, (np.datetime64, np.timedelta64)):
        if np.isnat(value):
            return None
        wrapped = pd.Timestamp(value) if isinstance(value, np.datetime64) else pd.Timedelta(value)
        return to_jsonable(wrapped, where, strict=strict)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return pd.Timedelta(value).isoformat()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value, where, strict=strict)
    if isinstance(value, np.generic):
        return to_jsonable(value.item(), where, strict=strict)
    if not strict:
        return value
    raise NotJsonError(
        f"{where} is a {type(value).__name__} ({value!r:.60})", "convert it to a string, number, list or dict"
    )
