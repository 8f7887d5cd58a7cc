"""Built repositories for the integration tier: each kind is built once per test run.

Session-scoped repositories are shared read-only; a test (or module) that changes one takes its
own copy (`clone_repo`), or a fresh production setup (`prod`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from healthmate_features.config import Settings
from healthmate_features.features.build import build_features
from healthmate_features.raw.ingest import ingest_raw

from ..helpers import repos, servers
from ..helpers import tiny as tiny_data

BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def feast_apply():
    """feast_apply(repo): run the real `feast apply` CLI in a repository; return its output."""
    return repos.feast_apply


@pytest.fixture(scope="session")
def feast_cli():
    """feast_cli(repo, *args, env=None): run the real `feast` CLI in a repository; its output (no colours)."""
    return repos.feast_cli


@pytest.fixture(scope="session")
def server():
    """server(args, cwd=, ready=URL, log=PATH, env=None): a context manager that starts a server process,
    waits until GET URL answers, yields the process and stops it (tests/helpers/servers.py)."""
    return servers.running


@pytest.fixture
def spare_port() -> int:
    """A free TCP port on 127.0.0.1 for a server this test starts."""
    return servers.spare_port()


@pytest.fixture(scope="session")
def clone_repo():
    """clone_repo(settings, dest): Settings of a private copy of a built embedded repository."""

    def clone(settings: Settings, dest: Path) -> Settings:
        return replace(settings, repo_path=repos.clone(settings.repo_path, dest))

    return clone


@pytest.fixture(scope="session")
def tiny_applied(tiny_built, tmp_path_factory) -> Settings:
    """The tiny dataset built and applied with the real `feast apply` (shared: read it, never change it)."""
    settings = replace(tiny_built, repo_path=repos.clone(tiny_built.repo_path, tmp_path_factory.mktemp("tiny") / "r"))
    repos.feast_apply(settings.repo_path)
    return settings


@pytest.fixture(scope="session")
def generated_repo(tmp_path_factory) -> Settings:
    """250 generated users x 240 days, ingested, built and applied (shared: tests that change it clone it)."""
    return repos.build_generated(tmp_path_factory.mktemp("generated"), users=250, days=240, seed=3)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[Settings, str, str]:
    """`healthmate-features demo --quiet --json` (as `make demo`: 500 users x 270 days, seed 7) run in
    a repository copy with configs/: (its Settings, stdout, stderr). Shared: read it, never change
    it (`clone_repo`)."""
    return repos.build_demo(tmp_path_factory.mktemp("demo") / "repo")


def _drop_redis_project(url: str, project: str) -> None:
    """Delete a Feast project's Redis hashes (Feast keys end with the project name)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"*{project}", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _production_repo(repo: Path, dsn: str, redis_url: str, project: str) -> Settings:
    """Production Settings for a repository copy whose Feast project (its Redis key suffix) is `project`."""
    from ..helpers.settings import settings_for_dsn

    yaml_path = repo / "feature_store.production.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("project: healthmate", f"project: {project}"))
    return replace(settings_for_dsn(dsn, repo), redis_url=redis_url, redis_prefix=f"{project}:")  # locks, queue


def _production_env(settings: Settings) -> dict[str, str]:
    """The environment a child process needs to use these production settings."""
    return {**os.environ, **settings.to_env()}


