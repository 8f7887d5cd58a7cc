"""Served-feature logging (issue 15): what `features/extract` served for a feature service with a
LoggingConfig lands, encrypted, in its log directory in Feast's log schema; drift reads it, erasure
removes a person from it."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from feast.feature_logging import LOG_TIMESTAMP_FIELD, REQUEST_ID_FIELD

from healthmate_features.access.keys import ApiKeys
from healthmate_features.api.app import PREFIX, create_app
from healthmate_features.backends import open_sql_store
from healthmate_features.cli import main
from healthmate_features.crypto import file_key_id
from healthmate_features.monitoring.served_log import NOT_FOUND, PRESENT

from ..helpers.files import read_frame

SERVICE = "health_risk_v1"
USERS = [3, 5, 8, 13]


@pytest.fixture(scope="module")
def served(demo_run, tmp_path_factory):
    """A clone of the demo whose API served health_risk_v1 to USERS (and everything to user 21, unlogged)."""
    from dataclasses import replace

    from ..helpers import repos

    settings = replace(demo_run[0], repo_path=repos.clone(demo_run[0].repo_path, tmp_path_factory.mktemp("log") / "r"))
    with open_sql_store(settings) as sql:
        secret = ApiKeys(sql).create_key("admin", name="log-admin").secret
    answers = {}
    with TestClient(create_app(settings)) as client:  # leaving it stops the server: the log is flushed
        for user in USERS:
            response = client.get(
                f"{PREFIX}/features/extract",
                params={"user_id": user, "feature_service": SERVICE},
                headers={"Authorization": f"Bearer {secret}"},
            )
            assert response.status_code == 200, response.text
            answers[user] = response.json()["features"]
        everything = client.get(
            f"{PREFIX}/features/extract", params={"user_id": 21}, headers={"Authorization": f"Bearer {secret}"}
        )
        assert everything.status_code == 200
    return settings, answers


def test_every_served_lookup_is_one_encrypted_row_of_feasts_log_schema(served):
    settings, answers = served
    files = sorted((settings.data_dir / "feature_logs" / SERVICE).glob("*.parquet"))
    assert files and all(file_key_id(f) for f in files)
    rows = pd.concat([read_frame(settings, f) for f in files], ignore_index=True)
    assert sorted(rows["user_id"]) == USERS  # user 21 asked for no feature service: not logged
    assert rows[REQUEST_ID_FIELD].nunique() == len(USERS) and rows[LOG_TIMESTAMP_FIELD].notna().all()
    for _, row in rows.iterrows():
        answer = answers[int(row["user_id"])]
        for logged, name in (
            ("profile__age_years", "age_years"),
            ("health_rolling__steps_mean_7d", "steps_mean_7d"),
            ("temporal__month_sin", "month_sin"),
        ):
            if answer[name] is None:
                assert pd.isna(row[logged]) and row[f"{logged}__status"] == NOT_FOUND
            else:
                assert row[logged] == pytest.approx(answer[name]) and row[f"{logged}__status"] == PRESENT


def test_drift_reads_the_served_log_and_erasure_removes_the_person_from_it(served):
    settings, _ = served
    env = {"HM_REPO_PATH": str(settings.repo_path), "HM_PROFILE": "embedded"}
    drift = CliRunner(env=env).invoke(
        main,
        ["monitor", "drift", "--dataset", "health_risk@1.0.0", "--source", "served", "--json", "--fail-on", "never"],
    )
    assert drift.exit_code == 0, drift.output
    assert json.loads(drift.stdout)["source"] == "served"

    erased = CliRunner(env=env).invoke(main, ["erase", "--user-id", str(USERS[1]), "--json"])
    assert erased.exit_code == 0, erased.output
    assert sum(json.loads(erased.stdout)["removed"]["feature_log_files"].values()) == 1
    files = sorted((settings.data_dir / "feature_logs" / SERVICE).glob("*.parquet"))
    left = pd.concat([read_frame(settings, f) for f in files], ignore_index=True)
    assert sorted(left["user_id"]) == [u for u in USERS if u != USERS[1]]
    verify = CliRunner(env=env).invoke(main, ["erase", "--verify", "--user-id", str(USERS[1])])
    assert verify.exit_code == 0, verify.output
