"""The temporal view as it was written with pandas' `.dt` accessors before issue 11: the reference
that `features.definitions.temporal_frame` must equal bit for bit (the `dt_temporal_reference` fixture)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from healthmate_features.features.definitions import request_times


def dt_reference(inputs: pd.DataFrame) -> pd.DataFrame:
    """The temporal features of `inputs` (event_timestamp, signup_epoch_s), the `.dt` way."""
    ts = request_times(inputs["event_timestamp"])
    hour = ts.dt.hour + ts.dt.minute / 60.0 + ts.dt.second / 3600.0
    dow = ts.dt.dayofweek
    month = ts.dt.month - 1
    out = pd.DataFrame(index=inputs.index)
    out["hour_sin"] = np.sin(2 * np.pi * hour / 24.0).astype("float64")
    out["hour_cos"] = np.cos(2 * np.pi * hour / 24.0).astype("float64")
    out["dow_sin"] = np.sin(2 * np.pi * dow / 7.0).astype("float64")
    out["dow_cos"] = np.cos(2 * np.pi * dow / 7.0).astype("float64")
    out["month_sin"] = np.sin(2 * np.pi * month / 12.0).astype("float64")
    out["month_cos"] = np.cos(2 * np.pi * month / 12.0).astype("float64")
    out["is_weekend"] = (dow >= 5).astype("int64")
    out["day_of_year"] = ts.dt.dayofyear.astype("int64")
    signup = pd.to_numeric(inputs["signup_epoch_s"], errors="coerce").astype("float64")
    seconds = (ts - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds()
    out["days_since_signup"] = (seconds - signup) / 86400.0
    return out


def as_feast_pandas_mode(udf, table: pa.Table) -> pa.Table:
    """What Feast's pandas-mode transformation does with a view's UDF (online and offline)."""
    return pa.Table.from_pandas(udf(table.to_pandas()))
