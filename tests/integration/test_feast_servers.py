"""Feast's own servers on our repository: `feast serve` (the feature server) and `feast ui`.

Each test starts the real Feast CLI on a spare loopback port in its own copy of an applied and
materialized repository, talks to it over HTTP, and stops it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

FEAST = str(Path(sys.executable).parent / "feast")
TEMPORAL = ["temporal:day_of_year", "temporal:hour_sin", "temporal:is_weekend", "temporal:days_since_signup"]


@pytest.fixture
def repo(small_embedded, clone_repo, tmp_path):
    """A private copy of the small applied and materialized repository (a server may write to its registry)."""
    return clone_repo(small_embedded, tmp_path / "repo")


def values(answer: dict) -> dict[str, list]:
    """{feature: values} of a /get-online-features answer."""
    return dict(zip(answer["metadata"]["feature_names"], (r["values"] for r in answer["results"]), strict=True))


def test_feast_serve_reads_epoch_seconds_as_it_reads_iso_times(repo, server, spare_port, tmp_path):
    url = f"http://127.0.0.1:{spare_port}"
    args = [FEAST, "serve", "--host", "127.0.0.1", "--port", str(spare_port), "--no-access-log"]
    with server(args, cwd=repo.repo_path, ready=f"{url}/health", log=tmp_path / "serve.log"):

        def ask(*stamps):
            body = {"features": TEMPORAL, "entities": {"user_id": [1] * len(stamps), "event_timestamp": list(stamps)}}
            return httpx.post(f"{url}/get-online-features", json=body, timeout=60)

        # 2025-12-01T14:40:00Z: as epoch seconds (what Feast's UnixTimestamp means), as ISO 8601 strings
        answers = [ask(1764600000), ask("2025-12-01T14:40:00Z"), ask("2025-12-01T15:40:00+01:00")]
        assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
        first = values(answers[0].json())
        assert first["day_of_year"] == [335] and first["is_weekend"] == [0]  # a Monday
        assert first["days_since_signup"][0] is not None and first["days_since_signup"][0] > 0
        assert all(values(a.json()) == first for a in answers[1:])

        # what cannot be read is refused with a client error that says why, never read as another date
        for stamp, message in [
            (1764600000000, "event_timestamp 1764600000000 (1 of 1 values) is not epoch seconds between 1900 and 2200"),
            ("not-a-date", "event_timestamp 'not-a-date' (1 of 1 values) is not a time"),
            (None, "event_timestamp is null in 1 of 1 rows"),
        ]:
            refused = ask(stamp)
            assert refused.status_code == 422, (stamp, refused.status_code, refused.text)
            detail = json.loads(refused.json())  # Feast's error detail: a JSON document in a JSON string
            assert detail["class"] == "FeastRequestTimeError" and detail["message"].startswith(message), detail


def test_feast_ui_serves_its_page_and_the_registry_with_our_dataset_versions(
    repo, server, spare_port, tmp_path, make_dataset
):
    from healthmate_features.datasets.registry import DatasetRegistry
    from healthmate_features.datasets.saved import register_versions

    DatasetRegistry.from_settings(repo).save(make_dataset(), "risk")
    assert register_versions(repo, "risk") == ["risk@1.0.0"]
    url = f"http://127.0.0.1:{spare_port}"
    args = [FEAST, "ui", "--host", "127.0.0.1", "--port", str(spare_port)]
    with server(args, cwd=repo.repo_path, ready=f"{url}/", log=tmp_path / "ui.log"):
        page = httpx.get(f"{url}/", timeout=30)
        assert page.status_code == 200 and '<div id="root">' in page.text, page.text[:500]
        scripts = [part.split('"')[0] for part in page.text.split('src="')[1:] if part.split('"')[0].endswith(".js")]
        assert scripts and httpx.get(f"{url}{scripts[0]}", timeout=30).status_code == 200  # the app's own bundle
        projects = httpx.get(f"{url}/projects-list.json", timeout=30).json()["projects"]
        assert [p["id"] for p in projects] == ["healthmate"]
        api = f"{url}{projects[0]['registryPath']}"
        views = httpx.get(f"{api}/feature_views", params={"project": "healthmate"}, timeout=60).json()
        assert {v["spec"]["name"] for v in views["featureViews"]} >= {"health_daily", "profile", "temporal"}
        saved = httpx.get(f"{api}/saved_datasets", params={"project": "healthmate"}, timeout=60).json()
        assert [d["spec"]["name"] for d in saved["savedDatasets"]] == ["risk@1.0.0"]
        assert saved["savedDatasets"][0]["spec"]["tags"]["healthmate_dataset"] == "risk"
