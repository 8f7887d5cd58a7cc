"""Feature views: one per feature table. Schemas, TTLs, descriptions, units and tags come from
healthmate_features.features.catalog (the one source of feature documentation)."""

from feature_repo.entities import user
from feature_repo.sources import (
    engagement_daily_source,
    health_daily_source,
    health_monthly_source,
    health_readings_push,
    health_rolling_source,
    health_weekly_source,
    profile_source,
)
from healthmate_features.features.definitions import OWNER, feature_view
from healthmate_features.features.pushed import today_view

health_daily_fv = feature_view("health_daily", health_daily_source, user)
health_rolling_fv = feature_view("health_rolling", health_rolling_source, user)
health_weekly_fv = feature_view("health_weekly", health_weekly_source, user)
health_monthly_fv = feature_view("health_monthly", health_monthly_source, user)
engagement_daily_fv = feature_view("engagement_daily", engagement_daily_source, user)
profile_fv = feature_view("profile", profile_source, user)
health_today_fv = today_view(health_readings_push, user, owner=OWNER)  # stream-style: fed by pushes
