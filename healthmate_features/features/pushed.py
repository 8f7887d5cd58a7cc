"""Readings that services push one by one: the `health_readings_push` source and its view.

A service (or our HTTP API, `POST .../events`) pushes a reading, e.g. the heart rate a watch just
measured and the steps counted so far today, through Feast's `store.push(..., to=PushMode.
ONLINE_AND_OFFLINE)`: the row is in the online store at once (the `health_today` view: the latest
reading per user, TTL one day) and appended to the offline table `health_pushed` (a Parquet file
under data/features embedded, `<HM_PG_SCHEMA>.health_pushed` in production), so training frames
built later join what serving saw. The table is created by the first push.

`READING_FIELDS` is the one definition of a reading's values: the Feast schema, the validation of
`push_readings` and the HTTP model come from it; the ranges are ingest's (raw.schemas.METRICS).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Final

import pandas as pd
from feast import Entity, FeatureView, Field, PushSource
from feast.types import Float64, Int64

from healthmate_features.backends import backend_for
from healthmate_features.config import Settings
from healthmate_features.errors import RawDataError
from healthmate_features.raw.schemas import METRIC_BY_NAME

PUSH_SOURCE: Final = "health_readings_push"
PUSHED_TABLE: Final = "health_pushed"
TODAY_VIEW: Final = "health_today"
MAX_CLOCK_SKEW: Final = timedelta(minutes=5)  # a reading this far in the future is still accepted
MAX_AGE: Final = timedelta(days=1)  # older readings belong in the raw data (ingest), not in a push
MAX_READINGS: Final = 1_000  # per push
PUSH_LOCK_WAIT_S: Final = 10.0  # how long a push waits for another push, an erasure or retention


@dataclass(frozen=True)
class ReadingField:
    """One value of a pushed reading: its name, Feast type, unit, range and description."""

    name: str
    dtype: Any
    python: type
    unit: str
    low: float
    high: float
    description: str


_HR, _STEPS = METRIC_BY_NAME["resting_heart_rate"], METRIC_BY_NAME["steps"]
READING_FIELDS: Final = (
    ReadingField("heart_rate_bpm", Float64, float, _HR.unit, _HR.low, _HR.high, "latest heart rate"),
    ReadingField("steps_today", Int64, int, _STEPS.unit, _STEPS.low, _STEPS.high, "steps so far today (UTC day)"),
)
COLUMNS: Final = ("user_id", "event_timestamp", *(f.name for f in READING_FIELDS))


def offline_schema() -> Any:
    """The pyarrow schema of the offline table pushes append to (COLUMNS, as `reading_frame` types them)."""
    import pyarrow as pa

    types = {float: pa.float64(), int: pa.int64()}
    return pa.schema(
        [("user_id", pa.int64()), ("event_timestamp", pa.timestamp("us", tz="UTC"))]
        + [(f.name, types[f.python]) for f in READING_FIELDS]
    )


def push_source(settings: Settings | None = None) -> PushSource:
    """The `health_readings_push` PushSource; its batch source is the profile's `health_pushed` table."""
    batch = backend_for(settings or Settings.from_env()).batch_source(
        PUSHED_TABLE, description="Readings pushed by services (health_readings_push)."
    )
    return PushSource(
        name=PUSH_SOURCE,
        batch_source=batch,
        description="Real-time readings pushed by services: heart rate now, steps so far today.",
    )


def today_view(source: PushSource, user: Entity, *, owner: str) -> FeatureView:
    """The `health_today` view over pushed readings: the latest reading per user within a day."""
    from healthmate_features.features.definitions import DefinedFeatureView

    return DefinedFeatureView(
        name=TODAY_VIEW,
        entities=[user],
        ttl=MAX_AGE,
        schema=[
            Field(
                name=f.name,
                dtype=f.dtype,
                description=f"{f.description} [{f.unit}]",
                tags={"owner": owner, "unit": f.unit, "pii": "false"},
            )
            for f in READING_FIELDS
        ],
        source=source,
        online=True,
        description="Today's readings as services pushed them: latest heart rate, steps so far today.",
        tags={"owner": owner, "domain": "health", "pii": "false", "push_source": PUSH_SOURCE},
    )


