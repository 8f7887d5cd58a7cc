"""A small random (seeded) raw dataset touching every metric, event type and condition, with
gaps, two readings a day, users signing up at different times and labels at awkward instants
(exactly at midnight, where a daily row becomes known). For engine-equivalence tests: big
enough to exercise every feature, small enough to run through both profiles in seconds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from healthmate_features.raw.schemas import CONDITIONS, EVENT_TYPES, METRICS

START = pd.Timestamp("2025-01-01", tz="UTC")


def raw_tables(users: int = 12, days: int = 75, seed: int = 5) -> dict[str, pd.DataFrame]:
    """users, health_readings, app_events and labels as DataFrames."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, users + 1)
    signup = [START + pd.Timedelta(days=int(rng.integers(0, 20)), hours=float(rng.uniform(0, 24))) for _ in ids]
    conditions = [";".join(rng.choice(CONDITIONS, size=int(rng.integers(0, 3)), replace=False)) for _ in ids]
    users_df = pd.DataFrame(
        {
            "user_id": ids,
            "signup_at": signup,
            "birth_year": rng.integers(1940, 2005, size=users),
            "sex": rng.choice(["female", "male", "other", "unknown"], size=users),
            "height_cm": np.round(rng.uniform(150, 200, size=users), 1),
            "conditions": conditions,
        }
    )
    readings, events = [], []
    for uid, start in zip(ids, signup, strict=True):
        first = (start.normalize() - START).days
        for d in range(first, days):
            day = START + pd.Timedelta(days=d)
            for m in METRICS:
                if rng.random() < 0.25:  # device gaps
                    continue
                for _ in range(int(rng.integers(1, 3))):
                    value = float(np.clip(rng.normal((m.low + m.high) / 3, (m.high - m.low) / 20), m.low, m.high))
                    readings.append(
                        (
                            uid,
                            m.name,
                            round(value, 2),
                            m.unit,
                            day + pd.Timedelta(hours=float(rng.uniform(0, 24))),
                            "watch",
                        )
                    )
            for _ in range(int(rng.integers(0, 5))):
                kind = str(rng.choice(EVENT_TYPES))
                at = day + pd.Timedelta(hours=float(rng.uniform(0, 24)))
                session = (f"s{uid}-{d}", round(float(rng.uniform(1, 60)), 1)) if kind == "session" else (None, None)
                events.append((uid, kind, at, *session))
    label_times = [
        START + pd.Timedelta(days=int(d), hours=float(h))
        for d, h in zip(rng.integers(25, days, 60), rng.choice([0.0, 7.5, 12.0, 23.99], 60), strict=True)
    ]
    labels = pd.DataFrame(
        {
            "user_id": rng.choice(ids, size=60),
            "event_timestamp": label_times,
            "adverse_event_30d": rng.integers(0, 2, 60),
            "disengaged_14d": rng.integers(0, 2, 60),
        }
    )
    return {
        "users": users_df,
        "health_readings": pd.DataFrame(
            readings, columns=["user_id", "metric", "value", "unit", "recorded_at", "device"]
        ),
        "app_events": pd.DataFrame(events, columns=["user_id", "event_type", "at", "session_id", "duration_minutes"]),
        "labels": labels,
    }
