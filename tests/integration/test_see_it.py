"""Drift, freshness and the dashboard on the demo repository (`make demo`'s data), through the CLI,
the API and a real headless Chromium.

One module fixture copies the demo repository, saves a second dataset version (the first 90% of
1.0.0's training rows: a patch with a parent) and logs model runs in three environments. The page
and the report are loaded in Chromium (tests/helpers/browser.py) with every host but 127.0.0.1
unresolvable; screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from healthmate_features.access.keys import ApiKeys
from healthmate_features.api.app import PREFIX, create_app
from healthmate_features.backends import backend_for, open_sql_store
from healthmate_features.cli import main
from healthmate_features.config import Settings
from healthmate_features.crypto import write_parquet
from healthmate_features.datasets.dataset import ProcessedDataset
from healthmate_features.datasets.registry import DatasetRegistry
from healthmate_features.monitoring import drift
from healthmate_features.monitoring.freshness import view_freshness
from healthmate_features.tracking import Tracker

from ..helpers import browser as chrome
from ..helpers.files import read_frame

BIN = Path(sys.executable).parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DATASET = "health_risk@1.0.0"
SECOND = "health_risk@1.0.1"
MODEL = "health_risk_baseline"
pytestmark = pytest.mark.slow


@dataclass
class Seen:
    settings: Settings
    client: TestClient
    secrets: dict[str, str]

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[role]}"}

    def env(self) -> dict[str, str]:
        return {"HM_REPO_PATH": str(self.settings.repo_path), "HM_PROFILE": "embedded"}

    def cli(self, *args: str):
        return CliRunner(env=self.env()).invoke(main, list(args))


@pytest.fixture(scope="module")
def seen(demo_run, clone_repo, tmp_path_factory):
    settings = clone_repo(demo_run[0], tmp_path_factory.mktemp("see") / "repo")
    registry = DatasetRegistry.from_settings(settings)
    first = registry.load("health_risk", "1.0.0")
    keep = int(len(first.X_train) * 0.9)
    second = ProcessedDataset(
        X_train=first.X_train.iloc[:keep],
        X_test=first.X_test,
        y_train=first.y_train.iloc[:keep],
        y_test=first.y_test,
        feature_names=first.feature_names,
        pipeline=first.pipeline,
        metadata=first.metadata,
        joined_train=first.joined_train.iloc[:keep],
        joined_test=first.joined_test,
    )
    assert registry.save(second, "health_risk") == "1.0.1"
    with open_sql_store(settings) as sql:
        tracker = Tracker(sql, datasets=registry)
        for version, environment, auc in (
            ("logreg-1", "staging", 0.70),
            ("logreg-2", "staging", 0.73),
            ("logreg-2", "production", 0.72),
            ("logreg-2", "development", 0.74),
        ):
            tracker.log_metrics(MODEL, version=version, dataset=SECOND, environment=environment, metrics={"auc": auc})
        keys = ApiKeys(sql)
        secrets = {
            "admin": keys.create_key("admin", name="see-admin").secret,
            "user": keys.create_key("user", user_id=1, name="see-user").secret,
        }
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield Seen(settings, client, secrets)


# -- drift -----------------------------------------------------------------------------------


def test_monitor_drift_on_the_unshifted_demo_data_exits_0_and_equals_the_library(seen):
    done = seen.cli("monitor", "drift", "--dataset", DATASET, "--json")
    assert done.exit_code == 0, done.output
    body = json.loads(done.stdout)
    assert body["counts"]["drift"] == 0 and body["reference"] == "manifest sketches"
    assert {n["feature"] for n in body["not_compared"]} == {"days_since_signup", "month_sin", "month_cos"}
    library = drift.drift(seen.settings, DATASET).to_dict()
    assert [(f["feature"], f["status"], f["psi"]) for f in body["features"]] == [
        (f["feature"], f["status"], f["psi"]) for f in library["features"]
    ]
    ranks = {"drift": 0, "warn": 1, "ok": 2, "no_data": 3}
    keys = [(ranks[f["status"]], -f["severity"]) for f in body["features"]]
    assert keys == sorted(keys)  # sorted by severity within each status
    text = seen.cli("monitor", "drift", "--dataset", DATASET)
    assert text.exit_code == 0 and "psi_max" in text.output and "not compared: days_since_signup" in text.output


def test_a_shifted_population_is_flagged_and_the_command_exits_3(demo_run, clone_repo, tmp_path):
    shifted = clone_repo(demo_run[0], tmp_path / "repo")
    table = shifted.features_dir / "health_rolling.parquet"
    frame = read_frame(shifted, table)
    steps = [c for c in frame.columns if c.startswith("steps_mean") or c.startswith("steps_max")]
    frame[steps] = frame[steps] * 1.6  # everyone walks 60% more
    write_parquet(backend_for(shifted).keyring(), pa.Table.from_pandas(frame, preserve_index=False), table)
    done = CliRunner(env={"HM_REPO_PATH": str(shifted.repo_path), "HM_PROFILE": "embedded"}).invoke(
        main, ["monitor", "drift", "--dataset", DATASET, "--json"]
    )
    assert done.exit_code == 3, done.output
    body = json.loads(done.stdout)
    flagged = [f["feature"] for f in body["features"] if f["status"] == "drift"]
    assert set(flagged) == set(steps) and [f["feature"] for f in body["features"][: len(steps)]] == flagged
    assert (
        CliRunner(env={"HM_REPO_PATH": str(shifted.repo_path)})
        .invoke(main, ["monitor", "drift", "--dataset", DATASET, "--fail-on", "never"])
        .exit_code
        == 0
    )


def test_drift_errors_name_the_fix(seen):
    served = seen.cli("monitor", "drift", "--dataset", DATASET, "--source", "served")
    # Both feature services log what they serve (LoggingConfig); the demo served nothing yet.
    assert served.exit_code == 1 and "nothing was logged; use --source offline" in served.output
    assert "feature_logs/health_risk_v1" in served.output
    window = seen.cli("monitor", "drift", "--dataset", DATASET, "--since", "7 days")
    assert window.exit_code == 1 and "30m, 12h, 7d or 2w" in window.output
    unknown = seen.cli("monitor", "drift", "--dataset", "health_risk@9.9.9")
    assert unknown.exit_code == 1 and "9.9.9" in unknown.output


# -- freshness -------------------------------------------------------------------------------


def test_freshness_flags_the_demos_old_data_as_late(seen):
    done = seen.cli("monitor", "freshness", "--json", "--fail-on-late")
    assert done.exit_code == 3, done.output
    views = json.loads(done.stdout)["feature_views"]
    assert {v["name"] for v in views} == {
        "health_daily",
        "health_rolling",
        "health_weekly",
        "health_monthly",
        "health_today",
        "engagement_daily",
        "profile",
    }
    for view in views:  # the demo's data ends in 2025: past the objective and every TTL
        assert view["late"] and any("objective" in r for r in view["reasons"]), view
        if view["name"] == "health_today":  # fed by pushes, and the demo pushes nothing
            assert "no feature rows" in view["reasons"], view
        else:
            assert any("past the TTL" in r for r in view["reasons"]), view
    relaxed = seen.cli("monitor", "freshness", "--json", "--objective", "9999w")
    assert relaxed.exit_code == 0  # without --fail-on-late it only reports
    assert all(not any("objective" in r for r in v["reasons"]) for v in json.loads(relaxed.stdout)["feature_views"])


# -- the API ---------------------------------------------------------------------------------


def test_the_drift_endpoint_equals_the_library_and_sets_the_gauges(seen):
    response = seen.client.get(f"{PREFIX}/monitoring/drift", params={"dataset": DATASET}, headers=seen.headers("user"))
    assert response.status_code == 200, response.text
    body = response.json()
    library = drift.drift(seen.settings, DATASET)
    assert [(f["feature"], f["psi"], f["status"]) for f in body["features"]] == [
        (f.feature, f.psi, f.status) for f in library.features
    ]
    scraped = seen.client.get("/metrics", headers=seen.headers("admin")).text
    gauges = {
        s.labels["feature"]: s.value
        for family in text_string_to_metric_families(scraped)
        if family.name == "healthmate_feature_drift_psi"
        for s in family.samples
        if s.labels["dataset"] == DATASET
    }
    assert gauges == pytest.approx({f.feature: f.psi for f in library.features if f.psi is not None})
    late = {
        s.labels["feature_view"]: s.value
        for family in text_string_to_metric_families(scraped)
        if family.name == "healthmate_feature_view_late"
        for s in family.samples
    }
    assert late and set(late.values()) == {1.0}
    fresh = seen.client.get(f"{PREFIX}/monitoring/freshness", headers=seen.headers("user")).json()
    assert sorted(fresh["late"]) == sorted(late)


def test_the_dashboard_needs_a_key_and_takes_it_as_a_basic_password(seen):
    refused = seen.client.get("/dashboard")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    wrong = seen.client.get("/dashboard", headers={"Authorization": "Basic " + base64.b64encode(b"x:nope").decode()})
    assert wrong.status_code == 401
    basic = base64.b64encode(f"me:{seen.secrets['user']}".encode()).decode()
    assert seen.client.get("/dashboard", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    # Basic is for the page only: the JSON endpoints still want Bearer
    assert (
        seen.client.get(f"{PREFIX}/dashboard/summary", headers={"Authorization": f"Basic {basic}"}).status_code == 401
    )
    assert seen.client.get(f"{PREFIX}/dashboard/summary", headers=seen.headers("user")).status_code == 200


def _marks(html: str, chart: str) -> list[tuple[str, str]]:
    svg = re.search(rf'<svg class="chart" data-chart="{re.escape(chart)}".*?</svg>', html, flags=re.S)
    assert svg, f"no chart {chart}"
    return re.findall(r'class="mark[^"]*"[^>]*?data-label="([^"]*)"[^>]*?data-value="([^"]*)"', svg.group(0))


def test_the_page_shows_the_librarys_numbers_and_user_keys_see_no_distributions(seen):
    admin = seen.client.get("/dashboard", params={"dataset": SECOND}, headers=seen.headers("admin")).text
    user = seen.client.get("/dashboard", params={"dataset": SECOND}, headers=seen.headers("user")).text
    library = drift.drift(seen.settings, SECOND)
    shown = {label: float(value) for label, value in _marks(admin, "drift")}
    assert shown == pytest.approx({f.feature: f.severity for f in library.features if f.status != "no_data"})
    registry = DatasetRegistry.from_settings(seen.settings)
    rows = _marks(admin, "diff-rows")
    expected = [
        (side, float(registry.show("health_risk", v)["row_counts"][side]))
        for side in ("train", "test")
        for v in ("1.0.0", "1.0.1")
    ]
    assert sorted((label, float(value)) for label, value in rows) == sorted(expected)
    assert [label for label, _ in _marks(admin, "lineage-health_risk")] == ["1.0.0", "1.0.1"]
    with open_sql_store(seen.settings) as sql:
        history = Tracker(sql).history(MODEL, metric="auc")
    points = sorted(float(v) for _, v in _marks(admin, f"model-{MODEL}-auc"))
    assert points == sorted(r.value for r in history)
    views = {v["name"]: v for v in view_freshness(seen.settings)}
    assert {label for label, _ in _marks(admin, "freshness")} == set(views)
    distributions = re.findall(r'data-chart="diff-(?!rows|label-balance)[^"]+"', admin)
    assert len(distributions) == 8  # DIFF_FEATURES
    assert not re.findall(r'data-chart="diff-(?!rows|label-balance)[^"]+"', user)
    assert "admin keys only" in user and 'data-chart="drift"' in user
    assert "http://" not in admin.replace("http://www.w3.org/2000/svg", "")  # nothing fetched from elsewhere
    assert "<script" not in admin and re.findall(r"<link[^>]*>", admin) == ["<link rel='icon' href='data:,'>"]


# -- in a real browser -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    found = chrome.find_chromium()
    if found:
        return found
    message = "headless Chromium is not installed; `make browser` installs it (Debian's chromium package, as root)"
    if IN_CI:
        pytest.fail(f"CI=true requires it: {message}", pytrace=False)
    pytest.skip(message)


def _check_rendered(loaded: chrome.Loaded, expected_charts: set[str]) -> None:
    assert loaded.errors == [], loaded.errors
    charts = {c["chart"]: c for c in loaded.charts}
    assert expected_charts <= set(charts), sorted(charts)
    for chart in loaded.charts:
        assert chart["width"] > 100 and chart["height"] > 50, chart["chart"]
        drawn = [m for m in chart["marks"] if m["width"] > 0 and m["height"] > 0]
        assert drawn, f"chart {chart['chart']} has no visible mark"
    assert loaded.screenshot is not None and loaded.screenshot.stat().st_size > 10_000


def test_the_served_page_renders_every_chart_in_chromium(seen, chromium, server, spare_port, tmp_path):
    base = f"http://127.0.0.1:{spare_port}"
    env = {**os.environ, **seen.env()}
    with server(
        [str(BIN / "healthmate-features"), "serve", "--host", "127.0.0.1", "--port", str(spare_port)],
        cwd=seen.settings.repo_path,
        ready=f"{base}/health",
        log=tmp_path / "serve.log",
        env=env,
    ):
        with chrome.Browser(chromium, tmp_path / "profile") as browser:
            admin = browser.load(
                f"{base}/dashboard?dataset={SECOND}", headers=seen.headers("admin"), shot="dashboard-admin"
            )
            user = browser.load(
                f"{base}/dashboard?dataset={SECOND}", headers=seen.headers("user"), shot="dashboard-user"
            )
            refused = browser.load(f"{base}/dashboard")
    common = {"freshness", "lineage-health_risk", "diff-rows", "diff-label-balance", "drift", f"model-{MODEL}-auc"}
    _check_rendered(admin, common | {f"versions-{MODEL}-auc"})
    assert sum(c["chart"].startswith("diff-") for c in admin.charts) == 10  # rows, labels, 8 features
    _check_rendered(user, common)
    assert "Feature distributions are shown to admin keys only" in user.text
    drift_marks = {m["label"]: float(m["value"]) for c in admin.charts if c["chart"] == "drift" for m in c["marks"]}
    library = drift.drift(seen.settings, SECOND)
    assert drift_marks == pytest.approx({f.feature: f.severity for f in library.features if f.status != "no_data"})
    assert not refused.charts  # no key: no page


def test_the_static_report_opens_offline_with_every_chart(seen, chromium, tmp_path):
    out = tmp_path / "report"
    done = seen.cli("report", "--out", str(out), "--dataset", SECOND)
    assert done.exit_code == 0, done.output
    page = out / "index.html"
    with chrome.Browser(chromium, tmp_path / "profile") as browser:
        loaded = browser.load(page.as_uri(), shot="report")
    _check_rendered(loaded, {"freshness", "lineage-health_risk", "diff-rows", "drift", f"model-{MODEL}-auc"})
    assert "health_risk@1.0.1" in loaded.text and "1.0.0 → 1.0.1" in loaded.text
