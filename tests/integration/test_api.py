"""The HTTP API through its ASGI transport, against a real temporary feature repository.

One module fixture copies the generated repository (conftest `generated_repo`: a population
ingested, built and applied with the real `feast apply`), materializes it into SQLite and serves
the app with Starlette's TestClient (an httpx client over the ASGI transport).
"""

from __future__ import annotations

import io
import json
import math
import re
import time
import uuid
from dataclasses import dataclass
from urllib.parse import quote

import pandas as pd
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from healthmate_features.access.audit import AuditLog
from healthmate_features.access.keys import ApiKeys
from healthmate_features.api.app import PREFIX, create_app
from healthmate_features.backends import open_sql_store
from healthmate_features.config import Settings
from healthmate_features.errors import HealthmateError
from healthmate_features.stores import feature_store as store
from healthmate_features.tracking import Tracker
from healthmate_features.training.builder import build_training_set, registry
from tests.helpers.files import read_frame

OWN, OTHER = 1, 2


@dataclass
class Env:
    settings: Settings
    client: TestClient
    keys: dict[str, dict[str, str]]  # role name -> headers

    def get(self, path: str, role: str = "admin", **kwargs):
        return self.client.get(_url(path), headers=self.keys[role], **kwargs)

    def post(self, path: str, body=None, role: str = "admin", **kwargs):
        return self.client.post(_url(path), headers=self.keys[role], json=body, **kwargs)

    def audit(self, limit: int = 10_000):
        return AuditLog(self.client.app.state.ctx.sql).query(limit=limit)


def _url(path: str) -> str:
    return (
        path if path.startswith("/health") or path.startswith("/openapi") or path.startswith("/docs") else PREFIX + path
    )


@pytest.fixture(scope="module")
def env(generated_repo, clone_repo, tmp_path_factory, launch_worker):
    """A copy of the generated repository, materialized; keys and runs; a worker for its jobs."""
    settings = clone_repo(generated_repo, tmp_path_factory.mktemp("api") / "repo")
    store.materialize(settings)
    with open_sql_store(settings) as sql:
        keys = ApiKeys(sql)
        secrets = {
            "admin": keys.create_key("admin", name="test-admin").secret,
            "user": keys.create_key("user", user_id=OWN, name="test-user").secret,
        }
        revoked = keys.create_key("user", user_id=OWN)
        keys.revoke(revoked.key_id)
        tracker = Tracker(sql)
        for version, dataset, auc in (
            ("1.0", "health_risk@1.0.0", 0.71),
            ("1.1", "health_risk@1.0.0", 0.74),
            ("2.0", "health_risk@2.0.0", 0.79),
        ):
            tracker.log_metrics(
                "risk", version=version, dataset=dataset, environment="staging", metrics={"auc": auc, "brier": 0.2}
            )
    headers = {role: {"Authorization": f"Bearer {secret}"} for role, secret in secrets.items()}
    headers["none"] = {}
    headers["malformed"] = {"Authorization": "Bearer not-a-key"}
    headers["unknown"] = {"Authorization": f"Bearer hmk_{'0' * 16}.{'A' * 43}"}
    headers["revoked"] = {"Authorization": f"Bearer {revoked.secret}"}
    app = create_app(settings)
    worker = launch_worker(settings, settings.repo_path.parent / "worker.log")
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield Env(settings, client, headers)
    finally:
        worker.stop(timeout_s=30)


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and isinstance(body["detail"], str) and body["detail"], body
    return body


