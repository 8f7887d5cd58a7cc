"""Fault isolation of the online path on the production profile, against a Redis server of its own.

The module starts its own `redis-server` on a spare loopback port (never the shared 6379), so it
can hang it (SIGSTOP) and flush it; a fresh Postgres database holds the raw and feature tables,
Feast's registry and the SQL store; the tiny dataset is loaded, built, applied and materialized
once. The API runs as a real server (`healthmate-features serve`), as in production.

- a hung Redis fails online lookups within the lookup deadline (503 naming HM_ONLINE_DEADLINE_S)
  and never delays /health, datasets/versions or models/performance;
- a materialization against a hung Redis fails within a bounded time, naming Redis and the limit;
- a Redis restarted empty is reported as lost data (503, dashboard), until materialize runs again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from healthmate_features.access.keys import ApiKeys
from healthmate_features.backends import open_sql_store
from healthmate_features.config import Settings
from healthmate_features.errors import OnlineStoreLostError, ServiceUnavailableError
from healthmate_features.features.build import build_features
from healthmate_features.raw.ingest import ingest_raw
from healthmate_features.stores import feature_store as store
from healthmate_features.tracking import Tracker

from ..helpers import repos, servers
from ..helpers.settings import settings_for_dsn

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]
BIN = Path(sys.executable).parent
PREFIX = "/api/v1/ml-data-preparation"
USER = 1


@dataclass
class OwnRedis:
    """A redis-server this module started: its URL, and hang/resume/flush."""

    proc: subprocess.Popen
    url: str

    def hang(self) -> None:
        """SIGSTOP: the kernel still accepts connections, the server never answers."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def flushall(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=5)
        try:
            client.flushall()
        finally:
            client.close()


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory) -> Iterator[OwnRedis]:
    """A redis-server on a spare loopback port, no persistence; resumed and stopped at the end."""
    import redis

    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    port = servers.spare_port()
    workdir = tmp_path_factory.mktemp("own_redis")
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis.from_url(url, socket_timeout=1).ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("the test's own redis-server did not start") from None
                time.sleep(0.1)
        yield OwnRedis(proc, url)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=15)


@pytest.fixture(scope="module")
def prod_own_redis(tmp_path_factory, tiny, fresh_postgres_database, own_redis) -> Iterator[Settings]:
    """The tiny dataset on the production profile (fresh database, the module's own Redis), materialized;
    a model result logged."""
    with fresh_postgres_database() as dsn:
        repo = repos.copy_repo(tmp_path_factory.mktemp("faults") / "repo")
        settings = replace(settings_for_dsn(dsn, repo), redis_url=own_redis.url, redis_prefix="faults:")
        raw = tiny.write_raw(repo / "raw")
        ingest_raw(raw, settings)
        build_features(raw, settings)
        store.apply(settings)
        store.materialize(settings)
        with open_sql_store(settings) as sql:
            Tracker(sql).log_metrics(
                "risk", version="1.0", dataset="health_risk@1.0.0", environment="staging", metrics={"auc": 0.7}
            )
        try:
            yield settings
        finally:
            store.forget_online_reader(settings)


