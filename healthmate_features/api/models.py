"""Request and response models of the HTTP API (pydantic), which its OpenAPI schema documents.

Defined at module level so FastAPI can resolve their annotations at run time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, create_model

from healthmate_features.api.preprocess import MAX_ROWS
from healthmate_features.datasets.ref import REF_PATTERN
from healthmate_features.features import pushed
from healthmate_features.features.feature_sets import MAX_DESCRIPTION, NAME_PATTERN
from healthmate_features.jobs.store import JOB_ID_PATTERN, JobStatus
from healthmate_features.monitoring.drift import FeatureDrift
from healthmate_features.tracking import Comparison, Environment, MetricRecord, Run

DATASET_REF_PATTERN = REF_PATTERN
Split = Literal["X_train", "X_test", "y_train", "y_test"]

__all__ = [
    "DATASET_REF_PATTERN",
    "JOB_ID_PATTERN",
    "Split",
    "Environment",
    "ErrorBody",
    "Health",
    "FeatureSetCreate",
    "FeatureSetCreated",
    "OnlineFeatures",
    "JobInfo",
    "DatasetVersionRow",
    "DatasetVersions",
    "DatasetManifest",
    "PreprocessRequest",
    "PreprocessResponse",
    "Performance",
    "DashboardSummary",
    "DriftResult",
    "FreshnessResult",
    "ErasureRequest",
    "ErasureResponse",
    "ErasureScan",
    "Reading",
    "EventsPush",
    "EventsPushed",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    """Every error response: a short kind and a message that says what to fix."""

    error: str = Field(
        description="Kind of error: unauthorized, forbidden, not_found, conflict, "
        "invalid_request, bad_request, method_not_allowed, service_unavailable, internal_error."
    )
    detail: str = Field(description="What went wrong and how to fix it.")


class Health(BaseModel):
    """Liveness: the process answers."""

    status: Literal["ok"] = "ok"
    version: str = Field(description="healthmate-features package version.")
    profile: str = Field(description="Deployment profile: embedded or production.")


class FeatureSetCreate(_Strict):
    """A new feature set: a Feast feature service over features already in the registry."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "sleep_risk_v1",
                    "features": ["health_rolling:sleep_minutes_mean_7d", "profile:age_years"],
                    "description": "Sleep-related risk.",
                }
            ]
        },
    )
    name: str = Field(pattern=NAME_PATTERN, description="Versioned name: lowercase, ending in _v<number>.")
    features: list[str] = Field(
        min_length=1,
        max_length=1000,
        description="Feature references 'view:feature', or a view name for all its features.",
    )
    description: str = Field("", max_length=MAX_DESCRIPTION)
    overwrite: bool = Field(False, description="Replace a feature set of this name created over the API before.")


class FeatureSetCreated(BaseModel):
    """The applied feature set."""

    name: str
    features: list[str] = Field(description="Every 'view:feature' the feature service serves, in order.")
    description: str
    replaced: bool = Field(description="Whether an earlier definition of this name was replaced.")


class OnlineFeatures(BaseModel):
    """One known user's latest feature values from the online store (nulls where a value is missing)."""

    user_id: int
    feature_service: str | None = Field(description="The feature service read, or null for every feature.")
    at: datetime = Field(description="Request time given to the on-demand temporal features (UTC).")
    features: dict[str, Any] = Field(description="Feature name -> value; `view__feature` names without a service.")


class JobInfo(BaseModel):
    """A background job: queued, running, retrying, succeeded (with the dataset version), failed or cancelled."""

    job_id: str
    kind: str
    status: JobStatus
    target: str | None = None
    submitted_by: str | None = Field(None, description="The key id that submitted it, or schedule:<entry>, cli.")
    attempts: int = Field(0, description="Executions started so far (a retry or a worker crash adds one).")
    max_attempts: int = 1
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    dataset: str | None = Field(None, description="name@version of the training set (succeeded).")
    created: bool | None = Field(None, description="False when nothing changed and the latest version was kept.")
    summary: dict[str, Any] | None = Field(None, description="Rows, features, label balance (succeeded).")
    result: dict[str, Any] | None = Field(None, description="The job's whole result (succeeded; some failures).")
    error: str | None = Field(None, description="What went wrong (failed), or the last transient error (retrying).")
    status_url: str


class DatasetVersionRow(BaseModel):
    """One dataset version (no data)."""

    name: str
    version: str
    created_at: str | None = None
    parent_version: str | None = None
    bump: str | None = None
    rows: dict[str, int] | None = None
    feature_service: str | None = None
    data_hash: str | None = None


class DatasetVersions(BaseModel):
    """Dataset versions, sorted by name then version."""

    versions: list[DatasetVersionRow]


class DatasetManifest(BaseModel):
    """A version's manifest: everything needed to rebuild it (README 'Dataset versions')."""

    dataset: str
    manifest: dict[str, Any]


class PreprocessRequest(_Strict):
    """Rows of the joined frame to transform with a dataset version's fitted pipeline."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset": "health_risk@1.0.0",
                    "rows": [
                        {
                            "user_id": 42,
                            "event_timestamp": "2025-09-01T00:00:00Z",
                            "steps_mean_7d": 6500.0,
                            "...": "...",
                        }
                    ],
                }
            ]
        },
    )
    dataset: str = Field(pattern=DATASET_REF_PATTERN, description="name@version, e.g. health_risk@1.0.0.")
    rows: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_ROWS,
        description="Joined columns incl. user_id and event_timestamp, without the label.",
    )


class PreprocessResponse(BaseModel):
    """The transformed rows, in the order sent."""

    dataset: str
    feature_names: list[str]
    rows: list[dict[str, Any]]


class Performance(BaseModel):
    """A model's metric history, or a comparison of versions when several were asked for."""

    model: str
    history: list[MetricRecord] | None = None  # the library's dataclasses are the response schema
    comparison: Comparison | None = None


