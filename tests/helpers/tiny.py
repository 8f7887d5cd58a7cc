"""A tiny hand-made raw dataset whose feature values can be computed by hand (the `tiny` fixture).

Two users over 40 days: user 1 has a resting heart rate of 60 + d at 07:00 on day d (none on
RHR_GAP days, an extra 80 at 19:00 on day 5), steps of 1000 x (d % 7 + 1) at 21:00, three weights,
a session, meals and notifications; user 2 signs up on day 9 with one day of data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

DAY0 = pd.Timestamp("2025-01-01", tz="UTC")
LAST_DAY = 39  # 2025-02-09
RHR_GAP = (10, 11, 12)


def day(d: int, hour: float = 0) -> pd.Timestamp:
    """Midnight UTC of day d (day 0 is 2025-01-01) plus `hour` hours."""
    return DAY0 + pd.Timedelta(days=d) + pd.Timedelta(hours=hour)


def rhr(d: int) -> float:
    """User 1's resting heart rate reading at 07:00 on day d (none on RHR_GAP days)."""
    return 60.0 + d


def raw_tables() -> dict[str, pd.DataFrame]:
    """users, health_readings, app_events and labels as fresh DataFrames (safe to modify)."""
    users = pd.DataFrame(
        {
            "user_id": [1, 2],
            "signup_at": [day(0, 8), day(9, 12)],
            "birth_year": [1980, 1990],
            "sex": ["female", "male"],
            "height_cm": [170.0, 180.0],
            "conditions": ["hypertension", ""],
        }
    )
    readings = []
    for d in range(LAST_DAY + 1):
        if d not in RHR_GAP:
            readings.append((1, "resting_heart_rate", rhr(d), "bpm", day(d, 7), "watch"))
        readings.append((1, "steps", 1000.0 * (d % 7 + 1), "count", day(d, 21), "watch"))
    readings.append((1, "resting_heart_rate", 80.0, "bpm", day(5, 19), "watch"))
    for d, w in ((0, 70.0), (15, 71.0), (31, 72.0)):
        readings.append((1, "weight", w, "kg", day(d, 6.5), "scale"))
    readings.append((2, "steps", 4000.0, "count", day(LAST_DAY, 20), "phone"))
    health = pd.DataFrame(readings, columns=["user_id", "metric", "value", "unit", "recorded_at", "device"])
    events = [
        (1, "session", day(2, 9), "s1", 15.0),
        (1, "meal_logged", day(2, 12), None, None),
        (1, "meal_logged", day(3, 12), None, None),
    ]
    for d in range(1, 11):
        events.append((1, "notification_sent", day(d, 10), None, None))
    for d in (1, 3, 5):
        events.append((1, "notification_opened", day(d, 11), None, None))
    events.append((2, "login", day(LAST_DAY, 8), None, None))
    app = pd.DataFrame(events, columns=["user_id", "event_type", "at", "session_id", "duration_minutes"])
    labels = pd.DataFrame(
        {
            "user_id": [1, 1, 2],
            "event_timestamp": [day(15, 12), day(4, 18), day(20, 0)],
            "adverse_event_30d": [0, 1, 0],
            "disengaged_14d": [1, 0, 0],
        }
    )
    return {"users": users, "health_readings": health, "app_events": app, "labels": labels}


def write_raw(raw_dir: Path, tables: dict[str, pd.DataFrame] | None = None) -> Path:
    """Write the tables (default: the tiny ones) as Parquet files into raw_dir; return raw_dir."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    for name, df in (tables or raw_tables()).items():
        df.to_parquet(raw_dir / f"{name}.parquet", index=False)
    return raw_dir
