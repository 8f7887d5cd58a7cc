"""The API under load, faults and hostile input (issue 11): the key cache and revocation across
processes, group-committed audit rows durable before each response, refusals before the body is
read, the Bearer scheme, the dashboard's cache rule, and `serve --workers 2` as a real server.

Apps run in this process through their ASGI interface (httpx's ASGITransport, or a raw ASGI call
that records what the app read of the body); other processes are real `healthmate-features`
commands and a real uvicorn server on a spare loopback port.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from healthmate_features.access.keys import ApiKeys, KeyCache, Principal
from healthmate_features.api.app import PREFIX, create_app
from healthmate_features.backends import open_sql_store
from healthmate_features.errors import AuthError
from healthmate_features.monitoring import metrics
from healthmate_features.tracking import Tracker

BIN = Path(sys.executable).parent
VERSIONS = f"{PREFIX}/datasets/versions"  # any key; 200 with an empty registry
PREPROCESS = f"{PREFIX}/data/preprocess"  # admin only, with a JSON body


@pytest.fixture(params=["embedded", "production"])
def any_settings(request):
    """Settings of an empty SQL store on each profile (production: a fresh Postgres database)."""
    if request.param == "production":
        request.applymarker(pytest.mark.postgres)
        return request.getfixturevalue("postgres_settings")
    return request.getfixturevalue("sqlite_settings")


def _keys(settings) -> dict[str, str]:
    with open_sql_store(settings) as sql:
        keys = ApiKeys(sql)
        admin, user = keys.create_key("admin"), keys.create_key("user", user_id=7)
    return {"admin": admin.secret, "user": user.secret, "user_id": user.key_id}


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _audit_count(settings) -> int:
    with open_sql_store(settings) as sql:
        return int(sql.query("SELECT count(*) AS n FROM audit_log")[0]["n"])


def _cli(settings, *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "healthmate-features"), *args],
        env={**os.environ, **settings.to_env()},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


class CountingKeys(ApiKeys):
    """ApiKeys that count reads of the key table (to see the cache at work)."""

    reads = 0

    def authenticate(self, token):
        type(self).reads += 1
        return super().authenticate(token)


# -- keys ------------------------------------------------------------------------------------


def test_keys_are_read_once_and_a_revocation_by_another_process_refuses_the_next_request(any_settings):
    secrets = _keys(any_settings)
    app = create_app(any_settings)
    ctx = app.state.ctx
    ctx.key_cache.keys = CountingKeys(ctx.sql)
    CountingKeys.reads = 0
    with TestClient(app) as client:
        for _ in range(20):
            assert client.get(VERSIONS, headers=_bearer(secrets["user"])).status_code == 200
        assert CountingKeys.reads == 1  # one read of the key; then the cache while nothing changed

        out = _cli(any_settings, "keys", "revoke", secrets["user_id"])  # another process
        assert f"revoked {secrets['user_id']}" in out
        refused = client.get(VERSIONS, headers=_bearer(secrets["user"]))
        assert refused.status_code == 401 and f"API key {secrets['user_id']} was revoked" in refused.json()["detail"]
        assert client.get(VERSIONS, headers=_bearer(secrets["admin"])).status_code == 200  # others still pass

        created = json.loads(_cli(any_settings, "keys", "create", "--role", "admin", "--json"))
        assert client.get(VERSIONS, headers=_bearer(created["secret"])).status_code == 200  # a new key at once


@pytest.mark.postgres
def test_a_request_arriving_while_a_revision_read_is_in_flight_waits_for_the_next_read(postgres_settings, monkeypatch):
    """Concurrent requests share Postgres revision reads (`SqlStore.current_revisions`), but never
    one that started before they arrived: its snapshot may predate a revocation committed since.
    Here a read holds its answer (the revision before the revocation) until a request that
    arrived after the revocation committed is waiting; that request must be refused."""
    secrets = _keys(postgres_settings)

    async def scenario() -> tuple[object, object]:
        with open_sql_store(postgres_settings) as sql:
            cache = KeyCache(ApiKeys(sql))
            await cache.authenticate(secrets["user"])  # cached under the revision before the revocation
            read, answered, release = sql._read_revisions_async, asyncio.Event(), asyncio.Event()
            held = {"first": True}

            async def held_read(loop):
                result = await read(loop)  # the real query, on the real connection
                if held.pop("first", False):
                    answered.set()
                    await release.wait()
                return result

            monkeypatch.setattr(sql, "_read_revisions_async", held_read)
            early = asyncio.ensure_future(cache.authenticate(secrets["user"]))
            await answered.wait()  # that read has its answer
            with open_sql_store(postgres_settings) as other:  # another connection, as `keys revoke` is
                ApiKeys(other).revoke(secrets["user_id"])
            late = asyncio.ensure_future(cache.authenticate(secrets["user"]))
            await asyncio.sleep(0.05)  # the late request is waiting
            release.set()
            outcomes = await asyncio.gather(early, late, return_exceptions=True)
            await sql.close_async()
            return outcomes[0], outcomes[1]

    early, late = asyncio.run(scenario())
    assert isinstance(early, Principal)  # arrived before the revocation: either answer is right
    assert isinstance(late, AuthError) and "was revoked" in str(late), late


def test_a_bare_key_without_the_bearer_scheme_is_refused_and_audited(sqlite_settings):
    secrets = _keys(sqlite_settings)
    with TestClient(create_app(sqlite_settings)) as client:
        response = client.get(VERSIONS, headers={"Authorization": secrets["admin"]})
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        body = response.json()
        assert body["error"] == "unauthorized"
        assert "a bare API key was sent; send 'Authorization: Bearer <key>'" in body["detail"]
        assert secrets["admin"].split(".")[1] not in body["detail"]
        entries = client.app.state.ctx.audit.query(limit=1)
        assert [(e.endpoint, e.status, e.key_id) for e in entries] == [(f"GET {VERSIONS}", 401, None)]


# -- audit -----------------------------------------------------------------------------------


def test_concurrent_requests_each_get_an_audit_row_committed_before_their_response(any_settings):
    """200 concurrent requests (answered, refused, public): 200 rows, each on disk (read by another
    connection) by the time its response arrives, written in fewer commits than requests."""
    secrets = _keys(any_settings)
    app = create_app(any_settings)
    observer = open_sql_store(any_settings)  # another connection: sees only committed rows
    before = int(observer.query("SELECT count(*) AS n FROM audit_log")[0]["n"])
    commits = metrics.REGISTRY.get_sample_value("healthmate_audit_write_duration_seconds_count") or 0.0
    answered = 0
    shortfalls = []

    async def check(response: httpx.Response) -> None:
        nonlocal answered
        answered += 1
        rows = int(observer.query("SELECT count(*) AS n FROM audit_log")[0]["n"]) - before
        if rows < answered:
            shortfalls.append((answered, rows))

    headers = [_bearer(secrets["admin"]), _bearer(secrets["user"]), {}, {"Authorization": "Bearer nope"}]

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", event_hooks={"response": [check]}
        ) as client:
            requests = [
                client.get("/health") if i % 5 == 0 else client.get(VERSIONS, headers=headers[i % 4])
                for i in range(200)
            ]
            return [r.status_code for r in await asyncio.gather(*requests)]

    try:
        statuses = asyncio.run(main())
        after = int(observer.query("SELECT count(*) AS n FROM audit_log")[0]["n"])
    finally:
        observer.close()
        app.state.ctx.audit_writer.close()
        app.state.ctx.sql.close()
    assert sorted(set(statuses)) == [200, 401]
    assert after - before == 200 and not shortfalls, shortfalls[:5]
    batches = metrics.REGISTRY.get_sample_value("healthmate_audit_write_duration_seconds_count") - commits
    assert 1 <= batches < 200  # group commit: many rows per transaction


def test_a_request_whose_audit_row_cannot_be_written_gets_a_503_not_its_answer(sqlite_settings):
    secrets = _keys(sqlite_settings)
    with TestClient(create_app(sqlite_settings)) as client:
        ctx = client.app.state.ctx
        errors = metrics.REGISTRY.get_sample_value("healthmate_audit_write_errors_total") or 0.0
        with open_sql_store(sqlite_settings) as other:  # another process's write lock, held
            other.execute("BEGIN IMMEDIATE")
            ctx.sql._conn.execute("PRAGMA busy_timeout = 50")  # give up waiting for it quickly
            try:
                response = client.get(VERSIONS, headers=_bearer(secrets["admin"]))
            finally:
                other.execute("ROLLBACK")
        assert response.status_code == 503, response.text
        assert "audit log could not be written" in response.json()["detail"] and "versions" not in response.text
        assert metrics.REGISTRY.get_sample_value("healthmate_audit_write_errors_total") == errors + 1
        assert client.get(VERSIONS, headers=_bearer(secrets["admin"])).status_code == 200  # and recovers


def test_a_mutating_request_whose_audit_row_cannot_be_written_fails_and_the_chain_stays_whole(sqlite_settings):
    from healthmate_features.access import audit_chain

    secrets = _keys(sqlite_settings)
    with TestClient(create_app(sqlite_settings)) as client:
        ctx = client.app.state.ctx
        assert client.get(VERSIONS, headers=_bearer(secrets["admin"])).status_code == 200
        errors = metrics.REGISTRY.get_sample_value("healthmate_audit_write_errors_total") or 0.0
        with open_sql_store(sqlite_settings) as other:  # another process's write lock, held
            other.execute("BEGIN IMMEDIATE")
            ctx.sql._conn.execute("PRAGMA busy_timeout = 50")
            try:
                response = client.post(PREPROCESS, headers=_bearer(secrets["admin"]), json={"rows": []})
            finally:
                other.execute("ROLLBACK")
        assert response.status_code == 503, response.text
        assert "audit log could not be written" in response.json()["detail"]
        assert metrics.REGISTRY.get_sample_value("healthmate_audit_write_errors_total") == errors + 1
        assert client.get(VERSIONS, headers=_bearer(secrets["admin"])).status_code == 200
        result = audit_chain.verify(ctx.sql)
    assert result.ok and result.chained_rows == 2, result.problem  # the lost row left no hole


# -- hostile input: refusals before the body is read -------------------------------------------


async def _asgi(app, method: str, path: str, headers: dict[str, str], chunks: list[bytes]):
    """Call the app once over raw ASGI; (status, JSON body, number of body chunks the app read)."""
    read = 0
    sent: list[dict] = []

    async def receive():
        nonlocal read
        if read < len(chunks):
            read += 1
            return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}
        await asyncio.sleep(3600)  # no more: a client that stopped sending

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5000),
        "server": ("test", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=30)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), read


def test_the_admin_routes_are_found_from_their_dependencies():
    from healthmate_features.api.app import AdminRoutes, public, router

    found = {(sorted(r.methods)[0], r.path.removeprefix(PREFIX)) for r in AdminRoutes(public, router).routes}
    assert found == {
        ("POST", "/feature-sets/create"),
        ("POST", "/datasets/prepare"),
        ("GET", "/datasets/jobs/{job_id}"),
        ("GET", "/datasets/load-version"),
        ("POST", "/data/preprocess"),
        ("POST", "/erasures"),
        ("GET", "/erasures/verify"),
    }


def test_refusals_come_before_the_body_is_read_and_are_audited(sqlite_settings):
    settings = replace(sqlite_settings, max_request_bytes=1000)
    secrets = _keys(settings)
    app = create_app(settings)
    big = {"Content-Type": "application/json", "Content-Length": str(52_000_000)}
    admin, user = _bearer(secrets["admin"]), _bearer(secrets["user"])

    async def main():
        return [
            await _asgi(app, "POST", PREPROCESS, big, [b"{" * 1000]),  # no key
            await _asgi(app, "POST", PREPROCESS, {**big, **user}, [b"{" * 1000]),  # user key, admin route
            await _asgi(app, "POST", PREPROCESS, {**big, **admin}, [b"{" * 1000]),  # admin, too large
            await _asgi(app, "GET", VERSIONS, {**big, **user}, [b"{" * 1000]),  # user route, too large
            # no Content-Length (chunked): counted while read, refused once past the limit
            await _asgi(app, "POST", PREPROCESS, {**admin, "Content-Type": "application/json"}, [b" " * 600] * 5),
            # under the limit: read and handled
            await _asgi(
                app,
                "POST",
                PREPROCESS,
                {**admin, "Content-Type": "application/json"},
                [b'{"dataset": "nope@1.0.0", "rows": [{}]}'],
            ),
        ]

    try:
        results = asyncio.run(main())
        entries = app.state.ctx.audit.query(limit=6)[::-1]
    finally:
        app.state.ctx.audit_writer.close()
        app.state.ctx.sql.close()
    assert [(status, body["error"], read) for status, body, read in results] == [
        (401, "unauthorized", 0),
        (403, "forbidden", 0),
        (413, "too_large", 0),
        (413, "too_large", 0),
        (413, "too_large", 2),  # 1,200 bytes read of 3,000: stopped at the limit
        (404, "not_found", 1),
    ]
    assert "needs an admin key" in results[1][1]["detail"]
    assert results[2][1]["detail"] == (
        "the request body has Content-Length 52000000, over the limit of 1000 bytes (HM_MAX_REQUEST_BYTES); "
        "send a smaller body, e.g. fewer rows per request"
    )
    assert "passed 1000 bytes while read" in results[4][1]["detail"]
    assert [e.status for e in entries] == [401, 403, 413, 413, 413, 404]
    assert [e.role for e in entries] == [None, "user", "admin", "user", "admin", "admin"]


# -- the dashboard's cache ---------------------------------------------------------------------


def test_dashboard_is_cached_until_a_source_changes(tiny_applied, clone_repo, tmp_path):
    settings = clone_repo(tiny_applied, tmp_path / "repo")
    secrets = _keys(settings)
    with TestClient(create_app(settings)) as client:

        def summary() -> dict:
            response = client.get(f"{PREFIX}/dashboard/summary", headers=_bearer(secrets["user"]))
            assert response.status_code == 200, response.text
            return response.json()

        first = summary()
        assert summary()["generated_at"] == first["generated_at"]  # nothing changed: the cached figures
        assert first["counts"]["models"] == 0 and first["counts"]["datasets"] == 0
        assert not any(v["last_materialized_end"] for v in first["feature_views"])

        with open_sql_store(settings) as other:  # a model run logged by another connection
            Tracker(other).log_metrics(
                "risk",
                version="1",
                dataset="d@1.0.0",
                environment="staging",
                metrics={"auc": 0.7},
                external_dataset=True,
            )
        logged = summary()
        assert logged["counts"]["models"] == 1 and logged["generated_at"] > first["generated_at"]

        version = settings.datasets_dir / "cached_ds" / "1.0.0"  # a new dataset version appears
        version.mkdir(parents=True)
        (version / "manifest.json").write_text(json.dumps({"created_at": "2026-01-01T00:00:00+00:00"}))
        assert summary()["counts"]["dataset_versions"] == 1

        _cli(settings, "materialize")  # another process changes the Feast registry
        materialized = summary()
        assert all(v["last_materialized_end"] for v in materialized["feature_views"] if v["kind"] == "batch")
        assert summary()["generated_at"] == materialized["generated_at"]


@pytest.mark.postgres
def test_dashboard_cache_follows_feasts_sql_registry_on_production(prod, tiny):
    from healthmate_features.backends import backend_for
    from healthmate_features.features.build import build_features
    from healthmate_features.raw.ingest import ingest_raw
    from healthmate_features.stores import feature_store as store

    assert backend_for(prod).registry_stamp() is None  # no `feast apply` yet: no registry tables
    raw = tiny.write_raw(prod.repo_path / "raw")
    ingest_raw(raw, prod)
    build_features(raw, prod)
    store.apply(prod)
    stamp = backend_for(prod).registry_stamp()
    assert stamp is not None and backend_for(prod).registry_stamp() == stamp
    secrets = _keys(prod)
    with TestClient(create_app(prod)) as client:

        def summary() -> dict:
            response = client.get(f"{PREFIX}/dashboard/summary", headers=_bearer(secrets["admin"]))
            assert response.status_code == 200, response.text
            return response.json()

        first = summary()
        assert summary()["generated_at"] == first["generated_at"]
        assert not any(v["last_materialized_end"] for v in first["feature_views"])
        _cli(prod, "materialize", "--profile", "production")  # another process writes Feast's registry
        assert backend_for(prod).registry_stamp() != stamp
        materialized = summary()
        assert all(v["last_materialized_end"] for v in materialized["feature_views"] if v["kind"] == "batch")


# -- serve --workers 2 ---------------------------------------------------------------------------


def _raw_post(port: int, path: str, headers: dict[str, str], declared: int, sent: bytes) -> tuple[int, float]:
    """POST announcing `declared` body bytes but sending only `sent`; (status, seconds to the answer)."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {declared}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + sent)
        reply = sock.recv(65536).decode("latin-1")
    return int(reply.split(" ", 2)[1]), time.perf_counter() - started


