"""/docs is served from the package alone: the page references only its own origin, and the files answer.

The app over an empty SQLite store through its ASGI transport (no Feast needed for the docs).
tests/integration/test_docs_browser.py renders the page in a real browser.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from healthmate_features.api import docs
from healthmate_features.api.app import PUBLIC_PATHS, create_app

URL_ATTRIBUTE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'""")


@pytest.fixture
def client(sqlite_settings):
    with TestClient(create_app(sqlite_settings), raise_server_exceptions=False) as client:
        yield client


def referenced_urls(html: str) -> list[str]:
    return [a or b for a, b in URL_ATTRIBUTE.findall(html)]


def test_docs_page_references_only_its_own_origin(client):
    response = client.get("/docs")  # no key: /docs keeps its access rule
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    urls = referenced_urls(html)
    assert sorted(urls) == sorted([*docs.ASSETS, "/openapi.json"]), urls
    assert "://" not in html and "//" not in "".join(urls)  # no scheme, no protocol-relative host
    assert '"validatorUrl": null' in html  # Swagger UI's online validator would call another host


@pytest.mark.parametrize("url", sorted(docs.ASSETS))
def test_every_file_the_page_loads_answers_without_a_key_with_its_type(client, url):
    name, media_type = docs.ASSETS[url]
    response = client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] == media_type.split(";")[0]
    assert response.content == (docs.SWAGGER_UI / name).read_bytes()
    if name.endswith(".js"):
        assert b"SwaggerUIBundle" in response.content[:400]  # the bundle defines what the page calls


def test_the_docs_files_ship_with_their_licence():
    shipped = {path.name for path in docs.SWAGGER_UI.iterdir()}
    assert {"LICENSE", "NOTICE", "swagger-ui-bundle.js.LICENSE.txt", "VERSION"} <= shipped
    assert "Apache License" in (docs.SWAGGER_UI / "LICENSE").read_text()
    assert {name for name, _ in docs.ASSETS.values()} <= shipped


def test_only_the_docs_files_are_public(client):
    assert docs.PUBLIC_PATHS <= PUBLIC_PATHS and "/redoc" not in PUBLIC_PATHS
    assert client.get("/docs/oauth2-redirect").status_code == 200
    for path in ("/docs/static/LICENSE", "/docs/static/../../app.py", "/redoc", "/docs/static/x.js"):
        assert client.get(path).status_code == 401, path  # anything else needs a key, as before


def test_behind_a_path_prefix_the_page_points_under_it(sqlite_settings):
    with TestClient(create_app(sqlite_settings), root_path="/features-api") as client:
        urls = referenced_urls(client.get("/docs").text)
    assert urls and all(url.startswith("/features-api/") for url in urls), urls


def test_the_docs_files_are_package_data():
    """An installed (non-editable) package carries them: pyproject's package-data covers every file."""
    import ast
    import fnmatch

    package = Path(docs.__file__).resolve().parents[1]
    pyproject = (package.parent / "pyproject.toml").read_text()
    block = re.search(r"\[tool\.setuptools\.package-data\]\nhealthmate_features = (\[[^\]]*\])", pyproject)
    assert block, "pyproject.toml has no [tool.setuptools.package-data] healthmate_features = [...]"
    patterns = ast.literal_eval(block.group(1))
    for path in docs.SWAGGER_UI.iterdir():
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative
