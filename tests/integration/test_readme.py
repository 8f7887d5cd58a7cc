"""README's code blocks run as shown, in README order, in one copy of the repository where the demo ran.

Every fenced block is either documentation (```yaml, ```text or no language: configuration and
listings) or runnable (```python, ```sh, ```console), and every runnable block runs unless the
line before it says why not:

    <!-- not run: the reason -->     skipped, the reason shown in the test report
    <!-- needs: api server -->      run against `healthmate-features serve`, started by this test on
                                     a spare port (HOST and HM_KEY set as the README says to)

`python` blocks run with `.venv/bin/python`, `sh` blocks with bash (`-e -o pipefail`: any failing
command fails the block), `console` blocks run their `$ ` commands with `.venv/bin` on PATH.
Blocks that use `--profile production` get the Postgres and Redis settings of a fresh database
and a Feast project of their own (HM_PG_*, HM_REDIS_URL), as a user exports them. curl runs with
`--fail-with-body` (CURL_HOME), so an HTTP error fails the block. Blocks added later are covered
without changing this file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..helpers import repos

pytestmark = pytest.mark.slow

README = repos.ROOT / "README.md"
RUNNABLE = {"python", "sh", "console"}
DOCUMENTATION = {"yaml", "text", ""}
NEEDS = {"api server"}
TIMEOUT_S = 600
# Not copied into the sandbox: environments, caches and generated state (the demo's data/ is).
_NOT_COPIED = (".git", ".venv", "data", ".healthmate", "__pycache__", "*.egg-info", ".*_cache", ".hypothesis", "build")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence
    lang: str
    body: str
    marker: tuple[str, str] | None  # ("not run", reason) or ("needs", what)

    @property
    def id(self) -> str:
        return f"line{self.line}-{self.lang or 'plain'}"


def readme_blocks(text: str) -> list[Block]:
    """Every fenced code block of a Markdown text, with the HTML-comment marker on the line before it."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = re.fullmatch(r"```(\w*)\s*", lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = re.fullmatch(r"<!--\s*(not run|needs):\s*(.+?)\s*-->", before)
        body = "\n".join(lines[i + 1 : end]) + "\n"
        blocks.append(Block(i + 1, opening.group(1), body, (marker.group(1), marker.group(2)) if marker else None))
        i = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text())
RUN_BLOCKS = [b for b in BLOCKS if b.lang in RUNNABLE]


def test_every_block_is_runnable_or_documentation_and_every_marker_is_understood():
    unknown = [b.id for b in BLOCKS if b.lang not in RUNNABLE | DOCUMENTATION]
    assert unknown == [], f"README blocks in a language this test does not know how to treat: {unknown}"
    misplaced = [b.id for b in BLOCKS if b.marker and b.lang not in RUNNABLE]
    assert misplaced == [], f"markers before blocks that are never run: {misplaced}"
    needs = [(b.id, b.marker[1]) for b in BLOCKS if b.marker and b.marker[0] == "needs" and b.marker[1] not in NEEDS]
    assert needs == [], f"unknown `needs:` (known: {sorted(NEEDS)}): {needs}"
    orphans = len(re.findall(r"^<!--\s*(?:not run|needs):", README.read_text(), flags=re.M)) - sum(
        bool(b.marker) for b in BLOCKS
    )
    assert orphans == 0, "a `not run`/`needs` marker that is not on the line before a code block"
    assert len([b for b in RUN_BLOCKS if not b.marker]) >= 8, "most runnable blocks should run"


# -- the sandbox -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox(demo_run, tmp_path_factory) -> Path:
    """A copy of this checkout (without .venv, caches and data/), the demo's data/, and `.venv`
    linking to the running environment: a clone where `make demo` has just run."""
    root = tmp_path_factory.mktemp("readme") / "repo"
    shutil.copytree(repos.ROOT, root, ignore=shutil.ignore_patterns(*_NOT_COPIED), symlinks=True)
    shutil.copytree(demo_run[0].data_dir, root / "data")
    # The demo's keys (master key, erasure key) live beside its data/, outside it: data/ alone does not open.
    if (demo_run[0].repo_path / ".healthmate").exists():
        shutil.copytree(demo_run[0].repo_path / ".healthmate", root / ".healthmate")
    (root / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return root


def _tracked_files(root: Path) -> dict[str, str]:
    """SHA-1 of every file under root, outside data/, .venv and __pycache__ (what a user would commit)."""
    found = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if rel.parts[0] in ("data", ".venv") or "__pycache__" in rel.parts or not path.is_file():
            continue
        found[rel.as_posix()] = hashlib.sha1(path.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def sandbox_files(sandbox) -> dict[str, str]:
    """The sandbox's files before any block ran."""
    return _tracked_files(sandbox)


@pytest.fixture(scope="module")
def base_env(sandbox, tmp_path_factory) -> dict[str, str]:
    """The environment of a user in the repository: no HM_* settings (the defaults), curl failing on HTTP errors."""
    curl_home = tmp_path_factory.mktemp("curl")
    (curl_home / ".curlrc").write_text("fail-with-body\nshow-error\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HM_")}
    return env | {"CURL_HOME": str(curl_home)}


@pytest.fixture(scope="module")
def production_env(sandbox, fresh_postgres_database, fresh_redis_prefix, settings_for_dsn):
    """HM_* settings of a fresh Postgres database and Redis, with the sandbox's production Feast
    project renamed so its Redis keys are its own; keys dropped afterwards."""
    with fresh_postgres_database() as dsn, fresh_redis_prefix() as (url, prefix):
        project = prefix.rstrip(":")
        yaml_path = sandbox / "feature_store.production.yaml"
        yaml_path.write_text(yaml_path.read_text().replace("project: healthmate", f"project: {project}"))
        settings = settings_for_dsn(dsn, sandbox)
        env = {k: v for k, v in settings.to_env().items() if k not in ("HM_PROFILE", "HM_REPO_PATH")}
        try:
            yield env | {"HM_REDIS_URL": url}
        finally:
            _drop_redis_keys(url, f"*{project}")


def _drop_redis_keys(url: str, pattern: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def api_server(sandbox, base_env):
    """`healthmate-features serve` in the sandbox on a spare port with a fresh admin key: {HOST, HM_KEY}."""
    bin_dir = sandbox / ".venv" / "bin"
    created = subprocess.run(
        [str(bin_dir / "healthmate-features"), "keys", "create", "--role", "admin", "--name", "readme", "--json"],
        cwd=sandbox,
        env=base_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    secret = json.loads(created.stdout)["secret"]
    port = _free_port()
    log = (sandbox / "data" / "serve.log").open("w")
    server = subprocess.Popen(
        [str(bin_dir / "healthmate-features"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=sandbox,
        env=base_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    host = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (sandbox / "data" / "serve.log").read_text()
            try:
                with urllib.request.urlopen(f"{host}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the API server did not answer within 120 s"
            time.sleep(0.3)
        yield {"HOST": host, "HM_KEY": secret}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


# -- the blocks --------------------------------------------------------------------------------


def _command(block: Block, sandbox: Path) -> list[str]:
    if block.lang == "python":
        return [str(sandbox / ".venv" / "bin" / "python"), "-c", block.body]
    if block.lang == "sh":
        return ["bash", "-e", "-o", "pipefail", "-c", block.body]
    commands, current = [], ""
    for line in block.body.splitlines():  # console: the `$ ` lines and their `\` continuations
        if current:
            current += "\n" + line
        elif line.startswith("$ "):
            current = line[2:]
        if current and not current.endswith("\\"):
            commands.append(current)
            current = ""
    assert commands, f"console block at README line {block.line} has no `$ ` commands"
    return ["bash", "-e", "-o", "pipefail", "-c", "\n".join(commands)]


def test_the_first_online_example_shows_an_active_user(sandbox, base_env):
    """README's first `online` example picks a user with (nearly) all features, not one who left."""
    user = re.search(r"healthmate-features online --user-id (\d+)", README.read_text()).group(1)
    shown = subprocess.run(
        [str(sandbox / ".venv" / "bin" / "healthmate-features"), "online", "--user-id", user]
        + ["--feature-service", "health_risk_v1", "--json"],
        cwd=sandbox,
        env=base_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    values = json.loads(shown.stdout)
    features = {k: v for k, v in values.items() if k != "user_id"}
    missing = sorted(k for k, v in features.items() if v is None)
    assert len(features) == 84 and len(missing) <= 8, f"user {user} lacks {len(missing)} of 84 features: {missing}"


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[b.id for b in RUN_BLOCKS])
def test_readme_block_runs_as_shown(block: Block, sandbox, sandbox_files, base_env, request):
    if block.marker and block.marker[0] == "not run":
        pytest.skip(f"README line {block.line}: not run: {block.marker[1]}")
    env = dict(base_env)
    if block.lang == "console":
        env["PATH"] = f"{sandbox / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    if "--profile production" in block.body:
        env |= request.getfixturevalue("production_env")
    if block.marker == ("needs", "api server"):
        env |= request.getfixturevalue("api_server")
    done = subprocess.run(
        _command(block, sandbox), cwd=sandbox, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, (
        f"README block at line {block.line} failed with exit status {done.returncode}\n"
        f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
    )


# Files README's examples change on purpose, and what this test changes.
_CHANGED_ON_PURPOSE = {
    "feature_repo/feature_sets.json": "feature-sets/create keeps the new feature set there (README: commit it)",
    "feature_store.production.yaml": "production_env gives the sandbox a Feast project of its own",
    ".healthmate/erasure.key": "the first `erase` creates the ledger's key outside data/ (git-ignored, mode 0600)",
}


def test_the_blocks_write_files_only_under_data(sandbox, sandbox_files):
    """Runs after the blocks: nothing they wrote lands in the repository's tracked tree."""
    after = _tracked_files(sandbox)
    changed = sorted(
        p
        for p in set(after) | set(sandbox_files)
        if after.get(p) != sandbox_files.get(p) and p not in _CHANGED_ON_PURPOSE
    )
    assert changed == [], f"README blocks wrote into the repository (write under data/out/ instead): {changed}"
