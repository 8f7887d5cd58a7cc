"""Feature views: one per feature table. Schemas, descriptions, units and tags come from
healthmate_features.features (the one source of feature documentation)."""
from feast import FeatureView

from healthmate_features.repo import OWNER, description, fields, ttl

from feature_repo.entities import user
from feature_repo.sources import (
    engagement_daily_source,
    health_daily_source,
    health_monthly_source,
    health_rolling_source,
    health_weekly_source,
    profile_source,
)

health_daily_fv = FeatureView(
    name="health_daily",
    entities=[user],
    ttl=ttl("health_daily"),
    schema=fields("health_daily"),
    source=health_daily_source,
    description=description("health_daily"),
    tags={"owner": OWNER, "domain": "health", "pii": "false"},
)
health_rolling_fv = FeatureView(
    name="health_rolling",
    entities=[user],
    ttl=ttl("health_rolling"),
    schema=fields("health_rolling"),
    source=health_rolling_source,
    description=description("health_rolling"),
    tags={"owner": OWNER, "domain": "health", "pii": "false"},
)
health_weekly_fv = FeatureView(
    name="health_weekly",
    entities=[user],
    ttl=ttl("health_weekly"),
    schema=fields("health_weekly"),
    source=health_weekly_source,
    description=description("health_weekly"),
    tags={"owner": OWNER, "domain": "health", "pii": "false"},
)
health_monthly_fv = FeatureView(
    name="health_monthly",
    entities=[user],
    ttl=ttl("health_monthly"),
    schema=fields("health_monthly"),
    source=health_monthly_source,
    description=description("health_monthly"),
    tags={"owner": OWNER, "domain": "health", "pii": "false"},
)
engagement_daily_fv = FeatureView(
    name="engagement_daily",
    entities=[user],
    ttl=ttl("engagement_daily"),
    schema=fields("engagement_daily"),
    source=engagement_daily_source,
    description=description("engagement_daily"),
    tags={"owner": OWNER, "domain": "engagement", "pii": "false"},
)
profile_fv = FeatureView(
    name="profile",
    entities=[user],
    ttl=ttl("profile"),
    schema=fields("profile"),
    source=profile_source,
    description=description("profile"),
    tags={"owner": OWNER, "domain": "profile", "pii": "true"},
)
