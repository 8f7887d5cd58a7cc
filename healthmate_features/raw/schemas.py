"""Documented schemas of the raw tables, and the catalog of health metrics.

This module is the one source for column names, types, allowed values and physically
possible ranges: the generator writes these tables, ingest validates against them, feature
engineering reads them, and README's schema section is printed from them
(`healthmate-features schemas`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One kind of health reading: `health_readings.metric` takes its `name`."""

    name: str
    unit: str
    low: float
    high: float
    description: str
    key: bool = True  # key metrics get rolling 7d/30d windows


METRICS: tuple[Metric, ...] = (
    Metric("resting_heart_rate", "bpm", 25, 220, "resting heart rate"),
    Metric("steps", "count", 0, 100_000, "steps walked in the reading's interval"),
    Metric("sleep_minutes", "min", 0, 1_440, "minutes asleep in the night ending that day"),
    Metric("weight", "kg", 20, 350, "body weight"),
    Metric("systolic_bp", "mmHg", 60, 260, "systolic blood pressure"),
    Metric("diastolic_bp", "mmHg", 30, 160, "diastolic blood pressure"),
    Metric("blood_glucose", "mg/dL", 20, 600, "blood glucose"),
    Metric("spo2", "%", 50, 100, "blood oxygen saturation", key=False),
)
METRIC_BY_NAME = {m.name: m for m in METRICS}

SEXES = ("female", "male", "other", "unknown")
CONDITIONS = ("hypertension", "type2_diabetes", "asthma", "heart_disease", "obesity")
DEVICES = ("watch", "phone", "scale", "bp_cuff", "glucometer", "manual")
EVENT_TYPES = (
    "login",
    "session",
    "meal_logged",
    "workout_logged",
    "medication_logged",
    "notification_sent",
    "notification_opened",
)


@dataclass(frozen=True)
class Column:
    """A raw column: type, nullability and the values it may take."""

    name: str
    dtype: str  # one of: int, float, string, timestamp
    description: str
    nullable: bool = False
    allowed: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class TableSchema:
    name: str
    description: str
    columns: tuple[Column, ...]
    # The column that dates a row for retention (README "Erasure, retention and exports");
    # None: the table holds no events (users: one profile row per person, removed by erasure).
    event_time: str | None = None

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


USERS = TableSchema(
    "users",
    "one row per user",
    (
        Column("user_id", "int", "user identifier (> 0)", low=1),
        Column("signup_at", "timestamp", "account creation time, timezone-aware (UTC)"),
        Column("birth_year", "int", "year of birth", low=1900, high=2015),
        Column("sex", "string", "self-reported sex", allowed=SEXES),
        Column("height_cm", "float", "height in centimetres", nullable=True, low=50, high=250),
        Column(
            "conditions",
            "string",
            "known conditions, ';'-separated (empty: none); each one of: " + ", ".join(CONDITIONS),
            nullable=True,
        ),
    ),
)

HEALTH_READINGS = TableSchema(
    "health_readings",
    "one row per measurement",
    (
        Column("user_id", "int", "user identifier", low=1),
        Column("metric", "string", "what was measured", allowed=tuple(METRIC_BY_NAME)),
        Column("value", "float", "the measurement, in `unit`; range depends on the metric"),
        Column("unit", "string", "unit of `value`; must be the metric's unit (see metrics)"),
        Column("recorded_at", "timestamp", "measurement time, timezone-aware (UTC)"),
        Column("device", "string", "source device", nullable=True, allowed=DEVICES),
    ),
    event_time="recorded_at",
)

APP_EVENTS = TableSchema(
    "app_events",
    "one row per app event",
    (
        Column("user_id", "int", "user identifier", low=1),
        Column("event_type", "string", "what happened", allowed=EVENT_TYPES),
        Column("at", "timestamp", "event time, timezone-aware (UTC)"),
        Column("session_id", "string", "session identifier (session events)", nullable=True),
        Column(
            "duration_minutes",
            "float",
            "session length in minutes; required for event_type 'session'",
            nullable=True,
            low=0,
            high=720,
        ),
    ),
    event_time="at",
)

LABELS = TableSchema(
    "labels",
    "prediction times with outcomes (written by the generator; the entity frame of the demo)",
    (
        Column("user_id", "int", "user identifier", low=1),
        Column("event_timestamp", "timestamp", "prediction time, timezone-aware (UTC)"),
        Column("adverse_event_30d", "int", "1 if an adverse health event follows within 30 days", low=0, high=1),
        Column("disengaged_14d", "int", "1 if the user stops using the app within 14 days", low=0, high=1),
    ),
    event_time="event_timestamp",
)

RAW_TABLES: dict[str, TableSchema] = {t.name: t for t in (USERS, HEALTH_READINGS, APP_EVENTS, LABELS)}


def describe_markdown() -> str:
    """The schemas as Markdown tables (README's schema section is this output)."""
    lines: list[str] = []
    for table in RAW_TABLES.values():
        lines += [
            f"### `{table.name}`: {table.description}",
            "",
            "| column | type | null | rule | description |",
            "|---|---|---|---|---|",
        ]
        for c in table.columns:
            rule = ""
            if c.allowed:
                rule = "one of " + ", ".join(c.allowed)
            elif c.low is not None or c.high is not None:
                rule = f"{c.low if c.low is not None else ''}..{c.high if c.high is not None else ''}"
            lines.append(f"| {c.name} | {c.dtype} | {'yes' if c.nullable else 'no'} | {rule} | {c.description} |")
        lines.append("")
    lines += [
        "### Metrics (`health_readings.metric`)",
        "",
        "| metric | unit | possible range | description |",
        "|---|---|---|---|",
    ]
    for m in METRICS:
        lines.append(f"| {m.name} | {m.unit} | {m.low:g}..{m.high:g} | {m.description} |")
    return "\n".join(lines) + "\n"
