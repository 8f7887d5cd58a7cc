"""The frames the fast online reader gives on-demand views equal the Arrow round trips Feast makes.

Feast's pandas-mode `transform_arrow` calls the view's function on `table.to_pandas()` and reads
its output through `pa.Table.from_pandas(...)[name].to_numpy()`; `stores.online.pandas_frame`
and `arrow_values` build the same without the tables. Equal means same columns, dtypes and
values (NaN where Arrow gives NaN, None where it gives None).
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from healthmate_features.stores.online import arrow_values, pandas_frame

AT = datetime(2025, 3, 20, 9, 30, 17, tzinfo=timezone.utc)

COLUMNS = {
    "ints": [1, 2, -(2**62)],
    "ints with nulls": [1, None, 3],
    "floats": [1.5, float("nan"), -0.0],
    "floats with nulls": [None, 2.5, None],
    "ints and floats": [1, 2.5, None],
    "nulls": [None, None, None],
    "strings": ["a", None, "é"],
    "times": [AT, datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone.utc), AT],
    "times with nulls": [AT, None, AT],
    "bools": [True, False, True],
    "bools with nulls": [True, None, False],
    "lists": [[1.0, 2.0], None, []],
}


def arrow_frame(columns: dict[str, list]) -> pd.DataFrame:
    return pa.Table.from_pydict(columns).to_pandas()


@pytest.mark.parametrize("name", sorted(COLUMNS))
def test_each_kind_of_column_as_arrow_gives_it(name):
    columns = {"user_id": [1, 2, 3], name: COLUMNS[name]}
    ours, feasts = pandas_frame(columns), arrow_frame(columns)
    assert list(ours.columns) == list(feasts.columns)
    assert ours.dtypes.to_dict() == feasts.dtypes.to_dict()
    assert isinstance(ours.index, pd.RangeIndex) and ours.index.equals(feasts.index)
    for column in ours.columns:
        for a, b in zip(ours[column], feasts[column], strict=True):
            if isinstance(b, np.ndarray):
                assert isinstance(a, np.ndarray) and a.dtype == b.dtype and a.tolist() == b.tolist()
            else:
                assert (a is b) or (pd.isna(a) and pd.isna(b) and type(a) is type(b)) or (a == b and type(a) is type(b))


def test_a_whole_request_frame_and_a_single_user():
    columns = {"user_id": [7], "event_timestamp": [AT], "signup_epoch_s": [None], "profile__signup_epoch_s": [None]}
    pd.testing.assert_frame_equal(pandas_frame(columns), arrow_frame(columns), check_exact=True)
    columns = {name: values[:0] for name, values in columns.items()}  # no rows
    pd.testing.assert_frame_equal(pandas_frame(columns), arrow_frame(columns), check_exact=True)


def test_an_int_beyond_int64_fails_as_in_arrow():
    columns = {"x": [2**63, 1]}
    with pytest.raises(OverflowError):
        arrow_frame(columns)
    with pytest.raises(OverflowError):
        pandas_frame(columns)


@pytest.mark.parametrize(
    "column",
    [
        pd.Series([1.5, np.nan, -0.0]),
        pd.Series([1, 2, 3]),
        pd.Series([True, False]),
        pd.Series(["a", None], dtype=object),
        pd.Series([1.5, None], dtype="Float64"),  # a nullable extension dtype: Arrow's reading
        pd.Series([1, 2], dtype="int32"),
    ],
    ids=str,
)
def test_output_columns_as_feast_reads_them(column):
    feasts = pa.Table.from_pandas(pd.DataFrame({"x": column}))["x"].to_numpy()
    ours = arrow_values(column)
    assert ours.dtype == feasts.dtype
    assert [None if pd.isna(v) else v for v in ours.tolist()] == [None if pd.isna(v) else v for v in feasts.tolist()]
    assert [type(v) for v in ours.tolist()] == [type(v) for v in feasts.tolist()]
