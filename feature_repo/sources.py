"""Batch sources: the feature tables written by `healthmate-features build-features`.

The profile picks the kind (healthmate_features.features.definitions.source): Parquet files under data/features
when embedded, tables `<HM_PG_SCHEMA>.<table>` in Postgres in production. Names are the same.
"""

from healthmate_features.features.definitions import source
from healthmate_features.features.pushed import push_source

health_daily_source = source("health_daily")
health_rolling_source = source("health_rolling")
health_weekly_source = source("health_weekly")
health_monthly_source = source("health_monthly")
engagement_daily_source = source("engagement_daily")
profile_source = source("profile")

# Pushed by services one reading at a time (Feast's store.push, our API's POST .../events); its
# batch source is the `health_pushed` table, which the first push creates.
health_readings_push = push_source()
