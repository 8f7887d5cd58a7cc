"""Prometheus metrics: /metrics of the API (through its ASGI transport and a real server) on an applied
and materialized repository, a worker's metrics port in its own process, and README's scrape config
and alert rules through Prometheus's own checker (promtool) when it is installed.

Every exposition is parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from urllib.error import HTTPError

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from healthmate_features.access.audit import AuditLog
from healthmate_features.access.keys import ApiKeys
from healthmate_features.api.app import PREFIX, create_app
from healthmate_features.api.metrics import UNMATCHED
from healthmate_features.backends import open_sql_store
from healthmate_features.config import Settings
from healthmate_features.datasets.registry import DatasetRegistry
from healthmate_features.monitoring import metrics
from healthmate_features.stores import feature_store as store
from tests.helpers.files import read_frame

BIN = Path(sys.executable).parent
LOOPBACK = "http://127.0.0.1"
NEVER_MATERIALIZED = "engagement_daily"
EXTRACT = f"{PREFIX}/features/extract"


@dataclass
class Served:
    settings: Settings
    client: TestClient
    keys: dict[str, dict[str, str]]  # role -> headers
    materialized_end: datetime
    written: Counter  # rows per view, as materialize reported them
    rows_counted: dict[str, float]  # healthmate_materialized_rows_total per view, minus its value before

    def scrape(self, base: str = LOOPBACK, role: str = "none") -> dict[str, list]:
        response = self.client.get(f"{base}/metrics", headers=self.keys[role])
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        return families(response.text)


def families(text: str) -> dict[str, list]:
    """Samples by family name, parsed with prometheus_client's own parser."""
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(found: dict[str, list], family: str, sample: str | None = None, **labels: str) -> float:
    """The value of the one sample of `family` named `sample` (default: the family) with these labels."""
    matches = [
        s.value
        for s in found.get(family, [])
        if s.name == (sample or family) and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matches) == 1, (family, sample, labels, found.get(family))
    return matches[0]