def reading_frame(readings: Sequence[Mapping[str, Any]], *, now: datetime | None = None) -> pd.DataFrame:
    """Validate readings (dicts with COLUMNS) and return them as the frame Feast's push takes.

    Raises RawDataError naming the first bad reading, the field, the value's kind and the count:
    a missing or extra field, a user id below 1, a value outside ingest's range for its metric, or
    an event time without a time zone, more than 5 minutes ahead or more than a day old (older
    readings go through ingest). Values are never quoted (health data)."""
    if not readings:
        raise RawDataError("no readings to push; send at least one")
    if len(readings) > MAX_READINGS:
        raise RawDataError(f"{len(readings)} readings in one push; send at most {MAX_READINGS} per request")
    now = now or datetime.now(timezone.utc)
    problems: list[str] = []
    for i, reading in enumerate(readings):
        problem = _problem(reading, now)
        if problem:
            problems.append(f"reading {i}: {problem}")
    if problems:
        raise RawDataError(f"{len(problems)} of {len(readings)} readings are invalid; {problems[0]}")
    frame = pd.DataFrame({c: [r[c] for r in readings] for c in COLUMNS})
    frame["user_id"] = frame["user_id"].astype("int64")
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    for f in READING_FIELDS:
        frame[f.name] = frame[f.name].astype("float64" if f.python is float else "int64")
    return frame


def _problem(reading: Mapping[str, Any], now: datetime) -> str | None:
    """What is wrong with one reading (no values quoted), or None."""
    missing = [c for c in COLUMNS if reading.get(c) is None]
    extra = sorted(set(reading) - set(COLUMNS))
    if missing or extra:
        return (
            f"missing {', '.join(missing) or 'nothing'}, unknown {', '.join(extra) or 'nothing'}; "
            f"a reading has exactly {', '.join(COLUMNS)}"
        )
    user_id = reading["user_id"]
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id < 1:
        return "user_id must be an integer >= 1"
    at = reading["event_timestamp"]
    if not isinstance(at, datetime) or at.tzinfo is None:
        return "event_timestamp must be a time with a time zone (ISO 8601, e.g. 2026-12-07T08:00:00Z)"
    if at > now + MAX_CLOCK_SKEW:
        return f"event_timestamp is more than {MAX_CLOCK_SKEW} ahead of the server's clock"
    if at < now - MAX_AGE:
        return f"event_timestamp is more than {MAX_AGE} old; load older readings with `healthmate-features ingest`"
    for f in READING_FIELDS:
        value = reading[f.name]
        if isinstance(value, bool) or not isinstance(value, int | float) or (f.python is int and value != int(value)):
            return f"{f.name} must be {'an integer' if f.python is int else 'a number'} [{f.unit}]"
        if not f.low <= value <= f.high:
            return f"{f.name} is outside {f.low:g}..{f.high:g} {f.unit} (ingest's range for it)"
    return None


def push_readings(settings: Settings, readings: Sequence[Mapping[str, Any]]) -> int:
    """Validate readings and push them to the online and offline stores; returns how many.

    Side effects: the online store holds each user's latest reading (`health_today`); the
    offline table `health_pushed` gains the rows. Pushes hold the table's lock
    (`materialize:health_pushed`, as erasure and retention do while they rewrite it), so two
    pushes never rewrite the embedded Parquet file at once and an erased user's rows never come
    back; LockTimeoutError (HTTP 409) after PUSH_LOCK_WAIT_S. Raises RawDataError for invalid
    readings (nothing is written then)."""
    from healthmate_features.stores import feature_store

    frame = reading_frame(readings)
    with backend_for(settings).lock(f"materialize:{PUSHED_TABLE}", wait_s=PUSH_LOCK_WAIT_S):
        feature_store.push(settings, PUSH_SOURCE, frame)
    return len(frame)
