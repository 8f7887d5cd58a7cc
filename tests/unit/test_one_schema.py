"""One schema per shape: the HTTP API's request models come from the library's definitions."""

from __future__ import annotations

import dataclasses
from typing import get_args

import pytest
from fastapi.testclient import TestClient

from healthmate_features.access.keys import ApiKeys
from healthmate_features.api import models
from healthmate_features.api.app import create_app
from healthmate_features.backends import open_sql_store
from healthmate_features.config import Settings
from healthmate_features.datasets.ref import REF_PATTERN, DatasetRef
from healthmate_features.errors import DatasetRefError, DatasetVersionError, TrackingError
from healthmate_features.jobs.store import STATUSES, JobStatus
from healthmate_features.tracking import ENVIRONMENTS, Environment
from healthmate_features.training.builder import TrainingSetConfig
from healthmate_features.training.preprocessing import TASKS

PREFIX = "/api/v1/ml-data-preparation"


@pytest.fixture
def api(tmp_path):
    settings = Settings.from_env(repo_path=tmp_path, profile="embedded")
    with open_sql_store(settings) as sql:
        _, secret = ApiKeys(sql).create_key("admin", name="schema-test")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {secret}"
        yield client


def test_the_prepare_body_is_the_training_set_config(api):
    schema = api.get("/openapi.json").json()
    body = schema["paths"][f"{PREFIX}/datasets/prepare"]["post"]["requestBody"]["content"]["application/json"]
    name = body["schema"]["$ref"].rsplit("/", 1)[-1]
    component = schema["components"]["schemas"][name]
    assert set(component["properties"]) == {f.name for f in dataclasses.fields(TrainingSetConfig)}
    assert component["additionalProperties"] is False
    assert component["properties"]["task"]["enum"] == list(TASKS)


def test_every_config_key_is_accepted_over_http_and_an_unknown_one_is_named(api):
    config = {"name": "x", "feature_service": "s", "entities": "missing.parquet", "label": "y"}
    late = api.post(f"{PREFIX}/datasets/prepare", json={**config, "exclude_late_arrivals": True})
    assert late.status_code == 422
    assert "entities file 'missing.parquet' not found" in late.json()["detail"]  # past the schema: accepted
    unknown = api.post(f"{PREFIX}/datasets/prepare", json={**config, "exclude_late": True})
    assert unknown.status_code == 422 and "exclude_late" in unknown.json()["detail"]


def test_environments_job_statuses_and_dataset_refs_are_defined_once():
    assert get_args(models.Environment) == ENVIRONMENTS == get_args(Environment)
    assert get_args(models.JobInfo.model_fields["status"].annotation) == STATUSES == get_args(JobStatus)
    assert models.DATASET_REF_PATTERN is REF_PATTERN
    assert str(DatasetRef.parse("health_risk@1.0.0")) == "health_risk@1.0.0"
    for bad in ("health_risk", "../x@1.0.0", "a/b@1", "x@"):
        with pytest.raises(DatasetRefError, match="is not NAME@VERSION"):
            DatasetRef.parse(bad)
    assert issubclass(DatasetRefError, DatasetVersionError) and issubclass(DatasetRefError, TrackingError)
