"""The temporal view reads a request time the same way in every form it can arrive in, and
computes the same bits as the pandas `.dt` formulation it replaced."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from feast.errors import FeastError
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from healthmate_features.errors import RequestTimeError
from healthmate_features.features.definitions import request_times, temporal_frame, temporal_rows
from healthmate_features.stores.online import arrow_values, pandas_frame

NOON = pd.Timestamp("2025-12-01T14:40:00Z")


@pytest.mark.parametrize(
    "values",
    [
        pd.Series([1764600000]),  # epoch seconds, as a feast serve client sends them
        pd.Series([1764600000.0]),
        pd.Series(["2025-12-01T14:40:00Z"]),
        pd.Series(["2025-12-01T15:40:00+01:00"]),
        pd.Series(pd.to_datetime(["2025-12-01 14:40:00"])),  # naive: UTC
        pd.Series([NOON.tz_convert("Europe/Berlin")]),
        pd.Series([NOON.to_pydatetime()], dtype=object),
    ],
)
def test_every_form_of_the_same_instant_reads_the_same(values):
    assert request_times(values).tolist() == [NOON]


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (pd.Series([1764600000000]), r"1764600000000 \(1 of 1 values\) is not epoch seconds.*not milliseconds"),
        (pd.Series([1764600000, 1764600000000000000]), r"\(1 of 2 values\)"),
        (pd.Series(["not-a-date", "2025-12-01T14:40:00Z"]), r"'not-a-date' \(1 of 2 values\) is not a time"),
        (pd.Series([True]), "booleans"),
        (pd.Series(["2025-12-01T14:40:00Z", None]), r"event_timestamp is null in 1 of 2 rows"),
        (pd.Series([1764600000, float("nan")]), r"event_timestamp is null in 1 of 2 rows"),
        (pd.Series([None], dtype=object), r"event_timestamp is null in 1 of 1 rows"),
    ],
)
def test_what_cannot_be_read_is_refused_naming_the_value_and_count(values, match):
    with pytest.raises(RequestTimeError, match=match) as info:
        request_times(values)
    # Feast's feature server answers a FeastError with its status code and JSON detail, anything else with a 500
    assert isinstance(info.value, FeastError) and info.value.http_status_code() == 422


# -- the temporal view's computation --------------------------------------------------------


TICKS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


@hsettings(max_examples=60, deadline=None)
@given(
    unit=st.sampled_from(sorted(TICKS_PER_SECOND)),
    zone=st.sampled_from(["UTC", None, "Europe/Berlin", "America/St_Johns"]),
    rows=st.lists(
        st.tuples(
            st.integers(-2_208_988_800, 7_258_118_399),  # 1900..2200, whole seconds
            st.floats(0, 1, exclude_max=True),  # the fraction of a second
            st.one_of(st.none(), st.integers(-2_208_988_800, 7_258_118_399)),  # signup, or unknown
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_temporal_frame_equals_the_dt_formulation_bit_for_bit(dt_temporal_reference, unit, zone, rows):
    """Every unit, zone, pre-1970 instant, fraction of a second and missing signup: the same bits."""
    per_second = TICKS_PER_SECOND[unit]
    ticks = [s * per_second + int(f * per_second) for s, f, _ in rows]
    table = pa.table(
        {
            "user_id": pa.array(range(len(rows)), pa.int64()),
            "event_timestamp": pa.array(ticks, pa.timestamp(unit, tz=zone)),
            "signup_epoch_s": pa.array([signup for _, _, signup in rows], pa.int64()),
        }
    )
    got = dt_temporal_reference.as_feast_pandas_mode(temporal_frame, table)
    want = dt_temporal_reference.as_feast_pandas_mode(dt_temporal_reference.dt_reference, table)
    assert got.schema == want.schema
    assert got.equals(want), {
        name: [(a, b) for a, b in zip(got[name].to_pylist(), want[name].to_pylist(), strict=True) if a != b][:3]
        for name in want.column_names
    }


@pytest.mark.parametrize(
    "values",
    [
        pd.Series([1764600000, -86401]),
        pd.Series([1764600000.5, -86400.25]),
        pd.Series(["2025-12-01T14:40:00.25Z", "1969-12-31T23:59:59.5+01:00"]),
        pd.Series([NOON.to_pydatetime(), NOON.tz_convert("Asia/Kolkata").to_pydatetime()], dtype=object),
    ],
)
def test_temporal_frame_equals_the_dt_formulation_for_numbers_and_strings(dt_temporal_reference, values):
    inputs = pd.DataFrame({"event_timestamp": values, "signup_epoch_s": pd.Series([1_700_000_000, None])})
    want = dt_temporal_reference.dt_reference(inputs)
    pd.testing.assert_frame_equal(temporal_frame(inputs), want, check_exact=True)


def test_temporal_frame_refuses_a_missing_request_time_naming_the_count():
    inputs = pd.DataFrame({"event_timestamp": [NOON, None, None], "signup_epoch_s": [1, 2, 3]})
    with pytest.raises(RequestTimeError, match=r"event_timestamp is null in 2 of 3 rows"):
        temporal_frame(inputs)


def test_temporal_frame_at_a_known_instant():
    row = temporal_frame(pd.DataFrame({"event_timestamp": [NOON], "signup_epoch_s": [int(NOON.timestamp()) - 86400]}))
    assert row.to_dict("records") == [
        {
            "hour_sin": pytest.approx(np.sin(2 * np.pi * (14 + 40 / 60) / 24)),
            "hour_cos": pytest.approx(np.cos(2 * np.pi * (14 + 40 / 60) / 24)),
            "dow_sin": 0.0,  # a Monday
            "dow_cos": 1.0,
            "month_sin": pytest.approx(np.sin(2 * np.pi * 11 / 12)),  # December
            "month_cos": pytest.approx(np.cos(2 * np.pi * 11 / 12)),
            "is_weekend": 0,
            "day_of_year": 335,
            "days_since_signup": 1.0,
        }
    ]


# --- temporal_rows: the online twin of temporal_frame ------------------------------------------------


def _bits(values) -> list:
    """Values as comparable bits: floats by their IEEE representation (NaN included), ints as they are."""
    out = []
    for v in values:
        if isinstance(v, (float, np.floating)):
            out.append(("f", np.float64(v).view(np.int64).item()))
        else:
            out.append((type(v).__name__, int(v)))
    return out


_UTC_TIMES = st.datetimes(
    min_value=datetime(1900, 1, 2), max_value=datetime(2199, 12, 30), timezones=st.just(timezone.utc)
)
_SIGNUPS = st.one_of(
    st.none(),
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.integers(min_value=-4_000_000_000, max_value=7_000_000_000),
    st.floats(allow_nan=True, allow_infinity=True),
)


@given(st.lists(st.tuples(_UTC_TIMES, _SIGNUPS), min_size=1, max_size=6), st.booleans())
@hsettings(max_examples=300, deadline=None)
def test_temporal_rows_are_temporal_frame_bit_for_bit(rows, whole_seconds):
    times = [t.replace(microsecond=0) if whole_seconds else t for t, _ in rows]
    signups = [s for _, s in rows]
    columns = {"user_id": list(range(len(rows))), "event_timestamp": times, "signup_epoch_s": signups}
    twin = temporal_rows(columns)
    frame = temporal_frame(pandas_frame(columns))
    assert twin is not None
    assert list(twin) == list(frame.columns)
    for name in frame.columns:
        assert _bits(twin[name]) == _bits(arrow_values(frame[name])), name


def test_temporal_rows_leave_other_inputs_to_temporal_frame():
    noon = NOON.to_pydatetime()
    assert temporal_rows({"event_timestamp": ["2025-12-01T14:40:00Z"], "signup_epoch_s": [1]}) is None
    assert temporal_rows({"event_timestamp": [noon], "signup_epoch_s": ["1"]}) is None
    assert temporal_rows({"event_timestamp": [noon], "signup_epoch_s": [2**60]}) is None
    assert temporal_rows({"event_timestamp": [noon.replace(tzinfo=None)], "signup_epoch_s": [1]}) is None
    assert temporal_rows({"signup_epoch_s": [1]}) is None
