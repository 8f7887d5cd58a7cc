"""Pushed readings: one definition (features.pushed.READING_FIELDS) for validation, the HTTP model
and the Feast schema; the checks never quote a value (health data)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from healthmate_features.api.models import EventsPush
from healthmate_features.errors import RawDataError
from healthmate_features.features import pushed

NOW = datetime(2026, 12, 7, 8, 0, tzinfo=timezone.utc)


def reading(**changes) -> dict:
    return {"user_id": 3, "event_timestamp": NOW, "heart_rate_bpm": 64.5, "steps_today": 1200} | changes


def test_reading_frame_has_the_push_sources_columns_and_types():
    frame = pushed.reading_frame([reading(), reading(user_id=4, steps_today=0)], now=NOW)
    assert list(frame.columns) == list(pushed.COLUMNS)
    assert [str(t) for t in frame.dtypes] == ["int64", "datetime64[ns, UTC]", "float64", "int64"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"heart_rate_bpm": 221.0}, "heart_rate_bpm is outside 25..220 bpm"),
        ({"steps_today": 100_001}, "steps_today is outside 0..100000 count"),
        ({"steps_today": 1.5}, "steps_today must be an integer [count]"),
        ({"heart_rate_bpm": True}, "heart_rate_bpm must be a number [bpm]"),
        ({"user_id": "3"}, "user_id must be an integer >= 1"),
        ({"event_timestamp": NOW - timedelta(days=1, seconds=1)}, "more than 1 day, 0:00:00 old"),
        ({"event_timestamp": NOW + timedelta(minutes=6)}, "more than 0:05:00 ahead"),
        ({"mood": "fine"}, "unknown mood"),
    ],
)
def test_each_bad_reading_is_named_without_its_value(changes, message):
    with pytest.raises(RawDataError) as raised:
        pushed.reading_frame([reading(), reading(**changes)], now=NOW)
    text = str(raised.value)
    assert text.startswith("1 of 2 readings are invalid; reading 1: ") and message in text
    assert not any(str(v) in text for k, v in changes.items() if k in ("heart_rate_bpm", "steps_today"))


def test_empty_and_oversized_pushes_are_refused():
    with pytest.raises(RawDataError, match="send at least one"):
        pushed.reading_frame([], now=NOW)
    with pytest.raises(RawDataError, match=f"send at most {pushed.MAX_READINGS}"):
        pushed.reading_frame([reading()] * (pushed.MAX_READINGS + 1), now=NOW)


def test_the_http_model_uses_the_same_ranges():
    EventsPush.model_validate({"readings": [reading()]})
    for field in pushed.READING_FIELDS:
        with pytest.raises(ValidationError, match=f"readings.0.{field.name}"):
            EventsPush.model_validate({"readings": [reading(**{field.name: field.high + 1})]})
    with pytest.raises(ValidationError, match="timezone"):
        EventsPush.model_validate({"readings": [reading(event_timestamp="2026-12-07T08:00:00")]})
