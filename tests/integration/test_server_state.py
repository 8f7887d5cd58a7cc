"""A running `healthmate-features serve` keeps its SQLite store intact whatever paths a request names.

Closing any file descriptor of a SQLite database drops every POSIX lock the process holds on it;
the next process to close the store then deletes the server's write-ahead log, and from then on
the server reads stale data (revoked keys keep working, new keys are refused) and writes into an
unlinked file (audit rows lost). So nothing in the server may open a store file except through
the store: an entity file naming one is refused before it is opened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from healthmate_features.access.audit import AuditLog
from healthmate_features.api.app import PREFIX
from healthmate_features.backends import open_sql_store

BIN = Path(sys.executable).parent


def _cli(settings, *args: str) -> dict:
    """Run `healthmate-features ARGS --json` in its own process; its JSON output."""
    done = subprocess.run(
        [str(BIN / "healthmate-features"), *args, "--json"],
        cwd=settings.repo_path,
        env={**os.environ, **settings.to_env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def _audit_rows(settings) -> list:
    """Every audit row of an API endpoint (not /health), read by a fresh connection of this (another) process."""
    with open_sql_store(settings) as sql:
        return [r for r in AuditLog(sql).query(limit=10_000) if PREFIX in r.endpoint]


def _link(settings, kind: str) -> str:
    """An entity-file name for the SQL store: the file itself, or a symbolic or hard link named .csv/.parquet."""
    if kind == "store":
        return "data/healthmate.db"
    link = settings.ingested_dir / ("labels_link.csv" if kind == "symlink" else "labels_link.parquet")
    if kind == "symlink":
        link.symlink_to(Path("..") / "healthmate.db")
    else:
        os.link(settings.sql_path, link)
    return str(link.relative_to(settings.repo_path))


EXPECTED = {  # the SQL store by name, through a symlink (the target's name counts) and a hard link (same inode)
    "store": "by its name (suffix '.db')",
    "symlink": "by its name (suffix '.csv', '.db')",
    "hardlink": "is one of the package's own store files",
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_a_store_file_named_as_entities_is_refused_and_the_running_server_keeps_its_store(
    tiny_applied, clone_repo, tmp_path, server, spare_port, training_config, kind
):
    settings = clone_repo(tiny_applied, tmp_path / "repo")
    admin = _cli(settings, "keys", "create", "--role", "admin", "--name", "admin")["secret"]
    victim = _cli(settings, "keys", "create", "--role", "admin", "--name", "victim")
    url = f"http://127.0.0.1:{spare_port}"
    args = [str(BIN / "healthmate-features"), "serve", "--host", "127.0.0.1", "--port", str(spare_port)]
    env = {**os.environ, **settings.to_env()}
    requests: list[tuple[str, int]] = []  # (key name, status) of every authenticated request sent

    def call(
        name: str, secret: str, method: str = "GET", path: str = "/datasets/versions", body=None
    ) -> httpx.Response:
        response = httpx.request(
            method, url + PREFIX + path, json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=60
        )
        requests.append((name, response.status_code))
        return response

    with server(args, cwd=settings.repo_path, ready=f"{url}/health", log=tmp_path / "serve.log", env=env) as proc:
        assert call("victim", victim["secret"]).status_code == 200
        entities = _link(settings, kind)
        config = training_config("health_risk", name="stolen", entities=entities)
        refused = call("admin", admin, "POST", "/datasets/prepare", config)
        assert refused.status_code == 422, refused.text
        detail = refused.json()["detail"]
        assert repr(entities) in detail and "Parquet or CSV" in detail, detail
        assert EXPECTED[kind] in detail, detail
        assert str(settings.repo_path) not in detail  # no absolute server path

        _cli(settings, "keys", "revoke", victim["key_id"])  # another process opens and closes the store
        assert call("victim", victim["secret"]).status_code == 401  # the server sees the revocation
        fresh = _cli(settings, "keys", "create", "--role", "user", "--user-id", "1", "--name", "fresh")["secret"]
        assert call("fresh", fresh).status_code == 200  # and the new key
        assert call("admin", admin).status_code == 200

        deadline = time.monotonic() + 30  # a request's audit row is written just after its response is sent
        while len(rows := _audit_rows(settings)) < len(requests) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(rows) == len(requests)
        os.killpg(proc.pid, signal.SIGKILL)  # what an OOM kill does: no clean close, no checkpoint
        proc.wait(timeout=30)
    after = _audit_rows(settings)
    assert [(r.id, r.status) for r in after] == [(r.id, r.status) for r in rows]
    assert sorted(r.status for r in after) == sorted(status for _, status in requests)
