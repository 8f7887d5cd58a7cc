"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol: load a page, collect
console errors and failed requests, measure every chart, save a screenshot.

The same protocol Playwright and Selenium's CDP layer speak, over the `websockets` client the
lock already holds (no new dependency). Every host but 127.0.0.1 is unresolvable, so a page that
needs a CDN fails its load.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

#: Where screenshots go (one PNG per page a test loads): tests/artifacts/, kept out of git.
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

_CHARTS_JS = """JSON.stringify([...document.querySelectorAll('svg.chart')].map(svg => {
  const box = svg.getBoundingClientRect();
  return {chart: svg.dataset.chart, width: box.width, height: box.height,
          marks: [...svg.querySelectorAll('.mark')].map(m => {
            const b = m.getBoundingClientRect();
            return {label: m.dataset.label, series: m.dataset.series || null, value: m.dataset.value,
                    width: b.width, height: b.height};
          })};
}))"""


def find_chromium() -> str | None:
    """The Chromium executable on PATH, or None."""
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@dataclass
class Loaded:
    """What a page load left: console errors, exceptions, failed requests, charts, the screenshot."""

    url: str
    errors: list[str] = field(default_factory=list)
    charts: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""
    screenshot: Path | None = None


class Browser:
    """One headless Chromium process with a DevTools port; `load` opens a page in its first tab."""

    def __init__(self, executable: str, profile: Path) -> None:
        profile.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--window-size=1200,900",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            pages = [t for t in json.load(response) if t["type"] == "page"]
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024, open_timeout=30)
        self._id = 0
        self._events: list[dict[str, Any]] = []

    def close(self) -> None:
        self.ws.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events meanwhile are kept)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._events.append(message)

    def load(self, url: str, *, headers: dict[str, str] | None = None, shot: str | None = None) -> Loaded:
        """Open `url` (with extra request `headers`), wait for its load event, and read what it did."""
        self._events.clear()
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Network.setExtraHTTPHeaders", headers=headers or {})
        navigated = self.call("Page.navigate", url=url)
        loaded = Loaded(url)
        if navigated.get("errorText"):
            loaded.errors.append(f"navigation: {navigated['errorText']}")
            return loaded
        deadline = time.monotonic() + 60
        while not any(e.get("method") == "Page.loadEventFired" for e in self._events):
            if time.monotonic() > deadline:
                loaded.errors.append("no load event within 60 s")
                break
            self._events.append(json.loads(self.ws.recv(timeout=60)))
        time.sleep(0.3)  # late console messages
        self.call("Runtime.evaluate", expression="1")
        loaded.charts = json.loads(self.call("Runtime.evaluate", expression=_CHARTS_JS)["result"]["value"])
        loaded.text = self.call("Runtime.evaluate", expression="document.body.innerText")["result"]["value"]
        for event in self._events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                loaded.errors.append(f"console: {params.get('args')}")
            elif method == "Runtime.exceptionThrown":
                loaded.errors.append(f"exception: {params.get('exceptionDetails', {}).get('text')}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                loaded.errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
            elif method == "Network.loadingFailed":
                loaded.errors.append(f"request failed: {params.get('errorText')}")
        if shot:
            metrics = self.call("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 12000), "scale": 1}
            data = self.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)["data"]
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            loaded.screenshot = ARTIFACTS / f"{shot}.png"
            loaded.screenshot.write_bytes(base64.b64decode(data))
        return loaded
