"""The API's /docs page renders in a real browser with no host but the server itself.

`healthmate-features serve` on a spare loopback port (an empty SQLite store: the docs need no
feature repository), then headless Chromium loads /docs with every other host unresolvable and
dumps the rendered DOM: Swagger UI drew the operations, so its JavaScript and CSS came from the
package. Skips when Chromium is missing (`make browser` installs it), fails under CI=true.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from healthmate_features.api import docs
from healthmate_features.api.app import PREFIX

BIN = Path(sys.executable).parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
pytestmark = pytest.mark.slow


@pytest.fixture
def chromium() -> str:
    found = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if found:
        return found
    message = "headless Chromium is not installed; `make browser` installs it (Debian's chromium package, as root)"
    if IN_CI:
        pytest.fail(f"CI=true requires it: {message}", pytrace=False)
    pytest.skip(message)


def _spare_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """`healthmate-features serve` on a spare loopback port; yields (base URL, log file); stopped afterwards."""
    port = _spare_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "HM_REPO_PATH": str(tmp_path), "HM_PROFILE": "embedded"}
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(BIN / "healthmate-features"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the server did not start:\n{log.read_text()[-3000:]}", pytrace=False)
                time.sleep(0.3)
        yield base, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_docs_render_the_operations_with_no_other_host(chromium, server, tmp_path):
    base, log = server
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # any CDN would be unreachable
        "--virtual-time-budget=15000",  # let Swagger UI fetch /openapi.json and render
        "--dump-dom",
        f"{base}/docs",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    dom = done.stdout
    assert done.returncode == 0 and "swagger-ui" in dom, done.stderr[-3000:]
    for operation in ("features/extract", "datasets/prepare", "dashboard/summary"):
        assert f"{PREFIX}/{operation}" in dom, f"Swagger UI did not render {operation}:\n{dom[-3000:]}"
    assert "HealthMate ML data preparation API" in dom
    served = log.read_text()
    for url in [*docs.ASSETS, "/openapi.json"]:
        assert f'"GET {url} HTTP/1.1" 200' in served, f"{url} was not served:\n{served[-3000:]}"