def _plain_feast_apply(settings: Settings) -> None:
    """The documented path for Feast's own CLI: export the settings, then `feast -f ... apply`."""
    env = _production_env(settings)
    exports = subprocess.run(
        [str(BIN / "healthmate-features"), "env"], env=env, capture_output=True, text=True, timeout=300, check=True
    ).stdout
    script = f'{exports}\n"{BIN / "feast"}" -f feature_store.production.yaml apply'
    done = subprocess.run(
        ["bash", "-c", script], cwd=settings.repo_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def prod(tmp_path, pg_dsn, redis_url, monkeypatch) -> Settings:
    """Production Settings for a repo copy: a fresh database, a project name of its own in Redis; nothing loaded."""
    url, prefix = redis_url
    project = prefix.rstrip(":")
    settings = _production_repo(repos.copy_repo(tmp_path / "repo"), pg_dsn, url, project)
    monkeypatch.chdir(settings.repo_path)
    yield settings
    from healthmate_features.stores import feature_store as store

    store.forget_online_reader(settings)
    _drop_redis_project(url, project)


@pytest.fixture(scope="session")
def small_production(tmp_path_factory, small, fresh_postgres_database, fresh_redis_prefix) -> Settings:
    """The small dataset on the production profile: ingested into Postgres, built, applied through the
    documented `healthmate-features env` + `feast -f feature_store.production.yaml apply` path, and
    materialized into Redis. Shared by the whole run: read it, never change it."""
    from healthmate_features.stores import feature_store as store

    with fresh_postgres_database() as dsn, fresh_redis_prefix() as (url, prefix):
        project = prefix.rstrip(":")
        repo = repos.copy_repo(tmp_path_factory.mktemp("small_production") / "repo")
        settings = _production_repo(repo, dsn, url, project)
        raw = tiny_data.write_raw(repo / "raw", small.raw_tables())
        try:
            ingest_raw(raw, settings)
            build_features(raw, settings)
            _plain_feast_apply(settings)
            store.materialize(settings)
            yield settings
        finally:
            store.forget_online_reader(settings)
            _drop_redis_project(url, project)


@pytest.fixture(scope="session")
def small_embedded(tmp_path_factory, small) -> Settings:
    """The small dataset on the embedded profile: ingested, built, applied and materialized (read-only)."""
    from healthmate_features.raw.ingest import ingest
    from healthmate_features.stores import feature_store as store

    repo = repos.copy_repo(tmp_path_factory.mktemp("small_embedded") / "repo")
    settings = Settings(repo_path=repo)
    raw = tiny_data.write_raw(repo / "raw", small.raw_tables())
    ingest(raw, settings.ingested_dir)
    build_features(raw, settings)
    store.apply(settings)
    store.materialize(settings)
    return settings


# -- worker processes ------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """A `healthmate-features worker` child process (its own process group) and its log file."""

    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker's whole process group (what an OOM kill or `docker kill` does)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 60) -> None:
        """SIGTERM (a warm shutdown: the running job finishes), then SIGKILL after `timeout_s`."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()


def _without_metrics_dir(env) -> dict[str, str]:
    """`env` without prometheus_client's multiprocess directory (monitoring.multiprocess.DIR_VARIABLES)."""
    from healthmate_features.monitoring.multiprocess import DIR_VARIABLES

    return {k: v for k, v in env.items() if k not in DIR_VARIABLES}


def _launch_worker(settings: Settings, log: Path, *args: str, timeout_s: float = 180) -> WorkerProcess:
    """A real `healthmate-features worker` for the settings (extra `args`), in the repository, ready to take jobs."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "healthmate-features"), "worker", "--loglevel", "INFO", *args],
            cwd=settings.repo_path,
            # its own metric values, as a worker started from a shell has (this test process's
            # multiprocess directory would also hold every other worker's counts of the session)
            env={**_without_metrics_dir(os.environ), **settings.to_env()},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = WorkerProcess(process, log)
    deadline = time.monotonic() + timeout_s
    while " ready." not in worker.output():
        if process.poll() is not None or time.monotonic() > deadline:
            worker.kill()
            pytest.fail(f"the worker did not start (exit {process.poll()}):\n{worker.output()[-3000:]}")
        time.sleep(0.2)
    return worker


@pytest.fixture(scope="session")
def launch_worker():
    """launch_worker(settings, log_path): a started worker process; the caller stops it (`.stop()`)."""
    return _launch_worker


@pytest.fixture
def start_worker(tmp_path):
    """start_worker(settings, *args, name="worker"): a real `healthmate-features worker` for the settings, in
    the repository, ready to take jobs; every worker started is stopped at the end of the test."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, *args: str, name: str = "worker") -> WorkerProcess:
        worker = _launch_worker(settings, tmp_path / f"{name}-{len(started)}.log", *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(timeout_s=30)