def _wait(env: Env, job_id: str, timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        body = env.get(f"/datasets/jobs/{job_id}").json()
        if body["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return body
        time.sleep(0.5)


# -- endpoints -------------------------------------------------------------------------------


def test_health_and_docs_need_no_key(env):
    response = env.get("/health", role="none")
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert env.get("/openapi.json", role="none").status_code == 200
    assert env.get("/docs", role="none").status_code == 200


def test_openapi_documents_every_endpoint_with_summaries_and_bearer_auth(env):
    schema = env.client.app.openapi()
    operations = {(m.upper(), p) for p, item in schema["paths"].items() for m in item}
    assert operations == {
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("POST", f"{PREFIX}/feature-sets/create"),
        ("GET", f"{PREFIX}/features/extract"),
        ("POST", f"{PREFIX}/datasets/prepare"),
        ("GET", f"{PREFIX}/datasets/jobs/{{job_id}}"),
        ("GET", f"{PREFIX}/datasets/versions"),
        ("GET", f"{PREFIX}/datasets/load-version"),
        ("POST", f"{PREFIX}/data/preprocess"),
        ("GET", f"{PREFIX}/models/performance"),
        ("GET", f"{PREFIX}/dashboard/summary"),
        ("POST", f"{PREFIX}/events"),
        ("GET", "/dashboard"),
        ("GET", f"{PREFIX}/monitoring/drift"),
        ("GET", f"{PREFIX}/monitoring/freshness"),
        ("POST", f"{PREFIX}/erasures"),
        ("GET", f"{PREFIX}/erasures/verify"),
    }
    for path, item in schema["paths"].items():
        for op in item.values():
            assert op["summary"] and op["description"], (path, op)
            assert ("security" in op) == (path != "/health"), path
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_a_user_reads_their_own_online_features(env):
    response = env.get("/features/extract", role="user", params={"user_id": OWN})
    body = response.json()
    assert response.status_code == 200, body
    assert body["user_id"] == OWN and body["feature_service"] is None
    assert "health_rolling__steps_mean_7d" in body["features"] and "profile__age_years" in body["features"]
    assert body["features"]["profile__age_years"] is not None  # materialized values, not nulls


def test_extract_with_a_feature_service_returns_its_features_only(env):
    response = env.get("/features/extract", params={"user_id": OTHER, "feature_service": "engagement_churn_v1"})
    features = response.json()["features"]
    assert response.status_code == 200
    assert "engagement_score" in features and "days_since_signup" in features
    assert "resting_heart_rate_mean_7d" not in features
    body = _error(env.get("/features/extract", params={"user_id": OWN, "feature_service": "nope_v1"}), 404)
    assert "feature service 'nope_v1' not found" in body["detail"]


def test_an_unknown_user_is_a_404_not_a_user_with_null_features(env):
    body = _error(env.get("/features/extract", params={"user_id": 999_999}), 404)
    assert body["error"] == "not_found" and body["detail"].startswith("user 999999 is not in the online store")
    body = _error(env.get("/features/extract", params={"user_id": 999_999, "feature_service": "health_risk_v1"}), 404)
    assert "user 999999" in body["detail"]
    assert [(e.target, e.status) for e in env.audit(limit=1)] == [("user:999999", 404)]
    assert env.get("/features/extract", params={"user_id": OTHER}).status_code == 200


def test_model_performance_history_comparison_and_refusal_to_mix_datasets(env):
    history = env.get("/models/performance", role="user", params={"model": "risk", "metric": "auc"}).json()
    assert [r["model_version"] for r in history["history"]] == ["1.0", "1.1", "2.0"]
    assert history["comparison"] is None
    response = env.get("/models/performance", params={"model": "risk", "versions": "1.0,1.1"})
    comparison = response.json()["comparison"]
    assert response.status_code == 200 and comparison["baseline"] == "1.0"
    auc = next(m for m in comparison["metrics"] if m["metric"] == "auc")
    assert auc["best"] == ["1.1"] and math.isclose(auc["deltas"]["1.1"], 0.03)
    body = _error(env.get("/models/performance", params={"model": "risk", "versions": "1.0,2.0"}), 409)
    assert "different dataset versions" in body["detail"]
    mixed = env.get(
        "/models/performance",
        params={"model": "risk", "versions": "1.0,2.0", "metric": "brier", "allow_mixed_datasets": "true"},
    ).json()["comparison"]
    assert mixed["mixed_datasets"] and [m["metric"] for m in mixed["metrics"]] == ["brier"]
    _error(env.get("/models/performance", params={"model": "nope"}), 404)
    _error(env.get("/models/performance", params={"model": "risk", "versions": "1.0,9.9"}), 404)
    _error(env.get("/models/performance", params={"model": "risk", "environment": "moon"}), 422)


@pytest.mark.slow
def test_feature_set_is_validated_applied_and_survives_the_next_feast_apply(env, feast_apply):
    body = {
        "name": "sleep_risk_v1",
        "description": "sleep and age",
        "features": ["health_rolling:sleep_minutes_mean_7d", "profile:age_years", "temporal"],
    }
    response = env.post("/feature-sets/create", body)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["replaced"] is False
    assert created["features"][:2] == ["health_rolling:sleep_minutes_mean_7d", "profile:age_years"]
    assert "temporal:days_since_signup" in created["features"]
    features = env.get("/features/extract", params={"user_id": OWN, "feature_service": "sleep_risk_v1"}).json()
    assert {"sleep_minutes_mean_7d", "age_years", "days_since_signup"} <= set(features["features"])

    assert "already exists" in _error(env.post("/feature-sets/create", body), 409)["detail"]
    code_defined = {"name": "health_risk_v1", "features": ["profile"], "overwrite": True}
    assert "defined in the repository's code" in _error(env.post("/feature-sets/create", code_defined), 409)["detail"]
    replaced = env.post("/feature-sets/create", {**body, "features": ["profile:age_years"], "overwrite": True})
    assert replaced.status_code == 201 and replaced.json()["replaced"] is True

    saved = json.loads((env.settings.repo_path / "feature_repo" / "feature_sets.json").read_text())
    assert saved["feature_sets"] == [
        {"name": "sleep_risk_v1", "features": ["profile:age_years"], "description": "sleep and age"}
    ]
    feast_apply(env.settings.repo_path)  # from the repository, as a developer would
    service = store.open_feature_store(env.settings).get_feature_service("sleep_risk_v1")
    assert [(p.name, [f.name for f in p.features]) for p in service.feature_view_projections] == [
        ("profile", ["age_years"])
    ]


@pytest.mark.parametrize(
    "features, message",
    [
        (["no_such_view:x"], "unknown feature view 'no_such_view'"),
        (["profile:age_years", "profile:no_such_feature"], "feature view 'profile' has no feature 'no_such_feature'"),
        (["not a ref"], "is not 'view:feature'"),
        (["profile:"], "is not 'view:feature'"),
    ],
)
def test_feature_set_references_are_checked_against_the_registry(env, features, message):
    body = _error(env.post("/feature-sets/create", {"name": "check_refs_v1", "features": features}), 422)
    assert message in body["detail"]
    assert not env.settings.repo_path.joinpath("feature_repo", "feature_sets.json").read_text().count("check_refs_v1")


@pytest.fixture(scope="module")
def prepared(env, training_config):
    """The first job's 202 response and its final status: health_risk built as api_health_risk."""
    response = env.post("/datasets/prepare", training_config("health_risk", name="api_health_risk"))
    assert response.status_code == 202, response.text
    return response, _wait(env, response.json()["job_id"])


def test_dataset_job_builds_a_version_that_loads_downloads_and_preprocesses(env, prepared):
    response, done = prepared
    job = response.json()
    assert job["status"] in ("queued", "running") and response.headers["location"] == job["status_url"]
    assert done["status"] == "succeeded", done
    assert done["dataset"] == "api_health_risk@1.0.0" and done["summary"]["train_rows"] > 0

    versions = env.get("/datasets/versions", role="user", params={"name": "api_health_risk"}).json()["versions"]
    assert [(v["name"], v["version"]) for v in versions] == [("api_health_risk", "1.0.0")]
    manifest = env.get("/datasets/load-version", params={"name": "api_health_risk", "version": "1.0.0"}).json()
    assert manifest["dataset"] == "api_health_risk@1.0.0"
    assert manifest["manifest"]["feature_service"] == "health_risk_v1"
    latest = env.get("/datasets/load-version", params={"name": "api_health_risk"}).json()
    assert latest["dataset"] == "api_health_risk@1.0.0"

    dataset = registry(env.settings).load("api_health_risk", "1.0.0")
    download = env.get(
        "/datasets/load-version", params={"name": "api_health_risk", "version": "1.0.0", "download": "X_train"}
    )
    assert download.status_code == 200 and download.headers["content-type"] == "application/vnd.apache.parquet"
    pd.testing.assert_frame_equal(
        pq.read_table(io.BytesIO(download.content)).to_pandas(),
        dataset.X_train,
        check_index_type=False,
        check_dtype=False,
    )
    y_test = pq.read_table(
        io.BytesIO(
            env.get(
                "/datasets/load-version", params={"name": "api_health_risk", "version": "1.0.0", "download": "y_test"}
            ).content
        )
    ).to_pandas()
    assert y_test.iloc[:, 0].tolist() == dataset.y_test.tolist()

    # the same fitted transform at serving time: posted joined rows come back as X_test's rows
    rows = dataset.joined_test.drop(columns=["adverse_event_30d"]).head(5)
    payload = json.loads(rows.to_json(orient="records", date_format="iso"))
    response = env.post("/data/preprocess", {"dataset": "api_health_risk@1.0.0", "rows": payload})
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["feature_names"] == dataset.feature_names
    got = pd.DataFrame(out["rows"], columns=out["feature_names"]).astype("float64")
    expected = dataset.X_test.head(5).reset_index(drop=True).astype("float64")
    pd.testing.assert_frame_equal(got, expected, check_exact=False, atol=1e-9)

    label = {**payload[0], "adverse_event_30d": 1}
    assert (
        "drop the label 'adverse_event_30d'"
        in _error(env.post("/data/preprocess", {"dataset": "api_health_risk@1.0.0", "rows": [label]}), 422)["detail"]
    )
    missing = {k: v for k, v in payload[0].items() if k != "event_timestamp"}
    assert (
        "missing column(s) event_timestamp"
        in _error(env.post("/data/preprocess", {"dataset": "api_health_risk@1.0.0", "rows": [missing]}), 422)["detail"]
    )
    bad = {**payload[0], "steps_mean_7d": "many"}
    assert (
        "column 'steps_mean_7d'"
        in _error(env.post("/data/preprocess", {"dataset": "api_health_risk@1.0.0", "rows": [bad]}), 422)["detail"]
    )
    _error(env.post("/data/preprocess", {"dataset": "api_health_risk@9.9.9", "rows": [payload[0]]}), 404)


@pytest.mark.parametrize(
    "changes, entity_columns, message",
    [
        (
            {"label": "no_such_label"},
            None,
            "entities file 'data/ingested/labels.parquet' is missing column(s) 'no_such_label' "
            "(columns: user_id, event_timestamp, adverse_event_30d, disengaged_14d); set label to one of the columns",
        ),
        (
            {"entities": "data/ingested/no_times.parquet"},
            ["user_id", "adverse_event_30d"],
            "entities file 'data/ingested/no_times.parquet' is missing column(s) 'event_timestamp' "
            "(columns: user_id, adverse_event_30d); pass the prediction time per row",
        ),
        (
            {"entities": "data/ingested/no_users.csv"},
            ["event_timestamp", "adverse_event_30d"],
            "entities file 'data/ingested/no_users.csv' is missing column(s) 'user_id' "
            "(columns: event_timestamp, adverse_event_30d); add the user id per row",
        ),
        (
            {"feature_service": "nope_v1"},
            None,
            "feature service 'nope_v1' is not registered (have: ",
        ),
    ],
    ids=["wrong_label", "no_event_timestamp", "no_user_id", "unknown_feature_service"],
)
def test_prepare_refuses_what_the_build_would_fail_on_before_queueing_a_job(
    env, training_config, changes, entity_columns, message
):
    if entity_columns:  # an entity file lacking a required column, next to the real one
        labels = read_frame(env.settings, env.settings.ingested_dir / "labels.parquet")[entity_columns].head(50)
        path = env.settings.repo_path / changes["entities"]
        labels.to_parquet(path) if path.suffix == ".parquet" else labels.to_csv(path, index=False)
    jobs = len(env.client.app.state.ctx.jobs.list(limit=10_000))
    response = env.post("/datasets/prepare", training_config("health_risk", name="refused", **changes))
    assert message in _error(response, 422)["detail"]
    assert len(env.client.app.state.ctx.jobs.list(limit=10_000)) == jobs  # nothing queued
    with pytest.raises(HealthmateError, match=re.escape(message)):  # the builder refuses it with the same check
        build_training_set(training_config("health_risk", name="refused", **changes), env.settings)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"split": {"strategy": "time", "embargo_days": 1e308}}, "split.embargo_days is 1e+308; it must be a number"),
        ({"split": {"strategy": "time", "cutoff": "1677-09-22"}}, "split.cutoff is '1677-09-22'; it must be from"),
        ({"split": {"strategy": "random", "seed": 2**40}}, "split.seed is 1099511627776; it must be an integer in"),
        ({"label": "user_id"}, "label 'user_id' is a key column of the entity frame"),
        ({"label": "__hm_row"}, "label '__hm_row' starts with '_hm_' or '__hm_', which is reserved"),
        ({"label": "steps_mean_7d"}, "label 'steps_mean_7d' is also a feature of feature service 'health_risk_v1'"),
        ({"entities": "data/healthmate.db"}, "entities 'data/healthmate.db' is not a Parquet or CSV file by its name"),
    ],
    ids=[
        "embargo_overflow",
        "cutoff_out_of_range",
        "seed_out_of_range",
        "label_key",
        "label_internal",
        "label_feature",
        "entities_store_file",
    ],
)
def test_prepare_refuses_out_of_range_and_reserved_values_with_422_and_queues_nothing(
    env, training_config, changes, message
):
    jobs = len(env.client.app.state.ctx.jobs.list(limit=10_000))
    response = env.post("/datasets/prepare", training_config("health_risk", name="refused", **changes))
    detail = _error(response, 422)["detail"]
    assert message in detail and "unexpected" not in detail and str(env.settings.repo_path) not in detail
    assert len(env.client.app.state.ctx.jobs.list(limit=10_000)) == jobs  # nothing queued


