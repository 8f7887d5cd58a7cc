"""The audit chain on SQLite (tests/contracts/audit_chain.py), its encoding, and `audit verify|export` on the CLI."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner

from healthmate_features.access import audit_chain
from healthmate_features.access.audit import AuditLog
from healthmate_features.backends import open_sql_store
from healthmate_features.cli import main

from ..contracts.audit_chain import AuditChainContract, write_rows


class TestAuditChainOnSqlite(AuditChainContract):
    @pytest.fixture
    def backend_settings(self, sqlite_settings):
        return sqlite_settings


def test_the_canonical_encoding_is_pinned():
    # the hash as `printf "%s\n%s" <64 zeros> <canonical> | sha256sum` prints it
    fields = (datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc), None, "admin", "GET /x", "user:1", 200, 12.5)
    assert audit_chain.canonical(fields) == b'["2026-01-02T03:04:05.000006Z",null,"admin","GET /x","user:1",200,12.5]'
    assert audit_chain.chain_hash(audit_chain.GENESIS, fields) == (
        "7156489a5edff9eedb850378796eb92fffee74a5f89007bd6fc1713bd1644a2a"
    )


def _cli(settings, *args):
    return CliRunner().invoke(main, list(args), env=settings.to_env(), catch_exceptions=False)


def test_verify_passes_then_names_the_row_edited_with_the_sqlite3_shell(sqlite_settings):
    with open_sql_store(sqlite_settings) as store:
        write_rows(AuditLog(store), 5)
    ok = _cli(sqlite_settings, "audit", "verify")
    assert ok.exit_code == 0, ok.output
    assert "intact" in ok.output and "chained rows" in ok.output
    assert sqlite_settings.audit_checkpoints_path.exists()
    subprocess.run(
        ["sqlite3", str(sqlite_settings.sql_path)],
        input="BEGIN; DROP TRIGGER audit_log_no_update; UPDATE audit_log SET status = 500 WHERE id = 3; "
        "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'x'); END; COMMIT;",
        text=True,
        check=True,
    )
    bad = _cli(sqlite_settings, "audit", "verify")
    assert bad.exit_code == 1
    assert "audit row 3 was edited" in bad.output
    as_json = _cli(sqlite_settings, "audit", "verify", "--json")
    assert as_json.exit_code == 1
    found = json.loads(as_json.stdout)
    assert (found["ok"], found["problem_kind"], found["problem_id"]) == (False, "edited", 3)


def test_export_writes_json_lines_a_receiver_can_verify(sqlite_settings):
    with open_sql_store(sqlite_settings) as store:
        write_rows(AuditLog(store), 4)
    result = _cli(sqlite_settings, "audit", "export", "--since", "2000-01-01")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        fields = (audit_chain.read_ts(row["at"]), *(row[n] for n in audit_chain.FIELDS[1:]))
        assert audit_chain.chain_hash(row["prev_hash"], fields) == row["row_hash"]
    assert _cli(sqlite_settings, "audit", "export", "--since", "2999-01-01").stdout == ""
    bad = _cli(sqlite_settings, "audit", "export", "--since", "last tuesday")
    assert bad.exit_code == 1 and "--since 'last tuesday' is not an ISO 8601 time" in bad.output