class FeatureViewStatus(BaseModel):
    """A feature view and its materialization state."""

    name: str
    kind: Literal["batch", "on_demand"]
    features: int
    ttl_seconds: float | None = None
    materialization_intervals: int
    last_materialized_end: datetime | None = None  # None too when the online store lost the view's data
    online_data: Literal["present", "lost"] | None = None  # checked on Redis only; None: not materialized


class FeatureServiceInfo(BaseModel):
    """A feature service (a model's feature contract)."""

    name: str
    features: int
    description: str


class DatasetInfo(BaseModel):
    """A dataset's versions."""

    name: str
    versions: list[str]
    latest: str
    latest_created_at: str | None = None


class DashboardCounts(BaseModel):
    """How many of each thing there are."""

    feature_views: int
    on_demand_feature_views: int
    feature_services: int
    datasets: int
    dataset_versions: int
    models: int


class DashboardSummary(BaseModel):
    """Counts and freshness across the feature store, datasets and models."""

    generated_at: datetime
    counts: DashboardCounts
    oldest_materialization_end: datetime | None = None  # None when nothing was materialized or data was lost
    online_data_lost: list[str] = []  # feature views whose online data Redis lost: re-run materialize
    feature_views: list[FeatureViewStatus]
    feature_services: list[FeatureServiceInfo]
    datasets: list[DatasetInfo]
    latest_model_results: list[Run]  # tracking's own dataclass: a model's latest run per environment


class DriftResult(BaseModel):
    """Drift of recent feature values against a dataset version's training split (`monitoring.drift.DriftReport`)."""

    dataset: str
    source: Literal["offline", "served"]
    reference: str  # "manifest sketches" | "stored joined_train split"
    window: dict[str, datetime | None]
    alpha: float
    psi_floor: float
    counts: dict[str, int]  # features per status
    features: list[FeatureDrift]  # the library's own dataclass, most severe first
    not_compared: list[dict[str, str]]


class ViewFreshness(BaseModel):
    """One batch view's freshness (`monitoring.freshness.freshness`)."""

    name: str
    ttl_seconds: float | None = None
    objective_seconds: float
    last_materialized_end: datetime | None = None
    materialized_age_seconds: float | None = None
    newest_row: datetime | None = None
    row_age_seconds: float | None = None
    late: bool
    reasons: list[str]


class FreshnessResult(BaseModel):
    """Every batch view's freshness; `late` lists the late ones."""

    late: list[str]
    feature_views: list[ViewFreshness]


class ErasureRequest(_Strict):
    """Erase one user from every store (README 'Erasure, retention and exports')."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"user_id": 5, "reason": "request 42"}]})

    user_id: int = Field(ge=0, le=2**63 - 1, description="The HealthMate user id.")
    reason: str | None = Field(
        default=None, max_length=500, description="Why; kept in the certificate (one line, no health details)."
    )


class ErasureResponse(BaseModel):
    """What the erasure did: its id, this run's removals per store and place, and the certificate."""

    erasure_id: str
    status: Literal["erased", "already erased"]
    resumed: bool
    removed_total: int
    removed: dict[str, dict[str, int]]
    certificate: str = Field(description="The certificate's JSON file, relative to the repository root.")
    report: dict[str, Any]


class ErasureScan(BaseModel):
    """What `erase --verify` finds: rows or keys of the user left per store and place (none when clean)."""

    clean: bool
    remaining_total: int
    remaining: dict[str, dict[str, int]]
    kept: dict[str, int]
    source_files: dict[str, int]
    erasure: dict[str, Any] | None


class _ReadingBase(_Strict):
    user_id: int = Field(ge=1, le=2**63 - 1, description="The HealthMate user id (a user key: its own only).")
    event_timestamp: AwareDatetime = Field(
        description="When it was measured, with a time zone; at most a day old and 5 minutes ahead."
    )


# One reading's values come from features.pushed.READING_FIELDS (names, types, units, ingest's ranges).
_READING_VALUES: dict[str, Any] = {
    f.name: (f.python, Field(ge=f.low, le=f.high, description=f"{f.description} [{f.unit}]"))
    for f in pushed.READING_FIELDS
}
Reading: Any = create_model(
    "Reading",
    __base__=_ReadingBase,
    __doc__="One pushed reading: a user, a time, and every value of features.pushed.READING_FIELDS.",
    **_READING_VALUES,
)


class EventsPush(_Strict):
    """Readings to push to the online and offline stores (Feast push source health_readings_push)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "readings": [
                        {
                            "user_id": 7,
                            "event_timestamp": "2026-12-07T08:30:00Z",
                            "heart_rate_bpm": 72.0,
                            "steps_today": 3150,
                        }
                    ]
                }
            ]
        },
    )
    readings: list[Reading] = Field(min_length=1, max_length=pushed.MAX_READINGS)


class EventsPushed(BaseModel):
    """What a push did."""

    pushed: int = Field(description="Readings written (online: the latest per user; offline: every one).")
    push_source: str = Field(description="The Feast push source they went through.")
    feature_view: str = Field(description="The view that serves them online (health_today).")