def test_a_failing_dataset_job_reports_its_error(env, training_config):
    """What only the data can tell fails the job: here a cutoff before every prediction time."""
    split = {"strategy": "time", "cutoff": "2000-01-01T00:00:00Z", "label_horizon_days": 30}
    response = env.post("/datasets/prepare", training_config("health_risk", name="broken", split=split))
    assert response.status_code == 202, response.text
    done = _wait(env, response.json()["job_id"])
    assert done["status"] == "failed" and "cutoff" in done["error"] and done["dataset"] is None
    assert done["attempts"] == 1  # a configuration error is not retried


def test_dashboard_summary_counts_and_freshness(env):
    response = env.get("/dashboard/summary", role="user")
    body = response.json()
    assert response.status_code == 200, body
    assert body["counts"]["feature_views"] == 7 and body["counts"]["on_demand_feature_views"] == 1
    services = {
        s.name for s in store.open_feature_store(env.settings).list_feature_services()
    }  # with this module's sets
    assert body["counts"]["feature_services"] == len(services) and body["counts"]["models"] == 1
    batch = [v for v in body["feature_views"] if v["kind"] == "batch"]
    assert len(batch) == body["counts"]["feature_views"]
    assert all(v["last_materialized_end"] and v["materialization_intervals"] >= 1 for v in batch)
    assert {s["name"] for s in body["feature_services"]} == services >= {"health_risk_v1", "engagement_churn_v1"}
    assert [(r["model_name"], r["model_version"], r["environment"]) for r in body["latest_model_results"]] == [
        ("risk", "2.0", "staging")
    ]


