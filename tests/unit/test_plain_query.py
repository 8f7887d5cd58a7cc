"""features/extract's plain query parse (`api.app._extract_query`): whatever it accepts, FastAPI's
own validation of the route's declared parameters accepts with the same values; the rest goes to
FastAPI (its 422s)."""

from __future__ import annotations

import pytest
from fastapi.dependencies.utils import request_params_to_args
from fastapi.routing import APIRoute
from starlette.datastructures import QueryParams

from healthmate_features.api.app import PREFIX, _extract_query, create_app, router

MAX_INT64 = 2**63 - 1

# query string -> what the plain parse gives (None: FastAPI decides)
QUERIES: dict[bytes, dict | None] = {
    b"user_id=7": {"user_id": 7, "feature_service": None},
    b"user_id=7&feature_service=health_risk_v1": {"user_id": 7, "feature_service": "health_risk_v1"},
    b"feature_service=health_risk_v1&user_id=42": {"user_id": 42, "feature_service": "health_risk_v1"},
    b"user_id=%d" % MAX_INT64: {"user_id": MAX_INT64, "feature_service": None},
    b"user_id=7&feature_service=": {"user_id": 7, "feature_service": ""},
    b"user_id=7&feature_service=" + b"s" * 200: {"user_id": 7, "feature_service": "s" * 200},
    b"user_id=7&feature_service=caf%C3%A9+v1": {"user_id": 7, "feature_service": "caf\u00e9 v1"},
    b"user_id=%d" % (MAX_INT64 + 1): None,
    b"user_id=0": None,
    b"user_id=-3": None,
    b"user_id=007": None,
    b"user_id=%2B7": None,
    b"user_id=+7": None,
    b"user_id=7.0": None,
    b"user_id=1e3": None,
    b"user_id=%207": None,
    b"user_id=%EF%BC%97": None,  # a full-width digit seven: int() reads it, the pattern does not
    b"user_id=abc": None,
    b"user_id=": None,
    b"": None,
    b"feature_service=health_risk_v1": None,
    b"user_id=7&user_id=8": None,
    b"user_id=7&feature_service=a&feature_service=b": None,
    b"user_id=7&feature_service=" + b"s" * 201: None,
    b"user_id=7&other=1": None,
}


def _extract_route() -> APIRoute:
    return next(r for r in router.routes if isinstance(r, APIRoute) and r.path == f"{PREFIX}/features/extract")


@pytest.mark.parametrize("query", list(QUERIES), ids=lambda q: q.decode()[:60] or "empty")
def test_what_the_plain_parse_accepts_fastapi_accepts_with_the_same_values(query):
    plain = _extract_query(query)
    assert plain == QUERIES[query]
    values, errors = request_params_to_args(
        _extract_route().dependant.query_params, QueryParams(query.decode("latin-1"))
    )
    if plain is not None:
        assert errors == [] and values == plain


def test_the_route_has_no_dependencies_the_plain_path_would_skip():
    route = _extract_route()
    assert type(route).__name__ == "PlainQueryRoute"
    assert route.dependant.dependencies == []
    assert [p.name for p in route.dependant.query_params] == ["user_id", "feature_service"]


def test_the_app_adds_no_dependency_to_the_route_either(sqlite_settings):
    """Dependencies given where a router is included or to the whole app would reach FastAPI's
    handling only; the plain path would skip them. (FastAPI keeps them on its included routers.)"""
    app = create_app(sqlite_settings)
    assert app.router.dependencies == []
    included = [r for r in app.router.routes if hasattr(r, "include_context")]
    assert included and all(r.include_context.dependencies == [] for r in included)
