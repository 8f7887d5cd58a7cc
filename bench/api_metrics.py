"""Per-request cost of the API's request metrics (api.metrics.RequestMetricsMiddleware).

The same requests go to two apps that differ only by that middleware, in alternating rounds in
one process, and the script prints CPU microseconds of this process per request (process time,
which waiting for a shared machine's cores does not inflate as wall time would) for each, from
the fastest round and the median round, and the difference:
- the middleware's metric updates alone (in-flight up and down, one count, one latency);
- a minimal FastAPI app (one route with a path parameter), called straight through ASGI: the
  middleware's own cost, with nothing else around it;
- the real API (`create_app` on an empty embedded repository; keys, the audit log on SQLite)
  answering GET /health through httpx's ASGI transport: the cost next to a whole request.

    .venv/bin/python bench/api_metrics.py [--rounds 7] [--requests 2000] [--memory-values]

`--memory-values` imports prometheus_client before the package, so metric values stay in memory
instead of the multiprocess files the package sets up (see healthmate_features/monitoring/multiprocess.py).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

if "--memory-values" in sys.argv:
    import prometheus_client  # noqa: F401  (before the package: values in memory)


def minimal_app(with_metrics: bool):
    from fastapi import FastAPI

    from healthmate_features.api.metrics import RequestMetricsMiddleware, RouteTemplates

    app = FastAPI()

    @app.get("/things/{thing_id}")
    async def thing(thing_id: int) -> dict:
        return {"thing_id": thing_id}

    if with_metrics:
        app.add_middleware(RequestMetricsMiddleware, templates=RouteTemplates(app))
    return app


def real_app(repo: Path, with_metrics: bool):
    from healthmate_features.api.app import create_app
    from healthmate_features.api.metrics import RequestMetricsMiddleware
    from healthmate_features.config import Settings

    (repo / "feature_store.yaml").write_text("project: bench\n")  # /health reads no registry
    app = create_app(Settings(repo_path=repo))
    if not with_metrics:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not RequestMetricsMiddleware]
    return app


async def asgi_round(app, n: int) -> float:
    """CPU seconds per request for n GETs straight through ASGI."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    started = time.process_time()
    for i in range(n):
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": f"/things/{i}",
            "raw_path": f"/things/{i}".encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        await app(scope, receive, send)
    elapsed = time.process_time() - started
    assert sent[0]["status"] == 200 and len(sent) == 2 * n
    return elapsed / n


async def http_round(client, n: int) -> float:
    """CPU seconds per request for n GET /health through httpx's ASGI transport (audit writes in threads included)."""
    started = time.process_time()
    for _ in range(n):
        response = await client.get("/health")
        assert response.status_code == 200
    return (time.process_time() - started) / n


def updates_round(n: int) -> float:
    """CPU seconds per request for the metric updates the middleware makes (label lookups cached, as it does)."""
    from healthmate_features.monitoring import metrics

    count = metrics.HTTP_REQUESTS.labels("GET", "/bench/{id}", "200")
    seconds = metrics.HTTP_SECONDS.labels("GET", "/bench/{id}")
    started = time.process_time()
    for _ in range(n):
        metrics.HTTP_IN_FLIGHT.inc()
        metrics.HTTP_IN_FLIGHT.dec()
        count.inc()
        seconds.observe(0.003)
    return (time.process_time() - started) / n


async def measure(args) -> None:
    import httpx

    print(f"{args.rounds} rounds; CPU microseconds per request: fastest round, median of the rounds")
    updates = [updates_round(args.requests * 5) * 1e6 for _ in range(args.rounds)]
    print(f"metric updates alone: {min(updates):.1f} us, median {statistics.median(updates):.1f} us")
    apps = {label: minimal_app(label == "with") for label in ("without", "with")}
    times: dict[str, list[float]] = {label: [] for label in apps}
    for app in apps.values():  # warm up: build the middleware stack, first label lookups
        await asgi_round(app, 50)
    for _ in range(args.rounds):
        for label, app in apps.items():
            times[label].append(await asgi_round(app, args.requests) * 1e6)
    report("minimal app, straight ASGI", times)

    with tempfile.TemporaryDirectory() as tmp:
        clients, times = {}, {label: [] for label in ("without", "with")}
        for label in times:
            repo = Path(tmp) / label
            repo.mkdir()
            app = real_app(repo, label == "with")
            clients[label] = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")
            await http_round(clients[label], 20)
        n = max(args.requests // 10, 50)
        for _ in range(args.rounds):
            for label, client in clients.items():
                times[label].append(await http_round(client, n) * 1e6)
        for client in clients.values():
            await client.aclose()
        report("real API, GET /health through httpx (keys, audit on SQLite)", times)


def report(what: str, times: dict[str, list[float]]) -> None:
    print(f"{what}:")
    for label, values in times.items():
        print(f"  {label:>7} metrics: {min(values):8.1f} us, median {statistics.median(values):8.1f} us")
    for stat in (min, statistics.median):
        without, with_ = stat(times["without"]), stat(times["with"])
        name = "fastest" if stat is min else "median"
        print(
            f"  middleware cost ({name}): {with_ - without:+.1f} us per request ({(with_ / without - 1) * 100:+.1f}%)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=2000, help="requests per round (the real API: a tenth)")
    parser.add_argument("--memory-values", action="store_true", help="prometheus_client values in memory")
    args = parser.parse_args()
    from healthmate_features.monitoring import metrics

    mode = f"files in {metrics.multiprocess_dir()}" if metrics.multiprocess_dir() else "in memory"
    print(f"metric values: {mode}")
    asyncio.run(measure(args))


if __name__ == "__main__":
    main()