# -- access control --------------------------------------------------------------------------

_JOB = uuid.uuid4().hex
PROBES = {  # endpoint: (method, path, params or body); admin reaches the endpoint's own checks
    "health": ("GET", "/health", None),
    "extract_own": ("GET", "/features/extract", {"user_id": OWN}),
    "extract_other": ("GET", "/features/extract", {"user_id": OTHER}),
    "feature_sets_create": ("POST", "/feature-sets/create", {"name": "matrix_v1", "features": ["no_such_view"]}),
    "datasets_prepare": (
        "POST",
        "/datasets/prepare",
        {"name": "m", "feature_service": "health_risk_v1", "entities": "data/none.parquet", "label": "y"},
    ),
    "datasets_job": ("GET", f"/datasets/jobs/{_JOB}", None),
    "datasets_versions": ("GET", "/datasets/versions", None),
    "datasets_load_version": ("GET", "/datasets/load-version", {"name": "no_such_dataset"}),
    "data_preprocess": ("POST", "/data/preprocess", {"dataset": "no_such_dataset@1.0.0", "rows": [{}]}),
    "models_performance": ("GET", "/models/performance", {"model": "risk"}),
    "dashboard_summary": ("GET", "/dashboard/summary", None),
    "monitoring_drift": ("GET", "/monitoring/drift", {"dataset": "no_such_dataset@1.0.0"}),
    "monitoring_freshness": ("GET", "/monitoring/freshness", None),
    # A reading out of range: refused (422) before anything is pushed, for either role.
    "events": (
        "POST",
        "/events",
        {"readings": [{"user_id": OWN, "event_timestamp": "2026-12-07T08:30:00Z", "heart_rate_bpm": -1.0}]},
    ),
}
ADMIN_OUTCOME = {
    "health": 200,
    "extract_own": 200,
    "extract_other": 200,
    "feature_sets_create": 422,
    "datasets_prepare": 422,
    "datasets_job": 404,
    "datasets_versions": 200,
    "datasets_load_version": 404,
    "data_preprocess": 404,
    "models_performance": 200,
    "dashboard_summary": 200,
    "monitoring_drift": 404,
    "monitoring_freshness": 200,
    "events": 422,
}
USER_ALLOWED = {
    "health",
    "extract_own",
    "datasets_versions",
    "models_performance",
    "dashboard_summary",
    "monitoring_drift",
    "monitoring_freshness",
    "events",
}
ROLES = ("admin", "user", "none", "malformed", "unknown", "revoked")


