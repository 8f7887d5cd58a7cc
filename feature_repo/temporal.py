"""On-demand temporal features computed from the request (prediction) timestamp.

In training, the request timestamp is the entity frame's `event_timestamp` column; online,
pass `event_timestamp` with the entity row (`healthmate-features online` does it for you).
Feature descriptions: healthmate_features.features.catalog.TEMPORAL_FEATURES.
"""

import pandas as pd
from feast import Field, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import UnixTimestamp

from feature_repo.feature_views import profile_fv
from healthmate_features.features.definitions import OWNER, temporal_description, temporal_schema

prediction_request_source = RequestSource(
    name="prediction_request",
    schema=[Field(name="event_timestamp", dtype=UnixTimestamp, description="the prediction time (UTC)")],
    description="Request-time data: the moment a prediction is made.",
)


@on_demand_feature_view(
    name="temporal",
    sources=[prediction_request_source, profile_fv[["signup_epoch_s"]]],
    schema=temporal_schema(),
    mode="pandas",
    description=temporal_description(),
    tags={"owner": OWNER, "domain": "temporal", "pii": "false"},
)
def temporal(inputs: pd.DataFrame) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    from healthmate_features.features.definitions import request_times

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
