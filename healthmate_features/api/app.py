"""The HTTP API: feature sets, online features, training sets, preprocessing, model performance
and a dashboard under /api/v1/ml-data-preparation/, plus /health and /metrics. Build it with `create_app`.

A thin edge (STYLE 1): handlers parse, call the library and format. Every request except
/health, the OpenAPI schema and the docs page with its files (`docs`) needs `Authorization:
Bearer <key>` (auth.ApiKeys); /metrics needs an admin key unless it is open
(`api.metrics.metrics_open`: HM_METRICS_PUBLIC, or a request that arrived on a loopback address).
Every request is counted and timed in the Prometheus metrics (`api.metrics.RequestMetricsMiddleware`),
and every request, refused ones included, is written to the audit log before its response starts
(`AuthAuditMiddleware`): time, key id, role, endpoint (method and route template), target
(`kind:id`), status and latency, never feature values. Keys, roles and the body size
(HM_MAX_REQUEST_BYTES) are checked before a body is read. Library
errors become JSON `{"error": kind, "detail": message}` with the status code ERROR_STATUS gives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import json
import logging
import re
import time
from collections.abc import Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import TypeAdapter
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from healthmate_features.access.audit import TARGET_PATTERN, AuditLog, AuditWriter
from healthmate_features.access.audit_chain import Checkpoints
from healthmate_features.access.keys import ApiKeys, KeyCache, Principal, bearer_token, page_token
from healthmate_features.api import dashboard, docs, online_limit
from healthmate_features.api.metrics import METRICS_PATH, RequestMetricsMiddleware, RouteTemplates, metrics_open
from healthmate_features.api.models import (
    DATASET_REF_PATTERN,
    JOB_ID_PATTERN,
    DashboardSummary,
    DatasetManifest,
    DatasetVersions,
    DriftResult,
    Environment,
    ErasureRequest,
    ErasureResponse,
    ErasureScan,
    ErrorBody,
    EventsPush,
    EventsPushed,
    FeatureSetCreate,
    FeatureSetCreated,
    FreshnessResult,
    Health,
    JobInfo,
    OnlineFeatures,
    Performance,
    PreprocessRequest,
    PreprocessResponse,
    Split,
)
from healthmate_features.api.preprocess import DatasetCache, transform_records
from healthmate_features.backends import open_sql_store
from healthmate_features.backends.sqlstore import SqlStore
from healthmate_features.config import Settings
from healthmate_features.datasets.ref import DatasetRef
from healthmate_features.errors import (
    AuditError,
    AuthError,
    ConflictError,
    EncryptionKeyError,
    FeatureRepoError,
    HealthmateError,
    NotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
    StoreError,
)
from healthmate_features.features import feature_sets, pushed
from healthmate_features.governance.exports import export_key, pseudonymize_parquet
from healthmate_features.jobs import Job, JobQueue
from healthmate_features.monitoring import metrics as monitoring
from healthmate_features.monitoring.served_log import close_served_log, served_log_for
from healthmate_features.stores import feature_store as store
from healthmate_features.tracking import Tracker
from healthmate_features.training import builder as training
from healthmate_features.util.jsonable import to_jsonable

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

PREFIX = "/api/v1/ml-data-preparation"
DASHBOARD_PATH = "/dashboard"  # the HTML page; a browser may send the key as a Basic password
PUBLIC_PATHS = frozenset({"/health", "/openapi.json", *docs.PUBLIC_PATHS})
PARQUET = "application/vnd.apache.parquet"
MAX_INT64 = 2**63 - 1
log = logging.getLogger(__name__)

#: The one mapping from library errors to HTTP: the first matching class wins.
ERROR_STATUS: tuple[tuple[type[HealthmateError], int, str], ...] = (
    (AuthError, 401, "unauthorized"),
    (PermissionDeniedError, 403, "forbidden"),
    (NotFoundError, 404, "not_found"),
    (ConflictError, 409, "conflict"),
    (ServiceUnavailableError, 503, "service_unavailable"),
    (StoreError, 503, "service_unavailable"),
    (FeatureRepoError, 503, "service_unavailable"),  # registry missing or `feast apply` failing
    (EncryptionKeyError, 503, "service_unavailable"),  # a key missing or wrong: the detail goes to the log only
    (AuditError, 500, "internal_error"),
    (HealthmateError, 422, "invalid_request"),  # config, entity frame, preprocessing, tracking, dataset, key
)
_HTTP_KINDS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 403, 422)}


@dataclasses.dataclass
class ApiContext:
    """What one app holds: its settings, the SQL store and the services over it, jobs, datasets,
    and what its /metrics shows."""

    settings: Settings
    sql: SqlStore
    tracker: Tracker
    keys: ApiKeys
    audit: AuditLog
    jobs: JobQueue
    datasets: DatasetCache
    metrics: CollectorRegistry
    key_cache: KeyCache
    audit_writer: AuditWriter
    dashboard: dashboard.SummaryCache
    freeze_heap: bool = False  # a server process's app (`create_app_from_env`): see `_freeze_heap`


# -- errors ----------------------------------------------------------------------------------


def error_response(status: int, kind: str, detail: str) -> JSONResponse:
    """The JSON error body every failure uses."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": kind, "detail": detail}, status_code=status, headers=headers)