def _expected(role: str, endpoint: str) -> int:
    if endpoint == "health":
        return 200
    if role in ("none", "malformed", "unknown", "revoked"):
        return 401
    if role == "user" and endpoint not in USER_ALLOWED:
        return 403
    return ADMIN_OUTCOME[endpoint]


@pytest.mark.parametrize("endpoint", sorted(PROBES))
@pytest.mark.parametrize("role", ROLES)
def test_authorization_matrix(env, role, endpoint):
    method, path, data = PROBES[endpoint]
    if method == "GET":
        response = env.get(path, role=role, params=data)
    else:
        response = env.post(path, data, role=role)
    expected = _expected(role, endpoint)
    assert response.status_code == expected, (role, endpoint, response.text)
    if expected >= 400:
        _error(response, expected)
    if expected == 401:
        assert response.headers["www-authenticate"] == "Bearer"


def test_unknown_paths_need_a_key_too(env):
    _error(env.get("/no/such/path", role="none"), 401)
    _error(env.get("/no/such/path"), 404)
    _error(env.client.delete(_url("/dashboard/summary"), headers=env.keys["admin"]), 405)


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path, data, status, message",
    [
        ("GET", "/features/extract", {}, 422, "query.user_id: Field required"),
        ("GET", "/features/extract", {"user_id": "abc"}, 422, "query.user_id"),
        ("GET", "/features/extract", {"user_id": 0}, 422, "greater than or equal to 1"),
        ("GET", "/features/extract", {"user_id": 2**70}, 422, "query.user_id"),
        ("POST", "/feature-sets/create", {"name": "NoVersion", "features": ["profile"]}, 422, "body.name"),
        ("POST", "/feature-sets/create", {"name": "x_v1", "features": []}, 422, "body.features"),
        ("POST", "/feature-sets/create", {"name": "x_v1", "features": ["profile"], "extra": 1}, 422, "body.extra"),
        ("POST", "/feature-sets/create", [1, 2], 422, "body"),
        ("POST", "/datasets/prepare", {"name": "x"}, 422, "body.feature_service: Field required"),
        (
            "POST",
            "/datasets/prepare",
            {
                "name": "x",
                "feature_service": "health_risk_v1",
                "entities": "data/ingested/labels.parquet",
                "label": "y",
                "split": {"strategy": "sideways"},
            },
            422,
            "split.strategy is 'sideways'",
        ),
        (
            "POST",
            "/datasets/prepare",
            {"name": "x", "feature_service": "nope_v1", "entities": "data/ingested/labels.parquet", "label": "y"},
            422,
            "'nope_v1' is not registered",
        ),
        (
            "POST",
            "/datasets/prepare",
            {"name": "x", "feature_service": "health_risk_v1", "entities": "/etc/hostname", "label": "y"},
            422,
            "lies outside",
        ),
        (
            "POST",
            "/datasets/prepare",
            {"name": "x", "feature_service": "health_risk_v1", "entities": "../../x.parquet", "label": "y"},
            422,
            "lies outside",
        ),
        ("GET", "/datasets/jobs/not-a-job", None, 422, "path.job_id"),
        ("GET", "/datasets/versions", {"name": "../etc"}, 422, "invalid dataset name"),
        ("GET", "/datasets/load-version", {}, 422, "query.name: Field required"),
        ("GET", "/datasets/load-version", {"name": "health_risk", "version": "../1"}, 422, "invalid dataset version"),
        ("GET", "/datasets/load-version", {"name": "health_risk", "download": "pipeline"}, 422, "query.download"),
        ("POST", "/data/preprocess", {"dataset": "no-version", "rows": [{}]}, 422, "body.dataset"),
        ("POST", "/data/preprocess", {"dataset": "x@1.0.0", "rows": []}, 422, "body.rows"),
        ("GET", "/models/performance", {}, 422, "query.model: Field required"),
        ("GET", "/models/performance", {"model": "risk", "versions": "1.0,1.0"}, 422, "two or more distinct"),
        ("GET", "/models/performance", {"model": "risk", "allow_mixed_datasets": "maybe"}, 422, "allow_mixed"),
    ],
)
def test_bad_parameters_and_bodies_give_a_clear_4xx(env, method, path, data, status, message):
    response = env.get(path, params=data) if method == "GET" else env.post(path, data)
    assert message in _error(response, status)["detail"]


