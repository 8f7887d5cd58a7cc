"""Background jobs with real worker processes (`healthmate-features worker`) and real brokers.

Each test has its own copy of the small embedded repository (conftest `small_embedded`), so its
job rows, broker file and dataset versions are its own. Jobs go in through the HTTP API (ASGI
transport) or JobQueue and come out of a worker started as a child process: on the embedded
profile's SQLite broker, and on Redis (HM_BROKER_URL, a key prefix of the test's own).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from healthmate_features.access.keys import ApiKeys
from healthmate_features.api.app import PREFIX, create_app
from healthmate_features.backends import backend_for, open_sql_store
from healthmate_features.backends.locks import SqlLeases
from healthmate_features.cli import main
from healthmate_features.config import Settings
from healthmate_features.datasets.registry import DatasetRegistry
from healthmate_features.errors import FeatureRepoError, LockTimeoutError
from healthmate_features.jobs import JobQueue
from healthmate_features.stores import feature_store as store

pytestmark = pytest.mark.slow


@pytest.fixture
def repo(small_embedded, clone_repo, tmp_path) -> Settings:
    """A private copy of the small embedded repository, with short leases and backoffs for tests."""
    settings = clone_repo(small_embedded, tmp_path / "repo")
    return replace(settings, job_lease_s=3.0, job_retry_backoff_s=0.5)


def _config(training_config, name: str, **changes) -> dict:
    """A training-set config the small dataset can satisfy (a group split: 60 labels, 12 users)."""
    defaults = {
        "split": {"strategy": "group", "test_size": 0.3, "seed": 1},
        "preprocessing": {"numeric": {"impute": "median", "scale": "standard"}},
    }
    return training_config("health_risk", name=name, **{**defaults, **changes})


class Api:
    """The HTTP API of a repository through its ASGI transport, with an admin key. `restart()` replaces
    the app with a new instance over the same store (what restarting `serve` does)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        with open_sql_store(settings) as sql:
            created = ApiKeys(sql).create_key("admin", name="jobs-test")
        self.key_id = created.key_id
        self.headers = {"Authorization": f"Bearer {created.secret}"}
        self.client: TestClient | None = None
        self.restart()

    def restart(self) -> None:
        self.close()
        self.client = TestClient(create_app(self.settings), raise_server_exceptions=False)
        self.client.__enter__()

    def close(self) -> None:
        if self.client is not None:
            self.client.__exit__(None, None, None)
            self.client = None

    def call(self, method: str, path: str, body=None):
        assert self.client is not None
        return self.client.request(method, PREFIX + path, headers=self.headers, json=body)

    def job(self, job_id: str) -> dict:
        response = self.call("GET", f"/datasets/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, job_id: str, statuses=("succeeded", "failed", "cancelled"), timeout_s: float = 300) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            body = self.job(job_id)
            if body["status"] in statuses:
                return body
            assert time.monotonic() < deadline, f"job {job_id} still {body['status']} after {timeout_s} s: {body}"
            time.sleep(0.1)


@pytest.fixture
def api_for():
    """api_for(settings): an Api over the settings' repository, closed at the end of the test."""
    opened: list[Api] = []

    def open_api(settings: Settings) -> Api:
        opened.append(Api(settings))
        return opened[-1]

    yield open_api
    for api in opened:
        api.close()


def _tmp_dirs(settings: Settings) -> list:
    return sorted(settings.datasets_dir.glob("*/.tmp-*"))


def _cli(settings: Settings, *args: str):
    return CliRunner().invoke(main, list(args), env=settings.to_env(), catch_exceptions=False)


def test_a_job_posted_over_http_runs_on_a_worker_and_reads_the_same_after_api_restarts(
    repo, training_config, start_worker, api_for
):
    api = api_for(repo)
    accepted = api.call("POST", "/datasets/prepare", _config(training_config, "jobs_risk"))
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    assert accepted.headers["location"] == job["status_url"] and job["status"] == "queued"
    assert (job["submitted_by"], job["attempts"], job["target"]) == (api.key_id, 0, "dataset:jobs_risk")
    refused = api.call("POST", "/datasets/prepare", _config(training_config, "x", entities="missing.parquet"))
    assert refused.status_code == 422 and "missing.parquet" in refused.json()["detail"]  # validated before queueing
    # what only the data can tell passes validation and fails the job: a cutoff before every prediction time
    cutoff = {"strategy": "time", "cutoff": "2000-01-01T00:00:00Z", "label_horizon_days": 30}
    broken = api.call("POST", "/datasets/prepare", _config(training_config, "jobs_broken", split=cutoff))
    assert broken.status_code == 202, broken.text
    cancelled = api.call("POST", "/datasets/prepare", _config(training_config, "jobs_cancelled")).json()["job_id"]
    assert "cancelled job" in _cli(repo, "jobs", "cancel", cancelled).output
    api.restart()
    assert api.job(job["job_id"])["status"] == "queued"  # no worker yet: a restarted API still knows it

    port = _spare_port()
    start_worker(repo, "--metrics-port", str(port))
    running = api.wait(job["job_id"], statuses=("running", "succeeded"))
    api.restart()  # the API goes down and comes back while the job runs
    done = api.wait(job["job_id"])
    assert running["job_id"] == done["job_id"] and done["status"] == "succeeded", done
    assert (done["dataset"], done["created"], done["attempts"], done["error"]) == ("jobs_risk@1.0.0", True, 1, None)
    assert done["summary"]["train_rows"] > 0 and done["started_at"] <= done["finished_at"]
    failed = api.wait(broken.json()["job_id"])
    assert failed["status"] == "failed" and "cutoff" in failed["error"]
    assert failed["attempts"] == 1  # a configuration error fails at once, no retry
    assert api.job(cancelled)["status"] == "cancelled"

    registry = DatasetRegistry.from_settings(repo)
    assert registry.versions("jobs_risk") == ["1.0.0"] and registry.versions("jobs_cancelled") == []
    assert registry.show("jobs_risk")["metadata"]["job_id"] == job["job_id"]
    listed = json.loads(_cli(repo, "jobs", "list", "--json").output)
    assert {j["job_id"]: j["status"] for j in listed}[job["job_id"]] == "succeeded"
    assert re.search(r"^status +succeeded$", _cli(repo, "jobs", "show", job["job_id"]).output, flags=re.M)

    metrics = _scrape(port)  # the worker counted and timed each job, in Prometheus' text format
    assert metrics[("healthmate_jobs_total", (("kind", "prepare_ml_datasets"), ("outcome", "succeeded")))] == 1
    assert metrics[("healthmate_jobs_total", (("kind", "prepare_ml_datasets"), ("outcome", "failed")))] == 1
    assert metrics[("healthmate_jobs_total", (("kind", "prepare_ml_datasets"), ("outcome", "cancelled")))] == 1
    assert metrics[("healthmate_job_duration_seconds_count", (("kind", "prepare_ml_datasets"),))] == 2


def _spare_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _scrape(port: int) -> dict:
    """(name, sorted labels) -> value of every sample the metrics port serves, parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_preprocess_and_version_jobs_refit_a_version_and_verify_every_version(repo, training_config, start_worker):
    from healthmate_features.training.builder import build_and_save

    built = build_and_save(_config(training_config, "refit_risk"), repo)
    with open_sql_store(repo) as sql:
        queue = JobQueue(repo, sql)
        refit = queue.submit(
            "preprocess_ml_data",
            {"dataset": built.ref, "preprocessing": {"numeric": {"impute": "mean", "scale": "robust"}}},
        )
        start_worker(repo)
        refitted = _wait(queue, refit.job_id)
        assert refitted.status == "succeeded", refitted.error
        assert refitted.result["datasets"][0]["dataset"] == "refit_risk@1.0.1"
        manifest = DatasetRegistry.from_settings(repo).show("refit_risk", "1.0.1")
        assert manifest["bump"]["kind"] == "patch" and manifest["metadata"]["refit_from"] == "refit_risk@1.0.0"
        assert manifest["preprocessing_config"]["numeric"]["scale"] == "robust"
        assert manifest["data_hash"] != DatasetRegistry.from_settings(repo).show("refit_risk", "1.0.0")["data_hash"]

        verified = _wait(queue, queue.submit("version_ml_data").job_id)
        assert verified.status == "succeeded" and verified.result == {"checked": 2, "ok": 2, "damaged": {}}
        damaged = repo.datasets_dir / "refit_risk" / "1.0.0" / "y_test.parquet"
        os.chmod(damaged.parent, 0o755)
        os.chmod(damaged, 0o644)
        damaged.write_bytes(damaged.read_bytes() + b"x")
        failed = _wait(queue, queue.submit("version_ml_data").job_id)
        assert failed.status == "failed" and failed.attempts == 1
        assert "1 of 2 dataset version(s) failed verification, e.g. refit_risk@1.0.0" in failed.error
        assert list(failed.result["damaged"]) == ["refit_risk@1.0.0"]


def _wait(queue: JobQueue, job_id: str, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while not (job := queue.get(job_id)).finished:
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        time.sleep(0.2)
    return job


def test_the_scheduler_queues_due_entries_as_jobs(repo, tmp_path):
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text("schedules:\n  verify:\n    job: version_ml_data\n    cron: '* * * * *'\n")
    log = tmp_path / "scheduler.log"
    with log.open("wb") as out:
        scheduler = subprocess.Popen(
            [str(Path(sys.executable).parent / "healthmate-features"), "scheduler", "--schedule", str(schedule)],
            cwd=repo.repo_path,
            env={**os.environ, **repo.to_env()},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with open_sql_store(repo) as sql:
            queue = JobQueue(repo, sql)
            deadline = time.monotonic() + 150  # the entry is due at the next minute
            while not (jobs := queue.list(kind="version_ml_data")):
                assert scheduler.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.5)
        assert [(j.submitted_by, j.status, j.params) for j in jobs] == [("schedule:verify", "queued", {})]
    finally:
        os.killpg(scheduler.pid, signal.SIGTERM)
        scheduler.wait(timeout=30)
    assert (repo.data_dir / "scheduler-state").exists() or list(repo.data_dir.glob("scheduler-state*"))


def test_the_scheduler_refuses_a_bad_cron_string_before_it_starts(repo, tmp_path):
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text("schedules:\n  verify:\n    job: version_ml_data\n    cron: '0 25 * * *'\n")
    result = _cli(repo, "scheduler", "--schedule", str(schedule), "--check")
    assert (
        result.exit_code == 1 and "schedule 'verify': cron '0 25 * * *' has an invalid hour field '25'" in result.output
    )


@pytest.mark.redis
def test_a_job_completes_on_a_worker_over_the_redis_broker(repo, redis_url, training_config, start_worker, api_for):
    import redis

    url, prefix = redis_url
    settings = replace(repo, broker_url=url, redis_prefix=prefix)
    api = api_for(settings)
    job_id = api.call("POST", "/datasets/prepare", _config(training_config, "redis_risk")).json()["job_id"]
    client = redis.Redis.from_url(url)
    try:
        assert client.llen(f"{prefix}healthmate") == 1  # the message waits in Redis, under the test's prefix
        start_worker(settings)
        done = api.wait(job_id)
        assert done["status"] == "succeeded" and done["dataset"] == "redis_risk@1.0.0", done
        assert client.llen(f"{prefix}healthmate") == 0
        assert not settings.broker_path.exists()  # the SQLite broker was not used
    finally:
        client.close()


def test_a_worker_killed_mid_job_loses_nothing_and_the_job_completes_after_a_restart(
    repo, training_config, start_worker, api_for
):
    api = api_for(repo)
    job_id = api.call("POST", "/datasets/prepare", _config(training_config, "killed_risk")).json()["job_id"]
    worker = start_worker(repo, name="doomed")
    api.wait(job_id, statuses=("running",))
    worker.kill()  # SIGKILL to the worker's process group, mid-build
    after_kill = api.job(job_id)
    assert after_kill["status"] == "running" and after_kill["attempts"] == 1  # never "no such job"

    start_worker(repo, name="replacement")
    done = api.wait(job_id)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2 and done["dataset"] == "killed_risk@1.0.0" and done["error"] is None
    assert DatasetRegistry.from_settings(repo).versions("killed_risk") == ["1.0.0"]  # no second copy
    assert _tmp_dirs(repo) == []


def test_a_job_that_lost_every_attempt_is_marked_failed_with_the_reason(repo, training_config, start_worker, api_for):
    settings = replace(repo, job_max_attempts=1)
    api = api_for(settings)
    job_id = api.call("POST", "/datasets/prepare", _config(training_config, "lost_risk")).json()["job_id"]
    worker = start_worker(settings, name="doomed")
    api.wait(job_id, statuses=("running",))
    worker.kill()
    start_worker(settings, name="replacement")
    done = api.wait(job_id)
    assert done["status"] == "failed" and "stopped renewing its lease during attempt 1 of 1" in done["error"]


def test_a_save_killed_midway_leaves_a_temporary_directory_the_next_worker_removes(repo, start_worker):
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(os.getcwd())!r})
        from healthmate_features.datasets import registry as reg
        from tests.helpers.datasets import make_dataset
        write = reg._write_payload
        def write_then_stall(directory, dataset, **options):
            files = write(directory, dataset, **options)
            print("written", flush=True)
            time.sleep(600)  # killed here, between writing the files and publishing the version
            return files
        reg._write_payload = write_then_stall
        reg.DatasetRegistry({str(repo.datasets_dir)!r}).save(make_dataset(), "half_saved")
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "written"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
        child.stdout.close()
    left = _tmp_dirs(repo)
    assert len(left) == 1 and (left[0] / "X_train.parquet").exists()
    os.utime(left[0], (time.time() - 60, time.time() - 60))  # older than a save that has just begun
    worker = start_worker(repo)
    assert _tmp_dirs(repo) == [] and f"removed {left[0]}" in worker.output()
    assert DatasetRegistry.from_settings(repo).versions("half_saved") == []


def test_a_materialization_waits_while_another_holds_the_view(repo, start_worker):
    backend = backend_for(repo)
    with open_sql_store(repo) as sql:
        queue = JobQueue(repo, sql)
        with backend.lock("materialize:health_daily"):  # another materialization of health_daily is running
            job = queue.submit("extract_features_for_ml", {"raw": "raw"}, submitted_by="test")
            start_worker(repo)
            leases = SqlLeases(sql)
            deadline = time.monotonic() + 300
            while leases.holder("materialize:engagement_daily") is None:  # it took the views before health_daily
                assert time.monotonic() < deadline and queue.get(job.job_id).status in ("queued", "running")
                time.sleep(0.1)
            time.sleep(3 * repo.job_lease_s)  # longer than a lease: the job's leases are renewed, ours too
            waiting = queue.get(job.job_id)
            assert waiting.status == "running" and waiting.attempts == 1
            assert leases.holder("materialize:health_daily").split(":")[1] == str(os.getpid())
        deadline = time.monotonic() + 300
        while not queue.get(job.job_id).finished:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        done = queue.get(job.job_id)
    assert done.status == "succeeded", done.error
    assert done.result["feature_tables"]["health_daily"] > 0 and done.result["materialized_until"]
    assert (done.finished_at - done.started_at).total_seconds() > 3 * repo.job_lease_s


def test_a_transient_failure_is_retried_with_backoff(repo, training_config, start_worker, api_for):
    settings = replace(repo, lock_wait_s=1.0, job_retry_backoff_s=2.0, job_max_attempts=10)
    api = api_for(settings)
    with backend_for(settings).lock("dataset:busy_risk"):  # another build of the dataset outlasts the wait
        job_id = api.call("POST", "/datasets/prepare", _config(training_config, "busy_risk")).json()["job_id"]
        start_worker(settings)
        retrying = api.wait(job_id, statuses=("retrying", "failed"))
        assert retrying["status"] == "retrying" and "lock 'dataset:busy_risk'" in retrying["error"], retrying
    done = api.wait(job_id)
    assert done["status"] == "succeeded" and done["attempts"] >= 2 and done["error"] is None, done


def test_a_lock_whose_holder_was_killed_lapses(repo):
    script = textwrap.dedent(
        f"""
        import time
        from dataclasses import replace
        from healthmate_features.backends import backend_for
        from healthmate_features.config import Settings
        settings = replace(Settings.from_env(repo_path={str(repo.repo_path)!r}), job_lease_s=2.0)
        with backend_for(settings).lock("materialize:health_daily"):
            print("held", flush=True)
            time.sleep(600)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        time.sleep(2.5)  # past one lease: it is renewed while the holder lives
        with open_sql_store(repo) as sql:
            assert SqlLeases(sql).holder("materialize:health_daily") is not None
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
        child.stdout.close()
    started = time.monotonic()
    with backend_for(replace(repo, lock_wait_s=30)).lock("materialize:health_daily") as lease:
        assert lease.waited_s <= 2.0 + 1.0 and time.monotonic() - started < 10


@pytest.mark.redis
def test_production_locks_are_redis_keys_renewed_while_held_and_lapsing_after(redis_url, tmp_path):
    import redis

    url, prefix = redis_url
    settings = Settings.from_env(
        repo_path=tmp_path, profile="production", redis_url=url, redis_prefix=prefix, job_lease_s=0.5, lock_wait_s=0.3
    )
    backend = backend_for(settings)
    client = redis.Redis.from_url(url)
    try:
        with backend.lock("materialize:health_daily") as lease:
            time.sleep(1.2)  # more than two leases: renewed
            assert client.get(f"{prefix}lock:materialize:health_daily").decode() == lease.holder
            with pytest.raises(LockTimeoutError, match=r"lock 'materialize:health_daily' \(Redis"):
                with backend.lock("materialize:health_daily"):
                    pass
        assert client.get(f"{prefix}lock:materialize:health_daily") is None
        leases = backend.leases()
        try:
            assert leases.try_acquire("dataset:x", "dead", 0.2) and not leases.try_acquire("dataset:x", "b", 1)
            time.sleep(0.3)  # nobody renewed: the holder died
            assert leases.try_acquire("dataset:x", "b", 1) and not leases.renew("dataset:x", "dead", 1)
            leases.release("dataset:x", "dead")
            assert leases.holder("dataset:x") == "b"
        finally:
            leases.close()
    finally:
        client.close()


@pytest.mark.postgres
@pytest.mark.redis
def test_a_production_worker_runs_jobs_from_postgres_over_redis(prod, redis_url, start_worker):
    settings = replace(prod, redis_prefix=redis_url[1], job_lease_s=3.0)
    with open_sql_store(settings) as sql:
        queue = JobQueue(settings, sql)
        job = queue.submit("version_ml_data", submitted_by="test")
        assert sql.dialect == "postgres"
        start_worker(settings)
        done = _wait(queue, job.job_id)
    assert done.status == "succeeded" and done.result == {"checked": 0, "ok": 0, "damaged": {}}, done.error
    assert done.worker and done.attempts == 1


def test_a_job_the_broker_refuses_is_answered_503_and_recorded_as_failed(repo, training_config, api_for):
    api = api_for(replace(repo, broker_url="redis://127.0.0.1:1/0"))  # nothing listens on port 1
    response = api.call("POST", "/datasets/prepare", _config(training_config, "unqueued_risk"))
    assert response.status_code == 503, response.text
    assert "could not queue job" in response.json()["detail"] and "redis://" not in response.json()["detail"]
    with open_sql_store(repo) as sql:
        (job,) = JobQueue(repo, sql).list()
    assert job.status == "failed" and job.error == response.json()["detail"]
    assert api.job(job.job_id)["status"] == "failed"  # the id in the message answers


BROKEN_YAML = {  # a line of feature_store.yaml that no error text may quote
    "syntax": "registry:\n  path: data/registry.db\n  marker: [LINE-MARKER-42\nonline_store: {type: sqlite}\n",
    "feast": "online_store: {type: sqlite, path: data/online.db, marker: LINE-MARKER-42}\n",
}


def test_errors_of_a_broken_feature_store_yaml_quote_no_line_of_it_and_no_server_path(
    repo, training_config, start_worker, api_for
):
    """A failed job, a failed `feast apply` and an API error name the file relative to the
    repository and never quote its lines; the details are in the server log only."""
    api = api_for(repo)
    job_id = api.call("POST", "/datasets/prepare", _config(training_config, "broken_yaml")).json()["job_id"]
    yaml_path = repo.repo_path / "feature_store.yaml"
    original = yaml_path.read_text()

    def clean(text: str) -> None:
        assert "LINE-MARKER-42" not in text and str(repo.repo_path) not in text and "unexpected" not in text, text
        assert "feature_store.yaml" in text or "`feast apply` failed" in text, text

    yaml_path.write_text(original.replace("registry:\n", BROKEN_YAML["syntax"].split("online_store")[0], 1))
    start_worker(repo)
    done = api.wait(job_id)
    assert done["status"] == "failed" and done["attempts"] == 1, done
    clean(done["error"])
    response = api.call("POST", "/datasets/prepare", _config(training_config, "broken_yaml"))
    assert response.status_code == 503, response.text
    clean(response.json()["detail"])

    online_block = re.search(r"^online_store:\n(?:[ #].*\n)+", original, flags=re.M)
    assert online_block, original
    yaml_path.write_text(original.replace(online_block.group(0), BROKEN_YAML["feast"]))
    with pytest.raises(FeatureRepoError) as failed:
        store.apply(repo)
    clean(str(failed.value))
    with pytest.raises(FeatureRepoError) as failed:
        store.open_feature_store(repo)
    clean(str(failed.value))
