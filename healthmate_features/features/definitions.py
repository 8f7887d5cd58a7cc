"""Helpers the Feast definitions in feature_repo/ use to build their schemas and sources.

Kept here so feature_repo/ stays declarative: a feature view names its table and gets its
fields, with descriptions, units and tags, from `features.FEATURE_TABLES`, and its batch source
from `source(table)`, which follows the profile (a Parquet FileSource when embedded, a
PostgreSQLSource over `<HM_PG_SCHEMA>.<table>` in production) under the same source name.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
from feast import FeatureView, Field
from feast.data_source import DataSource
from feast.errors import FeastError
from feast.types import Float64, Int64, String

from healthmate_features.backends import backend_for
from healthmate_features.config import Settings
from healthmate_features.errors import RequestTimeError
from healthmate_features.features.catalog import FEATURE_TABLES, TEMPORAL_FEATURES
from healthmate_features.stores import online

OWNER = "ml-platform@healthmate"
_TYPES = {"Float64": Float64, "Int64": Int64, "String": String}


def fields(table: str) -> list[Field]:
    """Feast fields of one feature table, with description and tags (owner, unit, pii)."""
    return [
        Field(
            name=f.name,
            dtype=_TYPES[f.dtype],
            description=f.description + (f" [{f.unit}]" if f.unit else ""),
            tags={"owner": OWNER, "unit": f.unit, "pii": str(f.pii).lower()},
        )
        for f in FEATURE_TABLES[table].features
    ]


def ttl(table: str) -> timedelta:
    return timedelta(days=FEATURE_TABLES[table].ttl_days)


def description(table: str) -> str:
    return FEATURE_TABLES[table].description


def source(table: str) -> DataSource:
    """The batch source of a feature table for the profile in HM_PROFILE, named `<table>_source`.

    `feast apply` imports feature_repo/ in its own process, so the environment is the channel:
    `stores.feature_store.apply` (and `healthmate-features env`, for the plain feast CLI) exports
    HM_PROFILE and HM_PG_SCHEMA there.
    """
    return backend_for(Settings.from_env()).batch_source(table, description=description(table))


class DefinedFeatureView(FeatureView):
    """A FeatureView that equals another when their definitions are equal.

    Feast's `FeatureView.__eq__` also compares `materialization_intervals`, which only the registry
    holds (every `materialize` appends one). `feast plan` and `feast apply` compare the registry's
    view with the repository's (`current != new`), so after a materialization every view looked
    changed, and Feast then printed its batch source as the "update" (a copy differing only in the
    source's created/updated times). Here the intervals are not part of equality; everything else
    Feast compares still is, so a real change is still planned and applied. The registry stores
    what Feast stores for any FeatureView (the class is not in the proto), and Feast's registries
    carry the intervals over whenever they rewrite a view.
    """

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FeatureView):
            return False
        if other.materialization_intervals == self.materialization_intervals:
            return FeatureView.__eq__(self, other)
        # `other` as it would be with our intervals: a shallow twin, so neither view is changed.
        twin = object.__new__(type(other))
        twin.__dict__.update(other.__dict__, materialization_intervals=self.materialization_intervals)
        return FeatureView.__eq__(self, twin)

    # `registry_view != repo_view` calls the right operand's reflected method first when it is a
    # subclass instance: define __ne__ as the negation of our __eq__ (and keep Feast's hash).
    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return FeatureView.__hash__(self)


def feature_view(table: str, source, entity) -> FeatureView:
    """The feature view of one feature table: schema, TTL, description and tags from the catalog."""
    pii = any(f.pii for f in FEATURE_TABLES[table].features)
    return DefinedFeatureView(
        name=table,
        entities=[entity],
        ttl=ttl(table),
        schema=fields(table),
        source=source,
        description=description(table),
        tags={"owner": OWNER, "domain": table.split("_")[0], "pii": str(pii).lower()},
    )


# Epoch seconds a request time may have: 1900-01-01 .. 2200-01-01. Outside it, a number is almost
# surely milliseconds or nanoseconds, which must not be read silently as a date in 1970 or 50000.
_EPOCH_S_RANGE = (-2_208_988_800, 7_258_118_400)


def _shown(value: object) -> str:
    return repr(value.item() if hasattr(value, "item") else value)


class FeastRequestTimeError(RequestTimeError, FeastError):
    """A RequestTimeError that Feast's feature server answers as a client error.

    `feast serve` turns a FeastError into its `http_status_code()` with Feast's JSON error detail
    (module, class, message) and any other exception into a 500: an unreadable request time is
    the caller's to fix, so 422. Still a RequestTimeError for our CLI, API and SDK callers.
    """

    def http_status_code(self) -> int:
        return 422


def request_times(values: pd.Series) -> pd.Series:
    """Request times as tz-aware UTC timestamps, read the same way whatever form they come in.

    Datetimes (naive = UTC) and ISO 8601 strings are parsed; numbers are epoch seconds (Feast's
    UnixTimestamp, what a `feast serve` client sends as `"event_timestamp": [1764600000]`).
    Raises RequestTimeError (FeastRequestTimeError) naming the first unreadable value and how
    many there are; a missing (null) time is unreadable too.
    """
    missing = values.isna()
    if missing.any():
        raise FeastRequestTimeError(
            f"event_timestamp is null in {int(missing.sum())} of {len(values)} rows; "
            "send every row's request time (ISO 8601, a datetime, or epoch seconds)"
        )
    if pd.api.types.is_bool_dtype(values):
        raise FeastRequestTimeError(f"event_timestamp holds booleans ({_shown(values.iloc[0])}); send a time")
    if pd.api.types.is_numeric_dtype(values):
        seconds = values.astype("float64")
        low, high = _EPOCH_S_RANGE
        bad = seconds.notna() & ((seconds < low) | (seconds > high))
        if bad.any():
            raise FeastRequestTimeError(
                f"event_timestamp {_shown(values[bad].iloc[0])} ({int(bad.sum())} of {len(values)} values) "
                "is not epoch seconds between 1900 and 2200; "
                "send seconds (not milliseconds or nanoseconds) or an ISO 8601 time"
            )
        return pd.to_datetime(seconds, unit="s", utc=True)
    if pd.api.types.is_datetime64_any_dtype(values):
        return pd.to_datetime(values, utc=True)
    parsed = pd.to_datetime(values, utc=True, errors="coerce", format="mixed")
    bad = parsed.isna() & values.notna()
    if bad.any():
        raise FeastRequestTimeError(
            f"event_timestamp {_shown(values[bad].iloc[0])} ({int(bad.sum())} of {len(values)} values) is not a time; "
            "send an ISO 8601 time such as 2025-09-28T12:00:00Z, a datetime, or epoch seconds"
        )
    return parsed


# Ticks per second of each pandas datetime unit: pandas' Series.dt.total_seconds() is ticks / this.
_TICKS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def temporal_frame(inputs: pd.DataFrame) -> pd.DataFrame:
    """The temporal view's features of request times (`event_timestamp`) and `signup_epoch_s`.

    What `feature_repo/temporal.py` runs (Feast's pandas mode), online per request and offline
    per entity frame. The calendar fields come straight from the request times' integer ticks
    with numpy (pandas' `.dt` accessors cost ~1 ms per request), computed exactly as pandas
    computes them: values are bit-for-bit those of the `.dt` formulation it replaced
    (tests/unit/test_request_times.py). Raises RequestTimeError for unreadable or missing times.
    """
    # request_times refuses unreadable and missing (null) times, so every tick below is a time
    times = request_times(inputs["event_timestamp"]).dt.tz_localize(None).to_numpy()  # UTC, in its unit
    ticks = times.view("int64")
    per_second = _TICKS_PER_SECOND[np.datetime_data(times.dtype)[0]]
    whole = ticks // per_second  # floor: 23:59:59.5 on the day before the epoch is second 59
    days = whole // 86_400
    of_day = whole - days * 86_400
    hour = of_day // 3600 + (of_day % 3600 // 60) / 60.0 + (of_day % 60) / 3600.0
    dow = (days + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    date = days.astype("datetime64[D]")
    month = date.astype("datetime64[M]").astype("int64") % 12  # January = 0
    day_of_year = (date - date.astype("datetime64[Y]").astype("datetime64[D]")).astype("int64") + 1
    signup = inputs["signup_epoch_s"]
    if pd.api.types.is_numeric_dtype(signup):
        signup_s = signup.to_numpy(dtype="float64", na_value=np.nan)
    else:  # e.g. all null: object
        signup_s = pd.to_numeric(signup, errors="coerce").astype("float64").to_numpy()
    seconds = ticks / per_second  # Series.dt.total_seconds() of (ts - epoch): ticks over ticks per second
    columns = {
        "hour_sin": np.sin(2 * np.pi * hour / 24.0),
        "hour_cos": np.cos(2 * np.pi * hour / 24.0),
        "dow_sin": np.sin(2 * np.pi * dow / 7.0),
        "dow_cos": np.cos(2 * np.pi * dow / 7.0),
        "month_sin": np.sin(2 * np.pi * month / 12.0),
        "month_cos": np.cos(2 * np.pi * month / 12.0),
        "is_weekend": (dow >= 5).astype("int64"),
        "day_of_year": day_of_year,
        "days_since_signup": (seconds - signup_s) / 86400.0,
    }
    return pd.DataFrame(columns, index=inputs.index)


TEMPORAL_ROWS = "temporal_frame"  # the temporal view's `online_rows` tag: its rows come from `temporal_rows` online


@functools.lru_cache(maxsize=256)
def _calendar(time: datetime) -> dict[str, object]:
    """temporal_frame's outputs that depend on the request time only, for one request time (one row)."""
    frame = temporal_frame(online.pandas_frame({"event_timestamp": [time], "signup_epoch_s": [None]}))
    return {name: frame[name].to_numpy()[0] for name in frame.columns}


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def temporal_rows(columns: dict[str, list]) -> dict[str, list] | None:
    """temporal_frame's output columns for the online lookup's input columns, without pandas per call.

    `columns` are the lists `stores.online.pandas_frame` would turn into the transformation's
    frame. The calendar values depend on the request time only: computed by temporal_frame itself
    once per distinct time (an LRU: online times are whole seconds, so one per second) and reused
    for every user; `days_since_signup` is the same IEEE arithmetic temporal_frame does with numpy
    (`(seconds - signup_s) / 86400.0`, seconds = microsecond ticks / 1e6), per user in Python.
    Bit-identical to temporal_frame (tests/unit/test_request_times.py); None (run temporal_frame)
    for inputs outside that: request times that are not UTC datetimes, or signups that are not
    ints, floats or nulls. No side effects besides the LRU.
    """
    times, signups = columns.get("event_timestamp"), columns.get("signup_epoch_s")
    if times is None or signups is None or len(times) != len(signups):
        return None
    out: dict[str, list] = {}
    days: list[float] = []
    calendars = []
    for time, signup in zip(times, signups, strict=True):
        if type(time) is not datetime or time.tzinfo is not timezone.utc:
            return None
        if signup is None:
            signup_s = float("nan")
        elif type(signup) is int or type(signup) is float:
            if type(signup) is int and abs(signup) >= 2**53:  # numpy's int -> float rounding: leave it to numpy
                return None
            signup_s = float(signup)
        else:
            return None
        seconds = ((time - _EPOCH) // _MICROSECOND) / 1_000_000  # exact int -> float64, one rounded division
        calendars.append(_calendar(time))
        days.append((seconds - signup_s) / 86400.0)
    for name in calendars[0] if calendars else _calendar(_EPOCH):
        out[name] = days if name == "days_since_signup" else [calendar[name] for calendar in calendars]
    return out


online.register_rows(TEMPORAL_ROWS, temporal_rows)


def temporal_schema() -> list[Field]:
    """Schema of the on-demand temporal view: names and types only (see TEMPORAL_FEATURES)."""
    return [Field(name=f.name, dtype=_TYPES[f.dtype]) for f in TEMPORAL_FEATURES]


def temporal_description() -> str:
    return "Cyclical and calendar encodings of the request time, and account age. " + "; ".join(
        f"{f.name}: {f.description}" + (f" [{f.unit}]" if f.unit else "") for f in TEMPORAL_FEATURES
    )