def test_a_body_that_is_not_json_is_a_400(env):
    response = env.client.post(
        _url("/feature-sets/create"),
        content=b"{not json",
        headers={**env.keys["admin"], "Content-Type": "application/json"},
    )
    assert "not valid JSON" in _error(response, 400)["detail"]


# -- fuzzing the OpenAPI schema --------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
_scalar_text = st.one_of(
    st.text(max_size=30),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(
        ["", "0", "-1", "true", "1.0,1.1", "risk", "health_risk", "X_train", "../x", "health_risk@1.0.0", "%00", "\x00"]
    ),
)


OPERATIONS = [  # every operation of the schema (test_openapi_documents_every_endpoint... checks the list)
    ("post", "/feature-sets/create"),
    ("get", "/features/extract"),
    ("post", "/datasets/prepare"),
    ("get", "/datasets/jobs/{job_id}"),
    ("get", "/datasets/versions"),
    ("get", "/datasets/load-version"),
    ("post", "/data/preprocess"),
    ("get", "/models/performance"),
    ("get", "/dashboard/summary"),
    ("get", "/health"),
    ("get", "/metrics"),
]


@pytest.mark.parametrize("method, path", OPERATIONS)
def test_fuzz_openapi_operations_never_answer_5xx(env, method, path):
    """Random and malformed query/path parameters and JSON bodies, with an admin key: never a 5xx."""
    full = path if path in ("/health", "/metrics") else PREFIX + path
    operation = env.client.app.openapi()["paths"][full][method]
    names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
    body_schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    properties = []
    if body_schema:
        ref = body_schema["$ref"].rsplit("/", 1)[-1]
        properties = list(env.client.app.openapi()["components"]["schemas"][ref]["properties"])

    @hsettings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(
        params=st.dictionaries(st.sampled_from(names or ["x"]) | st.text(max_size=8), _scalar_text, max_size=5),
        job_id=_scalar_text,
        body=st.one_of(
            _json,
            st.fixed_dictionaries({}, optional={k: _json for k in properties or ["x"]}),
        )
        .map(json.dumps)
        .map(str.encode)
        | st.binary(max_size=40),  # JSON with NaN/Infinity, or junk
    )
    def check(params, job_id, body):
        url = full.replace("{job_id}", quote(job_id or "x", safe=""))
        kwargs = {"params": params, "headers": {**env.keys["admin"], "Content-Type": "application/json"}}
        if method == "post":
            kwargs["content"] = body
        response = env.client.request(method.upper(), url, **kwargs)
        assert response.status_code < 500, (url, params, body, response.text)
        if response.status_code >= 400:
            _error(response, response.status_code)

    check()


