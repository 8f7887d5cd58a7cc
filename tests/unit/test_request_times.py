"""The temporal view reads a request time the same way in every form it can arrive in."""

from __future__ import annotations

import pandas as pd
import pytest
from feast.errors import FeastError

from healthmate_features.errors import RequestTimeError
from healthmate_features.features.definitions import request_times

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