def test_serve_with_two_workers(sqlite_settings, server, spare_port, tmp_path):
    settings = sqlite_settings
    secrets = _keys(settings)
    url = f"http://127.0.0.1:{spare_port}"
    env = {**os.environ, **settings.to_env()}
    for var in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR"):  # the server's own metric values
        env.pop(var, None)
    args = [str(BIN / "healthmate-features"), "serve", "--port", str(spare_port), "--workers", "2"]
    before = _audit_count(settings)
    with server(args, cwd=settings.repo_path, ready=f"{url}/health", log=tmp_path / "serve.log", env=env) as proc:
        import psutil

        assert len(psutil.Process(proc.pid).children(recursive=True)) >= 2  # the workers
        sent = 1  # the readiness probe's /health
        for _ in range(20):  # a new connection each: both workers answer some
            assert httpx.get(url + VERSIONS, headers=_bearer(secrets["user"])).status_code == 200
            sent += 1
        _cli(settings, "keys", "revoke", secrets["user_id"])
        for _ in range(20):
            assert httpx.get(url + VERSIONS, headers=_bearer(secrets["user"])).status_code == 401
            sent += 1

        status, seconds = _raw_post(spare_port, PREPROCESS, _bearer(secrets["admin"]), 52_000_000, b"{" * 1024)
        assert status == 413 and seconds < 5
        fresh = json.loads(_cli(settings, "keys", "create", "--role", "user", "--user-id", "9", "--json"))
        status, seconds = _raw_post(spare_port, PREPROCESS, _bearer(fresh["secret"]), 52_000_000, b"{" * 1024)
        assert status == 403 and seconds < 5
        sent += 2
        assert _audit_count(settings) - before >= sent  # every request's row, durable already

        scraped = httpx.get(url + "/metrics").text  # from loopback: no key needed
        sent += 1
        counted = sum(
            float(line.rsplit(" ", 1)[1])
            for line in scraped.splitlines()
            if line.startswith("healthmate_http_requests_total{") and VERSIONS in line
        )
        assert counted == 40  # both workers' requests, summed from the shared metrics directory
    assert _audit_count(settings) - before == sent
