"""README "Fetching features from a service": its code blocks, run as shown against real servers.

The blocks run in a copy of an applied and materialized repository (with this checkout's `.venv`
linked in, as `make install` would have made it), from its root, each in its own process group,
which is stopped afterwards. The only change: the servers' ports (6566, 8000) become spare ones.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SECTION = "## Fetching features from a service"
PORTS = ("6566", "8000")  # Feast's feature server, our HTTP API


def blocks(readme: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block in the README section."""
    start = readme.index(SECTION)
    end = readme.index("\n## ", start + len(SECTION))
    return re.findall(r"^```(\w+)\n(.*?)^```$", readme[start:end], flags=re.MULTILINE | re.DOTALL)


@pytest.fixture
def repo(small_embedded, clone_repo, tmp_path):
    settings = clone_repo(small_embedded, tmp_path / "repo")
    (settings.repo_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    return settings.repo_path


def run(language: str, code: str, repo: Path, ports: dict[str, str]) -> str:
    """Run one block from the repository root; its standard output. Fails with its output when it fails."""
    for shown, spare in ports.items():
        code = code.replace(f"127.0.0.1:{shown}", f"127.0.0.1:{spare}").replace(f"--port {shown}", f"--port {spare}")
    args = ["bash", "-euo", "pipefail", "-c", code] if language == "sh" else [".venv/bin/python", "-c", code]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HM_")}  # as a user's shell: the defaults
    proc = subprocess.Popen(
        args, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the block left running (a server it failed to stop)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"README {language} block failed ({proc.returncode}):\n{code}\n{out}\n{err}"
    return out


def test_every_example_of_the_section_runs_as_shown(repo, repo_root, spare_port):
    found = blocks((repo_root / "README.md").read_text())
    assert [language for language, _ in found] == ["sh", "python", "sh"]
    ports = {PORTS[0]: str(spare_port), PORTS[1]: str(spare_port)}  # one server at a time
    served, sdk, api = (run(language, code, repo, ports) for language, code in found)

    # Feast's feature server: epoch seconds and an ISO time are the same instant, and read as such
    by_service, by_features = (json.loads(line) for line in served.splitlines() if line.startswith("{"))
    service = dict(
        zip(by_service["metadata"]["feature_names"], (r["values"] for r in by_service["results"]), strict=True)
    )
    single = dict(
        zip(by_features["metadata"]["feature_names"], (r["values"] for r in by_features["results"]), strict=True)
    )
    assert service["user_id"] == [5, 6] and single["day_of_year"] == [335]
    assert single["days_since_signup"][0] == service["days_since_signup"][0] is not None
    assert single["age_years"][0] == service["age_years"][0] is not None

    # the Python SDK gives the same values
    printed = eval(sdk)  # the block prints a dict of lists
    assert printed["user_id"] == [5] and printed["age_years"] == single["age_years"]
    assert printed["days_since_signup"] == single["days_since_signup"]

    # our HTTP API: the user key reads its user's features (at the time of the call)
    answer = json.loads(next(line for line in api.splitlines() if line.startswith("{")))
    assert answer["user_id"] == 5 and answer["feature_service"] == "health_risk_v1"
    assert answer["features"]["age_years"] == single["age_years"][0]
    assert "revoked" in api  # the example's key is revoked again