def own(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def served(tiny_applied, clone_repo, tmp_path_factory, make_dataset):
    """The tiny repository materialized (all views but one, counting rows), two dataset versions, keys, the app."""
    settings = clone_repo(tiny_applied, tmp_path_factory.mktemp("metrics") / "repo")
    views = sorted(v.name for v in store.open_feature_store(settings).list_feature_views())
    assert NEVER_MATERIALIZED in views
    before = {view: own("healthmate_materialized_rows_total", feature_view=view) for view in views}
    written: Counter = Counter()

    def count(view: str, rows: int) -> None:
        written[view] += rows
        metrics.record_materialized_rows(view, rows)

    end = store.materialize(settings, views=[v for v in views if v != NEVER_MATERIALIZED], written=count).end
    rows_counted = {view: own("healthmate_materialized_rows_total", feature_view=view) - before[view] for view in views}
    registry = DatasetRegistry.from_settings(settings)
    registry.save(make_dataset(seed=0), "metrics_probe")
    registry.save(make_dataset(seed=1), "metrics_probe")
    with open_sql_store(settings) as sql:
        keys = ApiKeys(sql)
        secrets = {"admin": keys.create_key("admin").secret, "user": keys.create_key("user", user_id=1).secret}
    headers = {role: {"Authorization": f"Bearer {secret}"} for role, secret in secrets.items()}
    headers["none"] = {}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield Served(settings, client, headers, end, written, rows_counted)


def test_metrics_hold_requests_audit_freshness_datasets_materialization_and_process(served):
    first = served.scrape()
    admin, user = served.keys["admin"], served.keys["user"]
    assert served.client.get(EXTRACT, params={"user_id": 1}, headers=admin).status_code == 200
    assert served.client.get(EXTRACT, params={"user_id": 2}, headers=user).status_code == 403
    assert served.client.get(EXTRACT, params={"user_id": 1}).status_code == 401
    assert served.client.get(f"{PREFIX}/no/such/route", headers=admin).status_code == 404
    assert served.client.get(f"{PREFIX}/datasets/versions", headers=admin).status_code == 200
    started = time.time()
    found = served.scrape()
    finished = time.time()

    def delta(family: str, sample: str | None = None, **labels: str) -> float:
        before = [s for s in first.get(family, []) if s.name == (sample or family) and s.labels == labels]
        return value(found, family, sample, **labels) - (before[0].value if before else 0.0)

    for status in ("200", "403", "401"):
        assert (
            delta(
                "healthmate_http_requests", "healthmate_http_requests_total", method="GET", route=EXTRACT, status=status
            )
            == 1
        )
    assert (
        delta("healthmate_http_requests", "healthmate_http_requests_total", method="GET", route=UNMATCHED, status="404")
        == 1
    )
    seconds = "healthmate_http_request_duration_seconds"
    assert delta(seconds, f"{seconds}_count", method="GET", route=EXTRACT) == 3
    assert value(found, seconds, f"{seconds}_bucket", method="GET", route=EXTRACT, le="+Inf") >= 3
    assert value(found, "healthmate_http_requests_in_flight") >= 1  # this scrape
    audit = "healthmate_audit_write_duration_seconds"
    assert delta(audit, f"{audit}_count") >= 5 and value(found, audit, f"{audit}_sum") > 0
    assert value(found, "healthmate_audit_write_errors", "healthmate_audit_write_errors_total") >= 0

    fs = store.open_feature_store(served.settings)
    end = served.materialized_end.timestamp()
    for view in fs.list_feature_views():
        freshness = value(found, "healthmate_feature_view_freshness_seconds", feature_view=view.name)
        if view.name == NEVER_MATERIALIZED:
            assert freshness == math.inf
        else:  # seconds from the end of the materialization window to the scrape
            assert started - end - 1 <= freshness <= finished - end + 1, (view.name, freshness)
        assert value(found, "healthmate_feature_view_ttl_seconds", feature_view=view.name) == view.ttl.total_seconds()
    assert value(found, "healthmate_dataset_versions", dataset="metrics_probe") == 2
    assert value(found, "healthmate_metrics_source_up", source="feast_registry") == 1
    assert value(found, "healthmate_metrics_source_up", source="dataset_registry") == 1
    assert value(found, "process_cpu_seconds", "process_cpu_seconds_total") > 0
    assert value(found, "process_resident_memory_bytes") > 0
    assert not [name for name in found if name.startswith("feast_")]


def test_materialized_rows_are_the_rows_feast_wrote_per_view(served):
    """One row per user and view (Feast writes each user's latest row of the window to the online store)."""
    for view, rows in served.written.items():
        users = read_frame(
            served.settings, served.settings.features_dir / f"{view}.parquet", columns=["user_id"]
        ).user_id
        assert rows == users.nunique() > 0, view
    # Views without rows in the window (never materialized, or fed only by pushes) count 0.
    idle = {NEVER_MATERIALIZED: 0.0, "health_today": 0.0}
    assert served.rows_counted == {**idle, **{v: float(n) for v, n in served.written.items()}}
    found = served.scrape()
    for view, rows in served.written.items():
        assert (
            value(found, "healthmate_materialized_rows", "healthmate_materialized_rows_total", feature_view=view)
            >= rows
        )


def test_no_user_id_or_health_value_reaches_a_label(served):
    admin, user = served.keys["admin"], served.keys["user"]
    features = served.client.get(EXTRACT, params={"user_id": 1}, headers=admin).json()["features"]
    health_values = {str(v) for v in features.values() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert len(health_values) > 5
    client = served.client
    assert client.get(EXTRACT, params={"user_id": 8675309}, headers=admin).status_code == 404  # unknown user
    assert client.get(EXTRACT, params={"user_id": 4242424242}, headers=user).status_code == 403
    assert client.get(f"{EXTRACT}/8675309", headers=admin).status_code == 404
    assert client.get(f"{PREFIX}/datasets/jobs/zzjobleakzz", headers=admin).status_code == 422  # not a job id
    assert client.get(f"{PREFIX}/datasets/versions", params={"name": "zzleakname"}, headers=admin).status_code == 200
    body = {"dataset": "zzleakds@1.0.0", "rows": [{"user_id": 8675309, "steps_mean_7d": 31337.1337}]}
    assert client.post(f"{PREFIX}/data/preprocess", json=body, headers=admin).status_code == 404
    text = client.get(f"{LOOPBACK}/metrics").text
    for token in ("8675309", "4242424242", "zzjobleakzz", "zzleakname", "zzleakds", "31337"):
        assert token not in text, token
    labels = {(k, v) for family in families(text).values() for s in family for k, v in s.labels.items()}
    by_key: dict[str, set[str]] = {}
    for k, v in labels:
        by_key.setdefault(k, set()).add(v)
    assert set(by_key) <= {"method", "route", "status", "le", "feature_view", "dataset", "source", "kind", "outcome"}
    templates = set(client.app.openapi()["paths"]) | {UNMATCHED, "/docs", "/openapi.json"}
    # the process's metrics also hold other apps' routes (the unit tier's probe app): judge ours, every
    # label under the API's prefix, which is where a raw path (with a user id) would show
    ours = {route for route in by_key["route"] if route.startswith(PREFIX) or route in templates}
    assert ours and ours <= templates
    assert all(status.isdigit() and len(status) == 3 for status in by_key["status"])
    assert all(float(bound) > 0 for bound in by_key["le"])  # histogram bucket bounds, ours
    assert not {v for k, v in labels if k != "le"} & health_values


def test_metrics_need_an_admin_key_unless_loopback_or_public(served):
    client, keys = served.client, served.keys
    url = "http://testserver/metrics"  # the connection's server address is not a loopback address
    assert client.get(url).status_code == 401
    assert client.get(url, headers=keys["user"]).status_code == 403
    assert client.get(url, headers=keys["admin"]).status_code == 200
    for base in ("http://127.0.0.1", "http://[::1]"):
        assert client.get(f"{base}/metrics").status_code == 200
    refused = AuditLog(client.app.state.ctx.sql).query(endpoint="GET /metrics", status=401, limit=10)
    assert refused and refused[0].key_id is None
    with TestClient(create_app(replace(served.settings, metrics_public=True))) as public:
        response = public.get(url)
        assert response.status_code == 200 and "healthmate_dataset_versions" in families(response.text)


def _spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outward_address() -> str | None:
    """An address of this host that is not a loopback address (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.254.254.254", 9))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            return response.status, response.read().decode()
    except HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_until_up(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "the server exited"
        try:
            if _get(url)[0] == 200:
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{url} did not answer within {timeout_s} s")


@pytest.mark.slow
def test_a_real_server_opens_metrics_on_loopback_only(served):
    """`serve --host 0.0.0.0`: a request arriving on 127.0.0.1 needs no key; one on an outward address does."""
    outward = _outward_address()
    if outward is None:
        pytest.skip("this host has no non-loopback IPv4 address to connect through")
    port = _spare_port()
    command = [str(BIN / "healthmate-features"), "serve", "--host", "0.0.0.0", "--port", str(port)]
    env = {**os.environ, **served.settings.to_env()}
    with subprocess.Popen(
        command, cwd=served.settings.repo_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            _wait_until_up(f"http://127.0.0.1:{port}/health", proc)
            status, text = _get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200
            assert value(families(text), "healthmate_metrics_source_up", source="feast_registry") == 1
            assert _get(f"http://{outward}:{port}/metrics")[0] == 401
            status, text = _get(f"http://{outward}:{port}/metrics", served.keys["admin"])
            assert status == 200 and "healthmate_feature_view_freshness_seconds" in families(text)
        finally:
            proc.terminate()
            proc.wait(30)


WORKER = """
import os, sys, time
import healthmate_features.cli  # what a worker process imports first
from healthmate_features.monitoring import metrics

assert metrics.multiprocess_dir(), "metric values are in memory"
metrics.start_metrics_server(int(sys.argv[1]))
child = os.fork()
if child == 0:  # a prefork pool's child finishes a job
    metrics.JOBS.labels("prepare_ml_datasets", "succeeded").inc()
    metrics.JOB_SECONDS.labels("prepare_ml_datasets").observe(12.5)
    os._exit(0)
os.waitpid(child, 0)
print("ready", flush=True)
time.sleep(300)
"""


def test_a_worker_metrics_port_shows_the_jobs_its_forked_children_finished(tmp_path):
    port = _spare_port()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PROMETHEUS_MULTIPROC")}
    command = [sys.executable, "-c", WORKER, str(port)]
    with subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            status, text = _get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200
            found = families(text)
            jobs = value(
                found, "healthmate_jobs", "healthmate_jobs_total", kind="prepare_ml_datasets", outcome="succeeded"
            )
            assert jobs == 1
            seconds = "healthmate_job_duration_seconds"
            assert value(found, seconds, f"{seconds}_count", kind="prepare_ml_datasets") == 1
            assert value(found, seconds, f"{seconds}_sum", kind="prepare_ml_datasets") == 12.5
            assert value(found, "process_resident_memory_bytes") > 0
            assert not [name for name in found if name.startswith("feast_")]
        finally:
            proc.terminate()
            proc.wait(30)


RULE_TESTS = """
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'healthmate_feature_view_freshness_seconds{instance="a",feature_view="fresh"}'
        values: '100000+60x30'
      - series: 'healthmate_feature_view_ttl_seconds{instance="a",feature_view="fresh"}'
        values: '172800x30'
      - series: 'healthmate_feature_view_freshness_seconds{instance="a",feature_view="stale"}'
        values: '200000+60x30'
      - series: 'healthmate_feature_view_ttl_seconds{instance="a",feature_view="stale"}'
        values: '172800x30'
      - series: 'healthmate_feature_view_freshness_seconds{instance="a",feature_view="never"}'
        values: 'Inf Inf Inf Inf Inf Inf Inf Inf Inf Inf Inf Inf Inf Inf Inf Inf Inf Inf Inf Inf Inf'
      - series: 'healthmate_feature_view_ttl_seconds{instance="a",feature_view="never"}'
        values: '172800x30'
      - series: 'healthmate_jobs_total{instance="w",kind="prepare_ml_datasets",outcome="failed"}'
        values: '0 0 1 1 1'
      - series: 'healthmate_jobs_total{instance="w",kind="prepare_ml_datasets",outcome="succeeded"}'
        values: '0 1 2 3 4'
      - series: 'healthmate_http_requests_total{instance="a",method="GET",route="/x",status="200"}'
        values: '0+100x30'
      - series: 'healthmate_http_requests_total{instance="a",method="GET",route="/x",status="503"}'
        values: '0+5x30'
      - series: 'healthmate_http_requests_total{instance="b",method="GET",route="/x",status="200"}'
        values: '0+100x30'
    alert_rule_test:
      - eval_time: 20m
        alertname: FeatureViewStale
        exp_alerts:
          - exp_labels: {severity: page, instance: a, feature_view: stale}
            exp_annotations:
              summary: "stale was last materialized longer ago than its TTL"
              description: "Check the scheduled materialization and its job failures; +Inf means never materialized."
          - exp_labels: {severity: page, instance: a, feature_view: never}
            exp_annotations:
              summary: "never was last materialized longer ago than its TTL"
              description: "Check the scheduled materialization and its job failures; +Inf means never materialized."
      - eval_time: 20m
        alertname: ApiServerErrors
        exp_alerts:
          - exp_labels: {severity: page, instance: a}
            exp_annotations:
              summary: "a: 4.762% of API requests fail with 5xx"
      - eval_time: 4m
        alertname: JobsFailing
        exp_alerts:
          - exp_labels: {severity: ticket, kind: prepare_ml_datasets}
            exp_annotations:
              summary: "1 prepare_ml_datasets job(s) failed in the last hour"
              description: "The job's error is in `GET .../jobs/{id}`; a failure after its retries needs a person."
"""


def test_readme_prometheus_config_and_alert_rules_pass_promtool(repo_root, tmp_path):
    """Prometheus's own checker on README's scrape config and rules, and the rules on made-up series:
    each fires for exactly the series it should (stale and never-materialized views, a failed job,
    4.8% of requests answering 5xx on one instance)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Prometheus's checker) is not installed; e.g. apt-get install prometheus")
    section = (repo_root / "README.md").read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    scrape, rules = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    (tmp_path / "rules.yml").write_text(rules)
    (tmp_path / "prometheus.yml").write_text('rule_files: ["rules.yml"]\n' + scrape)
    (tmp_path / "rules_test.yml").write_text(RULE_TESTS)
    for args in (["check", "config", "prometheus.yml"], ["test", "rules", "rules_test.yml"]):
        done = subprocess.run([promtool, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
