"""The interactive API documentation at /docs, served entirely by the app itself.

FastAPI's own /docs page loads Swagger UI's JavaScript, stylesheet and favicon from a CDN, so
on a machine without internet it stays blank. This page is the same Swagger UI, with those files
shipped in the package (`static/swagger-ui/`: swagger-ui-dist's `swagger-ui-bundle.js`,
`swagger-ui.css` and `favicon-32x32.png`, unchanged; its version in VERSION, its licence in
LICENSE, NOTICE and the bundle's LICENSE.txt; `make swagger-ui` refreshes them) and served
under /docs/static/. Swagger UI's online validator is switched off, so the page asks nothing of
any other host. /docs, its OAuth2 redirect page and the files need no key (`PUBLIC_PATHS`).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse

SWAGGER_UI = Path(__file__).with_name("static") / "swagger-ui"
DOCS_URL = "/docs"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
STATIC_URL = "/docs/static"
#: URL path -> (file in SWAGGER_UI, media type): everything the page loads.
ASSETS: dict[str, tuple[str, str]] = {
    f"{STATIC_URL}/swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    f"{STATIC_URL}/swagger-ui.css": ("swagger-ui.css", "text/css; charset=utf-8"),
    f"{STATIC_URL}/favicon-32x32.png": ("favicon-32x32.png", "image/png"),
}
PUBLIC_PATHS = frozenset({DOCS_URL, OAUTH2_REDIRECT_URL, *ASSETS})


def add_docs(app: FastAPI) -> None:
    """Serve /docs and its files on `app` (built with `docs_url=None`, `redoc_url=None`)."""
    router = APIRouter(include_in_schema=False)
    openapi_url = app.openapi_url or "/openapi.json"

    @router.get(DOCS_URL)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy that strips a prefix
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_URL}/favicon-32x32.png",
            oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        )

    @router.get(OAUTH2_REDIRECT_URL)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    for url, (name, media_type) in ASSETS.items():
        router.add_api_route(url, _file_endpoint(SWAGGER_UI / name, media_type), methods=["GET"])
    app.include_router(router)


def _file_endpoint(path: Path, media_type: str):
    def serve() -> FileResponse:
        return FileResponse(path, media_type=media_type)

    serve.__name__ = f"docs_{path.name.replace('-', '_').replace('.', '_')}"
    return serve
