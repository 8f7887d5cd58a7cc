"""Metrics without servers: the request middleware on a small real FastAPI app, the /metrics access
rule and its setting, the audit-write metrics, values counted in forked children, the metrics port's
errors, and README's metric table and Prometheus YAML against the code."""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import socket

import httpx
import pytest
import yaml
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from healthmate_features.access.audit import AuditLog
from healthmate_features.api.metrics import UNMATCHED, RequestMetricsMiddleware, RouteTemplates, metrics_open
from healthmate_features.backends import open_sql_store
from healthmate_features.config import Settings
from healthmate_features.errors import AuditError, ConfigError
from healthmate_features.monitoring import metrics


def sample(name: str, **labels: str) -> float:
    """This process's value of one sample of the package's metrics (0 when the series does not exist yet)."""
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def families(text: str) -> dict[str, list]:
    """Samples by family name, parsed with prometheus_client's own parser."""
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def get_all(app: FastAPI, paths: list[str]) -> list[int]:
    """GET each path through the ASGI transport (server 127.0.0.1); the status codes."""

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return [(await client.get(path)).status_code for path in paths]

    return asyncio.run(run())


# -- the request middleware ------------------------------------------------------------------


@pytest.fixture
def small_app() -> FastAPI:
    app = FastAPI()

    @app.get("/things/{thing_id}")
    def thing(thing_id: int) -> dict:
        return {"thing_id": thing_id}

    @app.get("/boom")
    def boom() -> dict:
        raise RuntimeError("unexpected")

    app.add_middleware(RequestMetricsMiddleware, templates=RouteTemplates(app))
    return app


def test_requests_are_labelled_by_route_template_never_by_path(small_app):
    route = "/things/{thing_id}"
    before = {
        status: sample("healthmate_http_requests_total", method="GET", route=route, status=status)
        for status in ("200", "422")
    }
    seconds_before = sample("healthmate_http_request_duration_seconds_count", method="GET", route=route)
    unmatched_before = sample("healthmate_http_requests_total", method="GET", route=UNMATCHED, status="404")
    errors_before = sample("healthmate_http_requests_total", method="GET", route="/boom", status="500")
    paths = [f"/things/{thing_id}?secret=5551234" for thing_id in (8675309, 8675310, 8675311)]
    paths += ["/things/not-a-number", "/nothing/8675309", "/boom"]
    assert get_all(small_app, paths) == [200, 200, 200, 422, 404, 500]
    assert sample("healthmate_http_requests_total", method="GET", route=route, status="200") == before["200"] + 3
    assert sample("healthmate_http_requests_total", method="GET", route=route, status="422") == before["422"] + 1
    assert sample("healthmate_http_request_duration_seconds_count", method="GET", route=route) == seconds_before + 4
    assert sample("healthmate_http_requests_total", method="GET", route=UNMATCHED, status="404") == unmatched_before + 1
    assert sample("healthmate_http_requests_total", method="GET", route="/boom", status="500") == errors_before + 1
    assert sample("healthmate_http_requests_in_flight") == 0
    text = metrics.render(metrics.scrape_registry())[0].decode()
    assert "8675309" not in text and "5551234" not in text and "not-a-number" not in text


def test_in_flight_counts_requests_being_handled():
    seen = []
    app = FastAPI()

    @app.get("/wait")
    async def wait() -> dict:
        seen.append(sample("healthmate_http_requests_in_flight"))
        return {}

    app.add_middleware(RequestMetricsMiddleware, templates=RouteTemplates(app))
    assert get_all(app, ["/wait"]) == [200]
    assert seen == [1.0] and sample("healthmate_http_requests_in_flight") == 0


# -- who may read /metrics -------------------------------------------------------------------


@pytest.mark.parametrize(
    "server, is_open",
    [
        (("127.0.0.1", 8000), True),
        (("127.8.9.10", 8000), True),
        (("::1", 8000), True),
        (("::ffff:127.0.0.1", 8000), True),
        (("192.0.2.2", 8000), False),
        (("fd00::2", 8000), False),
        (("0.0.0.0", 8000), False),
        (("testserver", 80), False),
        (("/run/healthmate.sock", None), False),
        (None, False),
    ],
)
def test_metrics_are_open_on_loopback_or_with_the_setting(tmp_path, server, is_open):
    scope = {"type": "http", "server": server}
    assert metrics_open(Settings(repo_path=tmp_path), scope) is is_open
    assert metrics_open(Settings(repo_path=tmp_path, metrics_public=True), scope) is True


