"""On-demand temporal features computed from the request (prediction) timestamp.

In training, the request timestamp is the entity frame's `event_timestamp` column; online,
pass `event_timestamp` with the entity row (`healthmate-features online` does it for you).
Feature descriptions: healthmate_features.features.catalog.TEMPORAL_FEATURES; the computation:
healthmate_features.features.definitions.temporal_frame. Feast's `python` mode would be faster
still, but in Feast 0.67 it loses the view's features online with full_feature_names=True and
converts the whole joined frame to Python lists offline, so this view stays in `pandas` mode.
"""

import pandas as pd
from feast import Field, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import UnixTimestamp

from feature_repo.feature_views import profile_fv
from healthmate_features.features.definitions import OWNER, TEMPORAL_ROWS, temporal_description, temporal_schema

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
    # online_rows: online lookups compute its rows with features.definitions.temporal_rows (same values, no pandas)
    tags={"owner": OWNER, "domain": "temporal", "pii": "false", "online_rows": TEMPORAL_ROWS},
)
def temporal(inputs: pd.DataFrame) -> pd.DataFrame:
    from healthmate_features.features.definitions import temporal_frame

    return temporal_frame(inputs)
