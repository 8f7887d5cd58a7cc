"""Request metrics of the HTTP API, and who may read /metrics without a key.

RequestMetricsMiddleware counts, times and gauges every HTTP request by method, route template
(`/api/v1/ml-data-preparation/datasets/jobs/{job_id}`, never the raw path or query, where user
ids appear) and status code. The metrics are defined in `monitoring.metrics`.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI
from starlette.routing import compile_path

from healthmate_features.config import Settings
from healthmate_features.monitoring.metrics import HTTP_IN_FLIGHT, HTTP_REQUESTS, HTTP_SECONDS

METRICS_PATH = "/metrics"
UNMATCHED = "/{unmatched}"  # the route label of a path no route matches (a 404): never the path itself
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def metrics_open(settings: Settings, scope: Mapping[str, Any]) -> bool:
    """True when /metrics answers this request without a key.

    Either HM_METRICS_PUBLIC is on, or the request arrived on a loopback address (the ASGI
    `server` of the connection: every request to a server bound to 127.0.0.1 or ::1, and a
    request that a client on the same host sends to 127.0.0.1 of a server bound to all addresses).
    """
    if settings.metrics_public:
        return True
    server = scope.get("server")
    try:
        address = ipaddress.ip_address(server[0]) if server else None
    except ValueError:  # a host name (test transports) or a Unix socket path
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address is not None and address.is_loopback


class RouteTemplates:
    """The route template a request matched (`/api/.../datasets/jobs/{job_id}`), never its raw path.

    After routing, the matched route is in the scope; a request refused before routing (401) is
    matched against the app's documented paths and `extra` (the docs pages), compiled on first
    use (the routes are complete once requests arrive). UNMATCHED when none matches (a 404)."""

    def __init__(self, app: FastAPI, *, extra: Iterable[str] = ()) -> None:
        self.app, self.extra = app, sorted(extra)
        self._compiled: list[tuple[Any, str]] | None = None

    def of(self, scope: Mapping[str, Any]) -> str:
        template = getattr(scope.get("route"), "path", None)
        if isinstance(template, str):
            return template
        if self._compiled is None:
            paths = dict.fromkeys([*self.app.openapi()["paths"], *self.extra])
            self._compiled = [(compile_path(path)[0], path) for path in paths]
        path = scope.get("path", "")
        return next((t for pattern, t in self._compiled if pattern.match(path)), UNMATCHED)


class RequestMetricsMiddleware:
    """Counts (healthmate_http_requests_total), times (healthmate_http_request_duration_seconds, to
    the end of the response body) and gauges in flight (healthmate_http_requests_in_flight) every
    HTTP request. Add it last, so it is the outermost middleware and sees refused requests too."""

    def __init__(self, app: Any, *, templates: RouteTemplates) -> None:
        self.app, self.templates = app, templates
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}  # label lookups, once per series

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        outcome = [500, 0.0]  # status, end of the response body

        async def send_and_record(message) -> None:
            if message["type"] == "http.response.start":
                outcome[0] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                outcome[1] = time.perf_counter()
            await send(message)

        HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            HTTP_IN_FLIGHT.dec()
            status, ended = outcome
            count, seconds = self._series(scope, int(status))
            count.inc()
            seconds.observe((ended or time.perf_counter()) - started)

    def _series(self, scope, status: int) -> tuple[Any, Any]:
        method = scope.get("method", "")
        method = method if method in _METHODS else "OTHER"
        key = (method, self.templates.of(scope), status)
        found = self._children.get(key)
        if found is None:
            found = (HTTP_REQUESTS.labels(method, key[1], str(status)), HTTP_SECONDS.labels(method, key[1]))
            self._children[key] = found
        return found