_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["2025-03-01T00:00:00Z", "2025-03-01", "yesterday", "female", "1e400"]),
    st.lists(st.integers(), max_size=2),
)


def test_fuzz_preprocess_rows_and_prepare_configs_never_answer_5xx(env, prepared, training_config):
    """Structured fuzzing deeper than the schema: real columns with random values, and configs
    with random split/preprocessing sections (their label is missing: always refused before a job)."""
    dataset = registry(env.settings).load("api_health_risk", "1.0.0", load_pipeline=False)
    columns = [c for c in dataset.joined_train.columns if c != "adverse_event_30d"]

    @hsettings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(
        rows=st.lists(
            st.fixed_dictionaries({c: _value for c in columns[:3]}, optional={c: _value for c in columns[3:]}),
            min_size=1,
            max_size=3,
        ),
        complete=st.booleans(),
    )
    def rows_check(rows, complete):
        if complete:
            rows = [{c: row.get(c) for c in columns} for row in rows]
        response = env.client.post(
            _url("/data/preprocess"),
            headers=env.keys["admin"],
            content=json.dumps({"dataset": "api_health_risk@1.0.0", "rows": rows}).encode(),
        )
        assert response.status_code in (200, 422), response.text

    sections = st.dictionaries(
        st.sampled_from(
            [
                "strategy",
                "test_size",
                "cutoff",
                "embargo_days",
                "seed",
                "stratify",
                "numeric",
                "categorical",
                "select",
                "reduce",
                "impute",
                "x",
            ]
        ),
        _json,
        max_size=3,
    )

    @hsettings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(split=sections, preprocessing=sections, task=st.sampled_from(["classification", "regression"]))
    def config_check(split, preprocessing, task):
        config = training_config(
            "health_risk", name="fuzz", label="no_such_label", split=split, preprocessing=preprocessing, task=task
        )
        response = env.client.post(
            _url("/datasets/prepare"), headers=env.keys["admin"], content=json.dumps(config).encode()
        )
        assert response.status_code == 422, response.text

    rows_check()
    config_check()


