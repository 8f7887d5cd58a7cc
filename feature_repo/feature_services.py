"""Feature services: the contracts between models and their features. Versioned by name."""

from feast import FeatureService
from feast.feature_logging import LoggingConfig
from feast.infra.offline_stores.file_source import FileLoggingDestination

from feature_repo.feature_views import engagement_daily_fv, health_rolling_fv, health_weekly_fv, profile_fv
from feature_repo.temporal import temporal
from healthmate_features.features.definitions import OWNER

health_risk_v1 = FeatureService(
    name="health_risk_v1",
    features=[
        health_rolling_fv,
        health_weekly_fv[
            ["resting_heart_rate_mean_week", "systolic_bp_mean_week", "blood_glucose_mean_week", "steps_mean_week"]
        ],
        profile_fv[
            ["age_years", "sex", "bmi", "has_hypertension", "has_type2_diabetes", "has_heart_disease", "has_obesity"]
        ],
        temporal[["days_since_signup", "month_sin", "month_cos"]],
    ],
    description="Adverse health event within 30 days: rolling vitals, weekly means, profile.",
    tags={"owner": OWNER, "model": "health_risk", "label": "adverse_event_30d"},
    # What our API's features/extract serves for it is logged (Feast's log schema) under data/feature_logs/
    logging_config=LoggingConfig(
        destination=FileLoggingDestination(path="data/feature_logs/health_risk_v1"), sample_rate=1.0
    ),
)

engagement_churn_v1 = FeatureService(
    name="engagement_churn_v1",
    features=[
        engagement_daily_fv[
            [
                "active_days_7d",
                "active_days_30d",
                "sessions_7d",
                "session_minutes_7d",
                "meals_logged_7d",
                "meals_logged_30d",
                "workouts_logged_7d",
                "workouts_logged_30d",
                "medications_logged_7d",
                "medications_logged_30d",
                "notification_open_rate_30d",
                "days_since_last_activity",
                "engagement_score",
            ]
        ],
        health_rolling_fv[["steps_mean_7d", "steps_slope_30d", "sleep_minutes_mean_7d"]],
        profile_fv[["age_years", "sex"]],
        temporal,
    ],
    description="Disengagement within 14 days: app activity, logging habits, notifications.",
    tags={"owner": OWNER, "model": "engagement_churn", "label": "disengaged_14d"},
    logging_config=LoggingConfig(
        destination=FileLoggingDestination(path="data/feature_logs/engagement_churn_v1"), sample_rate=1.0
    ),
)