def response_for(exc: HealthmateError) -> JSONResponse:
    """The response for a library error, by ERROR_STATUS."""
    status, kind = next((s, k) for cls, s, k in ERROR_STATUS if isinstance(exc, cls))
    if status >= 500 and status != 503:
        log.error("internal error: %s", exc)
        return error_response(status, kind, "internal error; the server log has the details")
    if isinstance(exc, EncryptionKeyError):  # names key ids and places: for operators, not for callers
        log.error("encryption key error: %s", exc)
        return error_response(status, kind, "stored data cannot be decrypted; the server log has the details")
    return error_response(status, kind, str(exc))


# Starlette types every handler as (Request, Exception); each is registered for one class only.
async def _healthmate_error(request: Request, exc: Exception) -> JSONResponse:
    return response_for(cast(HealthmateError, exc))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    errors = cast(RequestValidationError, exc).errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "bad_request", "the request body is not valid JSON")
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors[:10]]
    return error_response(422, "invalid_request", "; ".join(parts) + (" ..." if len(errors) > 10 else ""))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    http = cast(StarletteHTTPException, exc)
    return error_response(http.status_code, _HTTP_KINDS.get(http.status_code, "error"), str(http.detail))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal error; the server log has the details")


# -- authentication and audit ----------------------------------------------------------------


class RequestTooLarge(StarletteHTTPException):
    """A request body passed the size limit while it was read (answered 413)."""


