"""The API's pseudonymized download (README "Pseudonymized exports"): admin only, pseudonyms under
HM_EXPORT_KEY, no raw user id and no direct identifier in the file, a clear 422 without a key."""

from __future__ import annotations

import io
from dataclasses import replace

import pyarrow.parquet as pq
import pytest

from healthmate_features.backends import open_sql_store
from healthmate_features.config import Settings
from healthmate_features.datasets.registry import DatasetRegistry
from healthmate_features.governance.exports import pseudonym

KEY = "an-export-key-for-the-api-0123456789"


@pytest.fixture
def api_repo(tmp_path, copy_repo, make_dataset):
    copy_repo(tmp_path / "repo")
    settings = Settings(repo_path=tmp_path / "repo", export_key=KEY)
    dataset = make_dataset()
    dataset.joined_train["session_id"] = "s-1"
    dataset.joined_test["session_id"] = "s-2"
    DatasetRegistry.from_settings(settings).save(dataset, "risk")
    return settings, dataset


def test_the_download_is_pseudonymized_for_admins_only(api_repo):
    from fastapi.testclient import TestClient

    from healthmate_features.access.keys import ApiKeys
    from healthmate_features.api.app import PREFIX, create_app

    settings, dataset = api_repo
    with open_sql_store(settings) as sql:
        admin = ApiKeys(sql).create_key("admin", name="test-admin").secret
        user = ApiKeys(sql).create_key("user", user_id=3, name="test-user").secret
    url = f"{PREFIX}/datasets/load-version"
    params = {"name": "risk", "download": "X_train", "pseudonymize": "true"}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        refused = client.get(url, params=params, headers={"Authorization": f"Bearer {user}"})
        assert refused.status_code == 403
        got = client.get(url, params=params, headers={"Authorization": f"Bearer {admin}"})
        assert got.status_code == 200, got.text
        plain = client.get(
            url, params={"name": "risk", "download": "X_train"}, headers={"Authorization": f"Bearer {admin}"}
        )
        assert plain.status_code == 200
    frame = pq.read_table(io.BytesIO(got.content)).to_pandas()
    assert len(frame) == len(dataset.X_train)
    assert KEY.encode() not in got.content


def test_a_split_with_user_ids_comes_back_with_pseudonyms_and_without_a_key_a_422_says_how(api_repo, make_dataset):
    from fastapi.testclient import TestClient

    from healthmate_features.access.keys import ApiKeys
    from healthmate_features.api.app import PREFIX, create_app

    settings, _ = api_repo
    with_ids = make_dataset(seed=3)
    with_ids.X_train.insert(0, "user_id", with_ids.joined_train["user_id"])
    with_ids.X_test.insert(0, "user_id", with_ids.joined_test["user_id"])
    with_ids.X_train["session_id"] = "s-1"
    with_ids.X_test["session_id"] = "s-2"
    with_ids.feature_names = list(with_ids.X_train.columns)
    DatasetRegistry.from_settings(settings).save(with_ids, "ids")
    with open_sql_store(settings) as sql:
        admin = ApiKeys(sql).create_key("admin", name="test-admin-2").secret
    headers = {"Authorization": f"Bearer {admin}"}
    url = f"{PREFIX}/datasets/load-version"
    params = {"name": "ids", "download": "X_train", "pseudonymize": "true"}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        got = client.get(url, params=params, headers=headers)
    assert got.status_code == 200, got.text
    frame = pq.read_table(io.BytesIO(got.content)).to_pandas()
    raw_ids = set(with_ids.joined_train["user_id"])
    assert set(frame["user_id"]) == {pseudonym(KEY.encode(), i) for i in raw_ids}
    assert "session_id" not in frame.columns and not raw_ids & set(frame.astype(str).to_numpy().ravel())
    with TestClient(create_app(replace(settings, export_key="")), raise_server_exceptions=False) as client:
        refused = client.get(url, params=params, headers=headers)
    assert refused.status_code == 422 and "HM_EXPORT_KEY" in refused.json()["detail"]