def test_hm_metrics_public_is_an_on_off_setting(tmp_path, monkeypatch):
    for value, expected in (("1", True), ("true", True), ("ON", True), ("yes", True), ("0", False), ("off", False)):
        monkeypatch.setenv("HM_METRICS_PUBLIC", value)
        assert Settings.from_env(repo_path=tmp_path).metrics_public is expected
    monkeypatch.setenv("HM_METRICS_PUBLIC", "maybe")
    with pytest.raises(ConfigError, match=r"HM_METRICS_PUBLIC='maybe' is not on or off; use 1/true/yes/on"):
        Settings.from_env(repo_path=tmp_path)
    settings = Settings(repo_path=tmp_path.resolve(), metrics_public=True)
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert Settings.from_env() == settings


# -- audit writes ----------------------------------------------------------------------------


def test_audit_writes_are_timed_and_failures_counted(sqlite_settings):
    with open_sql_store(sqlite_settings) as sql:
        audit = AuditLog(sql)
        count, errors = (
            sample("healthmate_audit_write_duration_seconds_count"),
            sample("healthmate_audit_write_errors_total"),
        )
        audit.write(endpoint="GET /health", status=200, latency_ms=1.0)
        assert sample("healthmate_audit_write_duration_seconds_count") == count + 1
        assert sample("healthmate_audit_write_errors_total") == errors
        with pytest.raises(AuditError):
            audit.write(endpoint="GET /health?user_id=5", status=200, latency_ms=1.0)
        assert sample("healthmate_audit_write_errors_total") == errors + 1
        assert sample("healthmate_audit_write_duration_seconds_count") == count + 2


# -- processes -------------------------------------------------------------------------------


def _finish_jobs_in_child() -> None:
    metrics.JOBS.labels("unit_forked", "succeeded").inc(3)
    metrics.JOB_SECONDS.labels("unit_forked").observe(4.0)


def test_an_exposition_sums_what_forked_children_counted():
    """A Celery prefork worker runs tasks in forked children: their job counts reach the parent's exposition."""
    assert metrics.multiprocess_dir(), "metric values are in memory: prometheus_client was imported before metrics"
    child = multiprocessing.get_context("fork").Process(target=_finish_jobs_in_child)
    child.start()
    child.join(30)
    assert child.exitcode == 0
    found = families(metrics.render(metrics.scrape_registry())[0].decode())
    jobs = [s for s in found["healthmate_jobs"] if s.labels.get("kind") == "unit_forked"]
    assert [(s.name, s.labels["outcome"], s.value) for s in jobs] == [("healthmate_jobs_total", "succeeded", 3.0)]
    seconds = {s.name: s.value for s in found["healthmate_job_duration_seconds"] if s.labels["kind"] == "unit_forked"}
    assert seconds["healthmate_job_duration_seconds_count"] == 1 and seconds["healthmate_job_duration_seconds_sum"] == 4
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= {
        s.name for name in ("process_cpu_seconds", "process_resident_memory_bytes") for s in found[name]
    }
    assert not [name for name in found if name.startswith("feast_")], "Feast's metrics are not ours to show"


def test_the_metrics_port_says_when_it_cannot_listen():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"cannot serve metrics on 127\.0\.0\.1:{port}: .*choose another"):
            metrics.start_metrics_server(port)


# -- README ----------------------------------------------------------------------------------


def test_readme_lists_the_metrics_we_export_and_its_prometheus_yaml_uses_them(repo_root):
    section = (repo_root / "README.md").read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(healthmate_[a-z_]+)`", section, flags=re.M))
    source = (repo_root / "healthmate_features" / "monitoring" / "metrics.py").read_text()
    assert listed == set(re.findall(r'"(healthmate_[a-z_]+)"', source))
    scrape, rules = (yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section, flags=re.S))
    assert [job["job_name"] for job in scrape["scrape_configs"]] == ["healthmate-api", "healthmate-worker"]
    exprs = {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}
    assert set(exprs) == {"FeatureViewStale", "JobsFailing", "ApiServerErrors"}
    used = {name for expr in exprs.values() for name in re.findall(r"healthmate_[a-z_]+", expr)}
    assert used and used <= listed
