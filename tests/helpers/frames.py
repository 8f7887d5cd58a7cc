"""A frame with one column of every dtype (the `rich_frame` fixture).

A plain function, so that another interpreter (which has no fixtures) can build the very same
frame and compare hashes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def rich_frame() -> pd.DataFrame:
    """One column of every dtype the builder can produce, with nulls where the dtype allows."""
    return pd.DataFrame(
        {
            "f": [1.5, np.nan, -0.0],
            "i": np.array([1, 2, 3], dtype="int32"),
            "nullable_int": pd.array([1, None, 3], dtype="Int64"),
            "s": ["ab", None, "é"],
            "string": pd.array(["x", None, "y"], dtype="string"),
            "cat": pd.Categorical(["x", "y", None], categories=["y", "x"], ordered=True),
            "b": [True, False, True],
            "nullable_bool": pd.array([True, None, False], dtype="boolean"),
            "ts": pd.to_datetime(["2024-01-01 10:00", None, "2024-03-01 00:00"]).tz_localize("UTC"),
            "td": pd.to_timedelta([1, 2, None], unit="s"),
        },
        index=pd.Index([10, 20, 30], name="row"),
    )