@pytest.fixture(scope="module")
def api(prod_own_redis, tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:
    """`healthmate-features serve` on a spare port for those settings (default deadline and concurrency);
    (base URL, admin headers)."""
    settings = prod_own_redis
    with open_sql_store(settings) as sql:
        secret = ApiKeys(sql).create_key("admin", name="faults-admin").secret
    port = servers.spare_port()
    env = {**os.environ, **settings.to_env()}
    for name in ("HM_ONLINE_DEADLINE_S", "HM_ONLINE_MAX_CONCURRENT"):
        env.pop(name)  # the defaults, as a user gets them
    base = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("faults_api") / "serve.log"
    with servers.running(
        [str(BIN / "healthmate-features"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=settings.repo_path,
        ready=f"{base}/health",
        log=log,
        env=env,
    ):
        yield base, {"Authorization": f"Bearer {secret}"}


def _extract(base: str, headers: dict[str, str], **params: str) -> httpx.Response:
    return httpx.get(
        f"{base}{PREFIX}/features/extract", params={"user_id": USER, **params}, headers=headers, timeout=60
    )


async def _timed(client: httpx.AsyncClient, url: str, **kwargs) -> tuple[int, float, str]:
    started = time.monotonic()
    response = await client.get(url, **kwargs)
    return response.status_code, time.monotonic() - started, response.text


# All features: the lookup on a limiter thread. A feature service: once its plan is resolved, through
# the reader's asyncio Redis client on the event loop (OnlineReader.fetch_async).
@pytest.mark.parametrize("service", [{}, {"feature_service": "health_risk_v1"}], ids=["all-features", "service"])
def test_a_hung_redis_answers_503_within_the_deadline_and_never_delays_other_endpoints(api, own_redis, service):
    base, headers = api
    assert _extract(base, headers, **service).status_code == 200  # opens the online store while Redis answers
    others = {
        "health": f"{base}/health",
        "datasets/versions": f"{base}{PREFIX}/datasets/versions",
        "models/performance": f"{base}{PREFIX}/models/performance?model=risk",
    }

    async def scenario():
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as client:
            lookups = [
                asyncio.ensure_future(
                    _timed(client, f"{base}{PREFIX}/features/extract", params={"user_id": USER, **service})
                )
                for _ in range(60)
            ]
            await asyncio.sleep(0.3)  # the lookups hold every slot and wait on Redis
            timed = {name: await _timed(client, url) for name, url in others.items()}
            return await asyncio.gather(*lookups), timed

    own_redis.hang()
    try:
        lookups, timed = asyncio.run(scenario())
    finally:
        own_redis.resume()
    for name, (status, elapsed, text) in timed.items():
        assert status == 200 and elapsed < 2, (name, status, elapsed, text)
    statuses = sorted({status for status, _, _ in lookups})
    assert statuses == [503], statuses
    slowest = max(elapsed for _, elapsed, _ in lookups)
    assert slowest < 5, slowest  # 0.5 s deadline; generous for a loaded machine
    details = {text for _, _, text in lookups}
    assert all("0.5 s (HM_ONLINE_DEADLINE_S" in d for d in details), details
    print(
        f"\n60 lookups on a hung Redis: slowest {slowest:.2f} s; others: "
        + ", ".join(f"{n} {e:.3f} s" for n, (_, e, _) in timed.items())
    )

    deadline = time.monotonic() + 10  # resumed: lookups answer again (the reader's client reconnects)
    while (response := _extract(base, headers, **service)).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert response.status_code == 200, response.text


def test_the_pipelined_connection_selects_its_database_and_fails_every_waiting_caller_on_a_hung_redis(
    own_redis, tmp_path
):
    """`redis.PipelinedConnection`, the API's online lookups' connection: the URL's database, an
    error reply raised to its caller only, and on a hung Redis every caller waiting fails once the
    first one's deadline passes (their replies would come later still); resumed, it reconnects."""
    import redis as redis_py

    from healthmate_features.backends import redis

    url = own_redis.url.rsplit("/", 1)[0] + "/3"
    redis_py.Redis.from_url(url).set("hm_pipe:probe", "in db 3")
    settings = Settings.from_env(repo_path=tmp_path, redis_url=url)
    get = redis.resp_command(b"GET", 1, redis.resp_arguments(b"hm_pipe:probe"))
    wrong = redis.resp_command(b"HGET", 2, redis.resp_arguments(b"hm_pipe:probe", b"field"))  # WRONGTYPE

    async def scenario():
        connection = redis.PipelinedConnection(settings, timeout_s=0.5)
        try:
            answers = await asyncio.gather(*(connection.send(get, 1) for _ in range(20)))
            with pytest.raises(redis_py.exceptions.ResponseError, match="WRONGTYPE"):
                await connection.send(wrong, 1)
            assert await connection.send(get, 1) == [b"in db 3"]  # the same connection goes on

            own_redis.hang()
            try:
                started = time.monotonic()
                hung = await asyncio.gather(*(connection.send(get, 1) for _ in range(10)), return_exceptions=True)
                waited = time.monotonic() - started
            finally:
                own_redis.resume()
            again = await connection.send(get, 1)
            return answers, hung, waited, again
        finally:
            await connection.close()

    answers, hung, waited, again = asyncio.run(scenario())
    assert answers == [[b"in db 3"]] * 20
    assert all(isinstance(e, redis_py.exceptions.TimeoutError) for e in hung), hung
    assert 0.4 < waited < 3, waited
    assert again == [b"in db 3"]
    with pytest.raises(ServiceUnavailableError, match=r"did not answer within 0\.5 s \(HM_ONLINE_DEADLINE_S\)"):
        with redis.answered_within(settings, timeout_s=0.5, setting="HM_ONLINE_DEADLINE_S"):
            raise hung[0]


def test_materialize_against_a_hung_redis_fails_within_a_bounded_time(prod_own_redis, own_redis):
    settings = replace(prod_own_redis, redis_timeout_s=2.0, connect_timeout_s=2.0)
    hung = threading.Event()

    def hang_after_the_first_batch(view: str, rows: int) -> None:
        if not hung.is_set():  # Redis stops answering in the middle of the run
            hung.set()
            own_redis.hang()

    started = time.monotonic()
    try:
        with pytest.raises(ServiceUnavailableError) as caught:
            store.materialize(settings, written=hang_after_the_first_batch)
        elapsed = time.monotonic() - started
    finally:
        own_redis.resume()
    message = str(caught.value)
    assert f"Redis at 127.0.0.1:{own_redis.url.rsplit(':', 1)[1]} (HM_REDIS_URL)" in message, message
    assert "within 2 s (HM_REDIS_TIMEOUT_S)" in message, message
    assert elapsed < 30, elapsed
    print(f"\nmaterialize on a Redis hung mid-run failed after {elapsed:.1f} s: {message[:160]}")
    store.materialize(prod_own_redis)  # the next run completes


def test_a_redis_restarted_empty_is_lost_data_until_materialize_runs_again(api, own_redis, prod_own_redis):
    base, headers = api
    settings = prod_own_redis
    dashboard = f"{base}{PREFIX}/dashboard/summary"
    before = httpx.get(dashboard, headers=headers, timeout=60).json()
    assert before["online_data_lost"] == []
    assert {v["online_data"] for v in before["feature_views"] if v["kind"] == "batch"} == {"present"}
    assert _extract(base, headers).status_code == 200

    own_redis.flushall()  # what a restart without persistence leaves
    response = _extract(base, headers)
    assert response.status_code == 503, response.text
    detail = response.json()["detail"]
    assert detail.startswith("online store lost its data; re-run materialize"), detail
    assert "healthmate-features materialize --profile production" in detail, detail
    with pytest.raises(OnlineStoreLostError, match="online store lost its data"):
        store.online_features(settings, USER)

    lost = httpx.get(dashboard, headers=headers, timeout=60).json()
    batch = [v for v in lost["feature_views"] if v["kind"] == "batch"]
    assert lost["online_data_lost"] == sorted(v["name"] for v in batch)
    assert all(v["online_data"] == "lost" and v["last_materialized_end"] is None for v in batch), batch
    assert lost["oldest_materialization_end"] is None
    metrics = httpx.get(f"{base}/metrics", timeout=60).text  # loopback: no key needed
    assert 'healthmate_feature_view_freshness_seconds{feature_view="health_daily"} +Inf' in metrics, metrics
    assert 'healthmate_metrics_source_up{source="online_markers"} 1.0' in metrics, metrics

    result = store.materialize(settings, incremental=True)  # the registry says current; Redis lost it: reloaded
    assert all(v.ran for v in result.views), result.summary()
    assert _extract(base, headers).status_code == 200
    after = httpx.get(dashboard, headers=headers, timeout=60).json()
    assert after["online_data_lost"] == [] and after["oldest_materialization_end"] is not None
