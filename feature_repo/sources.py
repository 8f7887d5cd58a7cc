"""Batch sources: the feature tables written by `healthmate-features build-features`."""
from feast import FileSource

from healthmate_features.repo import description, source_path

health_daily_source = FileSource(
    name="health_daily_source",
    path=source_path("health_daily"),
    timestamp_field="event_timestamp",
    description=description("health_daily"),
)
health_rolling_source = FileSource(
    name="health_rolling_source",
    path=source_path("health_rolling"),
    timestamp_field="event_timestamp",
    description=description("health_rolling"),
)
health_weekly_source = FileSource(
    name="health_weekly_source",
    path=source_path("health_weekly"),
    timestamp_field="event_timestamp",
    description=description("health_weekly"),
)
health_monthly_source = FileSource(
    name="health_monthly_source",
    path=source_path("health_monthly"),
    timestamp_field="event_timestamp",
    description=description("health_monthly"),
)
engagement_daily_source = FileSource(
    name="engagement_daily_source",
    path=source_path("engagement_daily"),
    timestamp_field="event_timestamp",
    description=description("engagement_daily"),
)
profile_source = FileSource(
    name="profile_source",
    path=source_path("profile"),
    timestamp_field="event_timestamp",
    description=description("profile"),
)