class AuthAuditMiddleware:
    """Authenticates, authorizes and size-checks every request before its body is read, and
    audit-logs every request, refused ones too, durably before its response starts.

    In order, before routing: a missing or bad key is answered 401 (a bare key without the
    `Bearer ` scheme too); a user key on an admin route (`AdminRoutes`) 403; a Content-Length
    over HM_MAX_REQUEST_BYTES 413; none of them reads the body. A body without a Content-Length
    is counted while the handler reads it and answered 413 once it passes the limit. The
    Principal of a good key is put in `request.state.principal`; handlers name what a request is
    about with `_target`. The response's start is held until the request's audit row is committed
    (`AuditWriter`, a group commit); if it cannot be, the response is replaced by a 503."""

    def __init__(self, app, *, ctx: ApiContext, templates: RouteTemplates, admin: AdminRoutes) -> None:
        self.app, self.ctx, self.templates, self.admin = app, ctx, templates, admin
        self.limit = ctx.settings.max_request_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        progress = {"audited": False, "withheld": False, "started": False}

        async def audit(status: int) -> bool:
            progress["audited"] = True
            return await self._audit(scope, state, status, (time.perf_counter() - started) * 1000)

        async def send_audited(message) -> None:
            if progress["withheld"]:
                return
            if message["type"] == "http.response.start":
                if not progress["audited"] and not await audit(message["status"]):
                    progress["withheld"] = True
                    await _audit_unavailable()(scope, receive, send)
                    return
                progress["started"] = True
            await send(message)

        try:
            refusal = await self._refusal(scope, state)
            if refusal is not None:
                await refusal(scope, receive, send_audited)
                return
            await self.app(scope, self._limited(receive), send_audited)
        except RequestTooLarge as exc:  # read outside FastAPI's body parsing
            if progress["started"] or progress["withheld"]:
                raise
            await error_response(413, "too_large", str(exc.detail))(scope, receive, send_audited)
        finally:
            if not progress["audited"]:  # no response from the app (it raised): the 500 follows
                await audit(500)

    async def _refusal(self, scope, state: dict) -> Response | None:
        """The 401, 403 or 413 a request gets before its body is read, or None."""
        if self._needs_key(scope):
            page = scope["path"] == DASHBOARD_PATH
            try:
                token = (page_token if page else bearer_token)(_header(scope, b"authorization"))
                principal = await self.ctx.key_cache.authenticate(token)
            except HealthmateError as exc:  # AuthError; or the key store is unreachable
                refused = response_for(exc)
                if page and refused.status_code == 401:  # a browser then asks for the key itself
                    refused.headers["WWW-Authenticate"] = 'Basic realm="HealthMate dashboard", charset="UTF-8"'
                return refused
            state["principal"] = principal
            if not principal.is_admin and self.admin.matches(scope):
                return response_for(_needs_admin(principal))
        length = _header(scope, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.limit:
            return error_response(413, "too_large", self._too_large(f"has Content-Length {int(length)}"))
        return None

    def _limited(self, receive):
        """`receive` that counts the body and raises RequestTooLarge when it passes the limit."""
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise RequestTooLarge(413, self._too_large(f"passed {self.limit} bytes while read"))
            return message

        return limited

    def _too_large(self, what: str) -> str:
        return (
            f"the request body {what}, over the limit of {self.limit} bytes (HM_MAX_REQUEST_BYTES); "
            "send a smaller body, e.g. fewer rows per request"
        )

    def _needs_key(self, scope) -> bool:
        if scope["path"] == METRICS_PATH:
            return not metrics_open(self.ctx.settings, scope)
        return scope["path"] not in PUBLIC_PATHS

    async def _audit(self, scope, state: dict, status: int, latency_ms: float) -> bool:
        """Write the request's audit row and wait until it is committed; False (logged, counted) if it cannot be."""
        principal = state.get("principal")
        try:
            await self.ctx.audit_writer.write(
                endpoint=_endpoint(self.templates, scope),
                status=status,
                latency_ms=latency_ms,
                key_id=principal.key_id if principal else None,
                role=principal.role if principal else None,
                target=state.get("audit_target"),
            )
            return True
        except Exception:  # counted in AUDIT_WRITE_ERRORS by the writer
            log.exception("could not write the audit entry for %s", scope.get("path"))
            return False


def _audit_unavailable() -> JSONResponse:
    return error_response(
        503,
        "service_unavailable",
        "the audit log could not be written, so the response is withheld; try again (the server log has the details)",
    )


class AdminRoutes:
    """The routes that need an admin key: those of `routers` whose dependencies include `admin_only`.

    The middleware asks before routing, so that a user key is refused (403) before the body of
    such a request is read; a new admin endpoint is found by its `Admin` dependency alone."""

    def __init__(self, *routers: APIRouter) -> None:
        self.routes = [
            route
            for each in routers
            for route in each.routes
            if isinstance(route, APIRoute) and _calls(route.dependant, admin_only)
        ]
        self._seen: dict[tuple[Any, str], bool] = {}  # (method, path) -> matches: the routes never change

    def matches(self, scope) -> bool:
        key = (scope.get("method"), scope["path"])
        found = self._seen.get(key)
        if found is None:
            found = any(route.matches(scope)[0] == Match.FULL for route in self.routes)
            if len(self._seen) >= 4096:  # paths that carry ids (jobs, versions) come and go
                self._seen.clear()
            self._seen[key] = found
        return found


def _calls(dependant: Any, function: Any) -> bool:
    return dependant.call is function or any(_calls(d, function) for d in dependant.dependencies)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


def _endpoint(templates: RouteTemplates, scope) -> str:
    """Method and route template (`GET /api/.../jobs/{job_id}`), never the raw URL's values."""
    method = scope.get("method", "")
    template = templates.of(scope)
    return f"{method} {template}" if method in _METHODS else template


def _target(request: Request, kind: str, value: object) -> None:
    """Name what the request is about in its audit entry, e.g. user:42 (ids only, never values)."""
    target = f"{kind}:{value}"
    request.state.audit_target = target if TARGET_PATTERN.match(target) else f"{kind}:invalid"


bearer = HTTPBearer(auto_error=False, description="An API key from `healthmate-features keys create`.")


async def authenticated(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """The caller, authenticated by AuthAuditMiddleware."""
    return _principal(request)


def _principal(request: Request) -> Principal:
    found = getattr(request.state, "principal", None)
    if found is None:
        raise AuthError("missing API key; send 'Authorization: Bearer <key>'")
    return found


def _needs_admin(caller: Principal) -> PermissionDeniedError:
    return PermissionDeniedError(f"this endpoint needs an admin key; key {caller.key_id} has role {caller.role!r}")


async def admin_only(caller: Annotated[Principal, Depends(authenticated)]) -> Principal:
    """The caller, if an admin; PermissionDeniedError (403) for a user key (AuthAuditMiddleware
    refuses it before the body is read; this is the handler's own check)."""
    if not caller.is_admin:
        raise _needs_admin(caller)
    return caller


async def context(request: Request) -> ApiContext:
    """The app's ApiContext."""
    return request.app.state.ctx


Caller = Annotated[Principal, Depends(authenticated)]
Admin = Annotated[Principal, Depends(admin_only)]
Ctx = Annotated[ApiContext, Depends(context)]


def plain_query_route(plain: Callable[[bytes], dict[str, Any] | None]) -> type[APIRoute]:
    """An APIRoute class whose requests skip FastAPI's per-request resolution and validation when
    `plain(query_string)` is sure of the endpoint's arguments (it returns them, else None).

    Such a request calls the endpoint with the Request and those arguments; any other, a bad one
    included, is handled by FastAPI as on any route, so every error is FastAPI's own (422). For
    an endpoint whose only parameters are the Request and its query's (a route with dependencies
    always goes through FastAPI). The OpenAPI schema comes from the signature, as for any route."""

    class PlainQueryRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            full = super().get_route_handler()
            endpoint = self.endpoint
            if self.dependant.dependencies or not asyncio.iscoroutinefunction(endpoint):
                return full

            async def handler(request: Request) -> Response:
                arguments = plain(request.scope["query_string"])
                if arguments is None:
                    return await full(request)
                return cast(Response, await endpoint(request, **arguments))

            return handler

    return PlainQueryRoute


# -- endpoints -------------------------------------------------------------------------------

public = APIRouter()
router = APIRouter(prefix=PREFIX, responses=_ERRORS)


@public.get("/health", response_model=Health, tags=["health"], summary="Liveness (no key needed)")
async def health(ctx: Ctx) -> Health:
    """Answers 200 while the process is up."""
    return Health(version=_version(), profile=ctx.settings.profile)


@functools.cache
def _version() -> str:
    """The installed package's version, read once per process: importlib.metadata scans the
    installed distributions on every call (~0.35 ms), which /health paid on every request."""
    return package_version("healthmate-features")


@public.get(
    METRICS_PATH,
    response_class=PlainTextResponse,
    tags=["monitoring"],
    summary="Prometheus metrics (admin; no key from loopback or with HM_METRICS_PUBLIC)",
    dependencies=[Depends(bearer)],
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format (OpenMetrics if asked)."},
        **_ERRORS,
    },
)
def metrics_text(request: Request, ctx: Ctx) -> Response:
    """Request, audit, job and materialization metrics, feature view freshness, dataset versions,
    process CPU and memory, in Prometheus text format; README "Metrics" says what each means.

    Needs an admin key, unless HM_METRICS_PUBLIC is on or the request arrived on a loopback
    address (a server bound to 127.0.0.1). Labels never hold user ids or feature values."""
    if not metrics_open(ctx.settings, request.scope):
        caller = _principal(request)
        if not caller.is_admin:
            raise _needs_admin(caller)
    body, content_type = monitoring.render(ctx.metrics, request.headers.get("accept"))
    return Response(body, media_type=content_type)


@public.get(
    DASHBOARD_PATH,
    response_class=HTMLResponse,
    tags=["dashboard"],
    summary="The dashboard page (HTML; the key as Bearer, or as the password of Basic in a browser)",
    dependencies=[Depends(bearer)],
    responses={200: {"content": {"text/html": {}}, "description": "One self-contained HTML page."}, **_ERRORS},
)
def dashboard_page(
    request: Request,
    ctx: Ctx,
    caller: Caller,
    dataset: Annotated[
        str | None, Query(max_length=200, pattern=DATASET_REF_PATTERN, description="Show drift for NAME@VERSION.")
    ] = None,
    compare: Annotated[str | None, Query(max_length=200, description="Diff this version of it with it.")] = None,
    since: Annotated[str, Query(max_length=16, description="Drift window: 30m, 12h, 7d or 2w.")] = "7d",
) -> HTMLResponse:
    """Feature views and freshness, dataset versions with their lineage and a diff of two, drift
    of recent features for a version, model metrics over time: charts inline, no script, no
    other host. A user key sees aggregates without the per-feature distributions."""
    from healthmate_features.pictures import page

    if dataset:
        _target(request, "dataset", dataset)
    pair = None
    if dataset and compare:
        pair = (compare.strip(), DatasetRef.parse(dataset).version)
    data = page.collect(
        ctx.settings,
        tracker=ctx.tracker,
        registry=ctx.datasets.registry,
        fs=ctx.dashboard.feature_store(),
        dataset=dataset,
        compare=pair,
        since=since,
        distributions=caller.is_admin,
    )
    return HTMLResponse(page.render(data, form_action=DASHBOARD_PATH))


# The busiest endpoint first: the router tries its routes in order.
async def extract_features(
    request: Request,
    user_id: Annotated[int, Query(ge=1, le=MAX_INT64, description="The user to look up.")],
    feature_service: Annotated[str | None, Query(max_length=200, description="Only this feature service.")] = None,
) -> Response:
    """The latest feature values of one user from the online store (all features, or a service's).

    A user key may read only its own user id (403 otherwise); admin keys any. A user the online
    store holds no row of any feature view for is 404 (never a 200 with every value null); a
    known user's missing values are nulls. 503 past the lookup deadline or when every lookup slot
    stays busy (api.online_limit: other endpoints never wait for lookups), or when the online
    store lost what was materialized."""
    ctx: ApiContext = request.app.state.ctx
    caller = _principal(request)
    _target(request, "user", user_id)
    if not caller.may_access_user(user_id):
        raise PermissionDeniedError(f"key {caller.key_id} may read only its own user's features")
    at = datetime.now(timezone.utc)
    lookups = online_limit.limiter_for(ctx.settings)
    reader = store.ready_reader(ctx.settings, feature_service) if feature_service else None
    if reader is not None and feature_service:  # its plan resolved: no registry I/O, no thread
        if reader.reads_in_place:  # SQLite in WAL mode waits for no lock
            fetched = reader.fetch([user_id], feature_service=feature_service)
        else:  # Redis through its asyncio client, under the lookup slots and deadline
            fetched = await lookups.run_async(reader.fetch_async, [user_id], feature_service=feature_service)
        pending = store.fetched_lookup(ctx.settings, fetched, at)
    else:
        # Only the blocking part (registry, online store reads) on the limiter's threads; decoding and the
        # on-demand views here, on the event loop: CPU work on other threads would hold the GIL the loop waits for.
        pending = await lookups.run(store.online_fetch, ctx.settings, [user_id], feature_service=feature_service, at=at)
    values = store.one_user(store.online_finish(pending), user_id)
    if reader is None and ctx.freeze_heap and not _FROZE_READER:
        _freeze_heap(collect=False, after_first_lookup=True)
    if feature_service:  # the service's LoggingConfig (Feast's feature logging; feast serve logs nothing)
        served_log_for(ctx.settings).record(feature_service, user_id, values, at)
    # Encoded here as FastAPI encodes an OnlineFeatures (response_model: the schema), without validating it again.
    body = {"user_id": user_id, "feature_service": feature_service, "at": _JSON_TIME.dump_python(at, mode="json")}
    body["features"] = _json_safe(values)
    return Response(_json_bytes(body), media_type="application/json")


_USER_ID = re.compile(r"[1-9][0-9]{0,18}")


def _extract_query(query: bytes) -> dict[str, Any] | None:
    """features/extract's query arguments when they are plainly valid: one `user_id` of plain
    digits from 1 to 2^63-1, at most one `feature_service` of at most 200 characters, nothing else
    (decoded as Starlette decodes a query). None for anything else: FastAPI then decides, with its 422s."""
    user_id: int | None = None
    feature_service: str | None = None
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name == "user_id" and user_id is None and _USER_ID.fullmatch(value):
            user_id = int(value)
        elif name == "feature_service" and feature_service is None and len(value) <= 200:
            feature_service = value
        else:
            return None
    if user_id is None or user_id > MAX_INT64:
        return None
    return {"user_id": user_id, "feature_service": feature_service}


router.add_api_route(
    "/features/extract",
    extract_features,
    methods=["GET"],
    response_model=OnlineFeatures,
    tags=["features"],
    summary="One user's online features",
    responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    # The busiest endpoint takes its context and caller from the request rather than as
    # dependencies (each costs FastAPI a resolution per request); the key is still documented.
    openapi_extra={"security": [{"HTTPBearer": []}]},
    route_class_override=plain_query_route(_extract_query),
)


@router.post(
    "/feature-sets/create",
    status_code=201,
    response_model=FeatureSetCreated,
    tags=["feature sets"],
    summary="Define a feature set (admin)",
    responses={409: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
def create_feature_set(body: FeatureSetCreate, request: Request, ctx: Ctx, _: Admin) -> FeatureSetCreated:
    """Define a Feast feature service from features in the registry, apply it, and keep it.

    Every reference is checked against the registry (422 naming an unknown view or feature).
    The definition is written to feature_repo/feature_sets.json, so the next `feast apply` keeps
    it. An existing name is refused (409) unless it was created here and `overwrite` is true."""
    _target(request, "feature_set", body.name)
    spec, refs, replaced = feature_sets.create(
        ctx.settings, body.name, body.features, description=body.description, overwrite=body.overwrite
    )
    return FeatureSetCreated(name=spec.name, features=refs, description=spec.description, replaced=replaced)


@router.post(
    "/erasures",
    response_model=ErasureResponse,
    tags=["governance"],
    summary="Erase one user from every store (admin)",
    responses={409: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
def erase(body: ErasureRequest, request: Request, ctx: Ctx, caller: Admin) -> ErasureResponse:
    """`healthmate-features erase --user-id N`: every store, dataset versions redacted, a certificate.

    Safe to repeat (a second call removes nothing: status "already erased"). The audit entry names
    the erasure (`erasure:<id>`), not the user id."""
    from healthmate_features.governance import erase_user

    result = erase_user(body.user_id, ctx.settings, reason=body.reason, actor=f"api:{caller.key_id}")
    _target(request, "erasure", result.erasure_id)
    return ErasureResponse(**result.to_dict())


@router.get(
    "/erasures/verify",
    response_model=ErasureScan,
    tags=["governance"],
    summary="Scan every store for one user's rows (admin)",
    responses={503: {"model": ErrorBody}},
)
def verify_erasure(
    ctx: Ctx, _: Admin, user_id: Annotated[int, Query(ge=0, le=MAX_INT64, description="The user id.")]
) -> ErasureScan:
    """`healthmate-features erase --verify --user-id N`: what remains where (clean: nothing)."""
    from healthmate_features.governance import scan_user

    return ErasureScan(**scan_user(user_id, ctx.settings).to_dict())


@router.post(
    "/events",
    response_model=EventsPushed,
    tags=["features"],
    summary="Push readings to the online and offline stores",
    responses={503: {"model": ErrorBody}},
)
def push_events(body: EventsPush, request: Request, ctx: Ctx, caller: Caller) -> EventsPushed:
    """Push readings (heart rate now, steps so far today) through Feast's push source
    `health_readings_push`: a user's latest reading is in its online features (view
    `health_today`, `GET features/extract`) at once, and every reading is appended to the offline
    store, so the next training frame sees it.

    A user key may push only its own user id (403 otherwise, nothing written); admin keys any.
    Invalid readings are 422 naming the first bad one and how many there are (a value outside
    ingest's range, a time without a zone, more than a day old or 5 minutes ahead); nothing is
    written then. The audit entry names the user (`user:<id>`) or, for several, the push source."""
    users = sorted({r.user_id for r in body.readings})
    _target(request, *(("user", users[0]) if len(users) == 1 else ("push_source", pushed.PUSH_SOURCE)))
    denied = [u for u in users if not caller.may_access_user(u)]
    if denied:
        raise PermissionDeniedError(
            f"key {caller.key_id} may push only its own user's readings; {len(denied)} of "
            f"{len(body.readings)} readings are for other users"
        )
    count = pushed.push_readings(ctx.settings, [r.model_dump() for r in body.readings])
    return EventsPushed(pushed=count, push_source=pushed.PUSH_SOURCE, feature_view=pushed.TODAY_VIEW)


@router.post(
    "/datasets/prepare",
    status_code=202,
    response_model=JobInfo,
    tags=["datasets"],
    summary="Build and version a training set in the background (admin)",
    responses={503: {"model": ErrorBody}},
)
def prepare_dataset(
    body: training.TrainingSetConfig, request: Request, response: Response, ctx: Ctx, caller: Admin
) -> JobInfo:
    """Validate a training-set config and queue its build; poll the returned job.

    The config is checked now, with the builder's own checks, and nothing is queued unless it
    passes: 422 for an invalid config, a missing entity file, an entity file without user_id,
    event_timestamp or the label column, or an unregistered feature service. Then the job is
    recorded and queued for a worker (`healthmate-features worker`), which builds it and saves a
    new dataset version unless nothing changed; what only the data can tell (e.g. a split with an
    empty side) fails the job. `GET datasets/jobs/{job_id}` reports its progress and result,
    across restarts of the API and of workers. 503 when the job queue (broker) is unreachable."""
    _target(request, "dataset", body.name)
    config = training.TrainingSetConfig.from_dict(body.to_dict())  # the checks pydantic cannot express
    training.check_sources(config, ctx.settings, within=ctx.settings.repo_path)
    job = ctx.jobs.submit("prepare_ml_datasets", {"config": config.to_dict()}, submitted_by=caller.key_id, checked=True)
    info = _job_info(job)
    response.headers["Location"] = info.status_url
    return info


@router.get(
    "/datasets/jobs/{job_id}",
    response_model=JobInfo,
    tags=["datasets"],
    summary="Status of a background job (admin)",
    responses={404: {"model": ErrorBody}},
)
def dataset_job(job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN)], request: Request, ctx: Ctx, _: Admin) -> JobInfo:
    """queued, running, retrying, succeeded (with name@version and a summary), failed (with the
    error) or cancelled; read from the SQL store, so it survives restarts."""
    _target(request, "job", job_id)
    return _job_info(ctx.jobs.get(job_id))


@router.get("/datasets/versions", response_model=DatasetVersions, tags=["datasets"], summary="List dataset versions")
def dataset_versions(
    request: Request,
    ctx: Ctx,
    _: Caller,
    name: Annotated[str | None, Query(max_length=128, description="Only this dataset.")] = None,
) -> DatasetVersions:
    """Every version of every dataset (or of one): created time, parent, bump, rows, hash."""
    if name is not None:
        _target(request, "dataset", name)
    return DatasetVersions.model_validate({"versions": training.registry(ctx.settings).list(name)})


@router.get(
    "/datasets/load-version",
    response_model=DatasetManifest,
    tags=["datasets"],
    summary="A dataset version's manifest, or one split as Parquet (admin)",
    responses={
        200: {"content": {PARQUET: {}}, "description": "The manifest (JSON), or with `download` the split."},
        404: {"model": ErrorBody},
    },
)
def load_dataset_version(
    request: Request,
    ctx: Ctx,
    _: Admin,
    name: Annotated[str, Query(max_length=128, description="Dataset name.")],
    version: Annotated[str | None, Query(max_length=40, description="MAJOR.MINOR.PATCH; default latest.")] = None,
    download: Annotated[Split | None, Query(description="Stream this split as Parquet instead.")] = None,
    pseudonymize: Annotated[
        bool, Query(description="With `download`: user_id as a keyed hash (HM_EXPORT_KEY), direct identifiers dropped.")
    ] = False,
) -> Any:
    """The manifest of a version (latest by default); with `download`, that split's Parquet file.

    A downloaded split is checked against the manifest's SHA-256 before it is sent; with
    `pseudonymize` it is sent pseudonymized (governance.exports; 422 when HM_EXPORT_KEY is unset)."""
    _target(request, "dataset", f"{name}@{version}" if version else name)
    registry = training.registry(ctx.settings)
    version = version or registry.latest(name)
    _target(request, "dataset", f"{name}@{version}")
    if download:
        data = registry.read_split(name, version, download)
        if pseudonymize:
            data = pseudonymize_parquet(data, export_key(ctx.settings))
        disposition = f'attachment; filename="{name}-{version}-{download}.parquet"'
        return Response(data, media_type=PARQUET, headers={"Content-Disposition": disposition})
    return DatasetManifest(dataset=f"{name}@{version}", manifest=_json_safe(registry.show(name, version)))


@router.post(
    "/data/preprocess",
    response_model=PreprocessResponse,
    tags=["datasets"],
    summary="Transform rows with a dataset version's fitted pipeline (admin)",
    responses={404: {"model": ErrorBody}},
)
def preprocess(body: PreprocessRequest, request: Request, ctx: Ctx, _: Admin) -> PreprocessResponse:
    """Apply the preprocessing fitted on a version's training split to new rows (serving time).

    Rows hold the joined columns (user_id, event_timestamp and the features; not the label);
    values are cast to their training dtypes. Returns the rows with the output feature names."""
    _target(request, "dataset", body.dataset)
    out = transform_records(ctx.datasets.get(body.dataset), body.rows)
    rows = _json_safe(out.to_dict(orient="records"))
    return PreprocessResponse(dataset=body.dataset, feature_names=[str(c) for c in out.columns], rows=rows)


@router.get(
    "/models/performance",
    response_model=Performance,
    tags=["models"],
    summary="Model metric history or comparison",
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
)
def model_performance(
    request: Request,
    ctx: Ctx,
    _: Caller,
    model: Annotated[str, Query(max_length=128, description="Model name.")],
    versions: Annotated[str | None, Query(max_length=1000, description="Comma-separated versions: 2+ compare.")] = None,
    metric: Annotated[str | None, Query(max_length=64, description="Only this metric.")] = None,
    environment: Annotated[Environment | None, Query(description="Only this environment.")] = None,
    dataset: Annotated[str | None, Query(max_length=200, description="Compare on this NAME@VERSION only.")] = None,
    allow_mixed_datasets: Annotated[bool, Query(description="Compare across dataset versions anyway.")] = False,
) -> Performance:
    """A model's metric history (oldest first); with two or more `versions`, their comparison.

    Comparing versions evaluated on different dataset versions is refused (409) unless
    `allow_mixed_datasets=true`."""
    _target(request, "model", model)
    result = ctx.tracker.performance(
        model,
        versions=(versions or "").split(","),
        metric=metric,
        environment=environment,
        dataset=dataset,
        allow_mixed_datasets=allow_mixed_datasets,
    )
    return Performance.model_validate(result)


@router.get("/dashboard/summary", response_model=DashboardSummary, tags=["dashboard"], summary="Counts and freshness")
def dashboard_summary(ctx: Ctx, _: Caller) -> Response:
    """Feature views with their last materialization, feature services, dataset versions, and
    the latest model results per environment.

    Served from a cache that is read again as soon as a source changed (an apply or
    materialization, a new dataset version, a logged model run); `generated_at` is when the
    figures were read."""
    return Response(ctx.dashboard.json(), media_type="application/json")


@router.get(
    "/monitoring/drift",
    response_model=DriftResult,
    tags=["monitoring"],
    summary="Drift of recent features against a dataset version's training split",
    responses={404: {"model": ErrorBody}},
)
def feature_drift(
    request: Request,
    ctx: Ctx,
    _: Caller,
    dataset: Annotated[str, Query(max_length=200, pattern=DATASET_REF_PATTERN, description="NAME@VERSION trained on.")],
    since: Annotated[str, Query(max_length=16, description="Window of recent values: 30m, 12h, 7d or 2w.")] = "7d",
    source: Annotated[Literal["offline", "served"], Query(description="Feature tables or the served log.")] = "offline",
) -> Response:
    """Per feature: PSI against its calibrated threshold and a two-sample test, most severe first
    (README "Drift and freshness"). Aggregates only: no row, user id or value. Sets the drift gauges
    of /metrics."""
    from healthmate_features.monitoring import drift

    _target(request, "dataset", dataset)
    report = drift.drift(ctx.settings, dataset, since=since, source=source, registry=ctx.datasets.registry)
    monitoring.record_drift(report)
    body = DriftResult.model_validate(report.to_dict()).model_dump_json()
    return Response(body, media_type="application/json")


@router.get(
    "/monitoring/freshness", response_model=FreshnessResult, tags=["monitoring"], summary="Feature view freshness"
)
def feature_freshness(ctx: Ctx, _: Caller) -> FreshnessResult:
    """Each batch view's last materialization and newest feature row against its TTL and the
    objective (HM_FRESHNESS_OBJECTIVE_S); `late` names the late views."""
    from healthmate_features.monitoring.freshness import view_freshness

    views = view_freshness(ctx.settings, ctx.dashboard.feature_store())
    return FreshnessResult.model_validate({"late": [v["name"] for v in views if v["late"]], "feature_views": views})


def _job_info(job: Job) -> JobInfo:
    built = (job.result or {}).get("datasets") or []
    single = built[0] if len(built) == 1 else {}
    return JobInfo(
        job_id=job.job_id,
        kind=job.kind,
        status=job.status,
        target=job.target,
        submitted_by=job.submitted_by,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        dataset=single.get("dataset"),
        created=single.get("created"),
        summary=single.get("summary"),
        result=job.result,
        error=job.error,
        status_url=f"{PREFIX}/datasets/jobs/{job.job_id}",
    )


_JSON_TIME: TypeAdapter[datetime] = TypeAdapter(datetime)
_FROZE_READER = False


def _freeze_heap(*, collect: bool, after_first_lookup: bool = False) -> None:
    """Move every object alive now to the garbage collector's permanent generation (`gc.freeze`).

    At startup (after a collection) and once more after the first lookup has opened Feast's
    store and registry: a full collection then scans only what came later. Without it, each one
    walked the ~300,000 objects of the imports and Feast's registry and stopped the event loop
    for 140-170 ms, several times a minute under load: that was the p99 of features/extract.
    Only in a server process (`create_app_from_env`): an app built in a process that goes on to
    do other things (tests, notebooks) would keep whatever cycles it frees later for good."""
    global _FROZE_READER
    if collect:
        gc.collect()
    gc.freeze()
    _FROZE_READER = _FROZE_READER or after_first_lookup


def _json_bytes(body: Any) -> bytes:
    """`body` (plain JSON values) as the bytes of FastAPI's JSONResponse."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")


def _json_safe(value: Any) -> Any:
    """Plain JSON values for a response (numpy unwrapped, NaN and NaT null, times ISO 8601)."""
    return to_jsonable(value, strict=False)


# -- the app ---------------------------------------------------------------------------------

_TAGS = [
    {"name": "health", "description": "Liveness; no key needed."},
    {"name": "feature sets", "description": "Feast feature services defined over the API (admin)."},
    {"name": "governance", "description": "Erasure of one user everywhere, and its verification (admin)."},
    {"name": "features", "description": "Online feature lookup; user keys read only their own user."},
    {
        "name": "datasets",
        "description": "Training sets: build (a job for the workers), versions, splits, preprocessing.",
    },
    {"name": "models", "description": "Model performance tracking."},
    {"name": "dashboard", "description": "Counts and freshness."},
    {"name": "monitoring", "description": "Prometheus metrics, drift against a training set, freshness."},
]


def create_app(settings: Settings, *, freeze_heap: bool = False) -> FastAPI:
    """Build the API for `settings`.

    Side effects: opens (and migrates) the SQL store of the profile now; the app closes it on
    shutdown. Background jobs are queued on the profile's broker for `healthmate-features worker`.
    `freeze_heap`: the process is a server and nothing else (`_freeze_heap`)."""
    sql = open_sql_store(settings)
    audit = AuditLog(
        sql,
        checkpoints=Checkpoints(settings.audit_checkpoints_path),
        checkpoint_every=settings.audit_checkpoint_every,
    )
    keys, tracker = ApiKeys(sql), Tracker(sql)
    ctx = ApiContext(
        settings=settings,
        sql=sql,
        tracker=tracker,
        keys=keys,
        audit=audit,
        jobs=JobQueue(settings, sql),
        datasets=DatasetCache(training.registry(settings)),
        metrics=monitoring.scrape_registry(monitoring.StoreCollector(settings)),
        key_cache=KeyCache(keys),
        audit_writer=AuditWriter(audit),
        dashboard=dashboard.SummaryCache(settings, tracker=tracker),
        freeze_heap=freeze_heap,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if freeze_heap:
            _freeze_heap(collect=True)
        try:
            yield
        finally:
            ctx.audit_writer.close()
            close_served_log(ctx.settings)
            await store.close_async_reader(ctx.settings)
            await sql.close_async()
            sql.close()

    app = FastAPI(
        title="HealthMate ML data preparation API",
        version=package_version("healthmate-features"),
        description="Feature sets, online features, training sets, preprocessing and model performance. "
        "Send `Authorization: Bearer <key>` (keys: `healthmate-features keys create`). "
        'Errors are JSON `{"error": kind, "detail": message}`.',
        openapi_tags=_TAGS,
        lifespan=lifespan,
        docs_url=None,  # docs.add_docs serves /docs with the package's own Swagger UI files, no CDN
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.include_router(public)
    app.include_router(router)
    docs.add_docs(app)
    app.add_exception_handler(HealthmateError, _healthmate_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    templates = RouteTemplates(app, extra=PUBLIC_PATHS)
    app.add_middleware(AuthAuditMiddleware, ctx=ctx, templates=templates, admin=AdminRoutes(public, router))
    app.add_middleware(RequestMetricsMiddleware, templates=templates)  # outermost: refused requests count too
    return app


def create_app_from_env() -> FastAPI:
    """`create_app(Settings.from_env(), freeze_heap=True)`: the factory `healthmate-features serve`
    hands uvicorn, so that each worker process builds its own app (its own SQL store connections,
    caches and writer) and freezes its heap."""
    return create_app(Settings.from_env(), freeze_heap=True)