# -- audit -----------------------------------------------------------------------------------


def test_every_request_is_audited_with_its_route_target_and_no_feature_values(env):
    before = len(env.audit())
    own = env.get("/features/extract", role="user", params={"user_id": OWN})
    env.get("/features/extract", role="user", params={"user_id": OTHER})
    env.get("/features/extract", role="none", params={"user_id": OWN})
    env.get("/features/extract", params={"user_id": "abc"})
    env.get("/datasets/load-version", role="user", params={"name": "health_risk"})
    env.get("/models/performance", params={"model": "risk", "versions": "1.0,2.0"})
    env.get("/health", role="none")
    entries = env.audit()[: len(env.audit()) - before][::-1]  # newest first -> in request order
    extract = f"GET {PREFIX}/features/extract"
    assert [(e.endpoint, e.role, e.target, e.status) for e in entries] == [
        (extract, "user", f"user:{OWN}", 200),
        (extract, "user", f"user:{OTHER}", 403),
        (extract, None, None, 401),
        (extract, "admin", None, 422),
        (f"GET {PREFIX}/datasets/load-version", "user", None, 403),
        (f"GET {PREFIX}/models/performance", "admin", "model:risk", 409),
        ("GET /health", None, None, 200),
    ]
    assert all(e.latency_ms >= 0 and e.at.tzinfo is not None for e in entries)
    assert entries[0].key_id.startswith("hmk_") and entries[2].key_id is None
    values = [v for v in own.json()["features"].values() if isinstance(v, float) and len(repr(v)) > 8]
    assert values, "the user should have precise float features to look for"
    logged = " ".join(repr(e.to_dict()) for e in env.audit())
    assert not [v for v in values if repr(v) in logged]
    assert "?" not in logged and "user_id=" not in logged
