"""The audit log's hash chain: every way of editing the log past its triggers is found by
`verify`, on every backend. Run on SQLite by tests/unit/test_audit_chain.py and on Postgres by
tests/integration/test_audit_chain.py.

Tampering goes around the append-only triggers as an attacker with the database file or a
superuser would: on SQLite by dropping and re-creating the triggers in one transaction, on
Postgres by `ALTER TABLE ... DISABLE TRIGGER USER`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from healthmate_features.access import audit_chain
from healthmate_features.access.audit import AuditLog
from healthmate_features.backends import open_sql_store
from healthmate_features.backends.sqlstore import SqlStore
from healthmate_features.config import Settings

_SQLITE_TRIGGERS = {
    "audit_log_no_update": "BEFORE UPDATE",
    "audit_log_no_delete": "BEFORE DELETE",
}
_COLUMNS = "at, key_id, role, endpoint, target, status, latency_ms, prev_hash, row_hash"


def tamper(store: SqlStore, *statements: str, params: tuple = ()) -> None:
    """Run `statements` on audit_log with its append-only triggers out of the way, in one transaction.

    The unique index on prev_hash (which refuses a fork) is dropped too, as an attacker would."""
    with store.transaction():
        store.execute("DROP INDEX IF EXISTS audit_log_prev_hash_idx")
        if store.dialect == "sqlite":
            for name in _SQLITE_TRIGGERS:
                store.execute(f"DROP TRIGGER {name}")
        else:
            store.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        for statement in statements:
            store.execute(statement, params if "?" in statement else ())
        if store.dialect == "sqlite":
            for name, when in _SQLITE_TRIGGERS.items():
                store.execute(
                    f"CREATE TRIGGER {name} {when} ON audit_log BEGIN SELECT RAISE(ABORT, 'append-only'); END"
                )
        else:
            store.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")


def write_rows(audit: AuditLog, count: int, *, status: int = 200) -> None:
    """`count` audit rows, one write each."""
    for i in range(count):
        audit.write(endpoint=f"GET /api/v1/things/{i}", status=status, latency_ms=1.0 + i / 8, target=f"user:{i}")


def bump_ids(store: SqlStore, to: int) -> None:
    """Make the next audit id `to` + 1, as rolled-back writes leave a gap."""
    if store.dialect == "sqlite":
        store.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'audit_log'", (to,))
    else:
        store.execute("SELECT setval(pg_get_serial_sequence('audit_log', 'id'), ?)", (to,))


class AuditChainContract:
    """Needs a `backend_settings` fixture: Settings of an empty SQL store."""

    @pytest.fixture
    def store(self, backend_settings: Settings) -> Iterator[SqlStore]:
        with open_sql_store(backend_settings) as store:
            yield store

    @pytest.fixture
    def checkpoints(self, tmp_path) -> audit_chain.Checkpoints:
        return audit_chain.Checkpoints(tmp_path / "checkpoints" / "audit-checkpoints.jsonl")

    @pytest.fixture
    def audit(self, store, checkpoints) -> AuditLog:
        audit = AuditLog(store, checkpoints=checkpoints, checkpoint_every=1000)
        write_rows(audit, 6)
        audit.write_many([audit.entry(endpoint="POST /api/v1/jobs", status=202, latency_ms=3.25) for _ in range(4)])
        return audit

    def test_an_untouched_log_verifies_and_records_its_head(self, audit, store, checkpoints):
        result = audit_chain.verify(store, checkpoints, record=True)
        assert result.ok, result.problem
        assert (result.chained_rows, result.head_id, result.unchained_through) == (10, 10, 0)
        assert [(p.id, p.row_hash) for p in checkpoints.read(store)] == [(10, result.head_hash)]
        audit_chain.verify(store, checkpoints, record=True)  # the same head is not written twice
        assert len(checkpoints.read(store)) == 1

    def test_rows_are_chained_by_the_documented_encoding(self, audit, store):
        rows = list(audit_chain.export_rows(store, since=audit_chain.read_ts("2000-01-01T00:00:00+00:00")))
        assert [r["id"] for r in rows] == list(range(1, 11))
        previous = audit_chain.GENESIS
        for row in rows:
            import hashlib
            import json

            fields = [row[name] for name in audit_chain.FIELDS]
            body = json.dumps(fields, separators=(",", ":")).encode()
            assert row["prev_hash"] == previous
            assert row["row_hash"] == hashlib.sha256(previous.encode() + b"\n" + body).hexdigest()
            previous = row["row_hash"]

    def test_an_edited_field_is_named(self, audit, store):
        tamper(store, "UPDATE audit_log SET status = 403 WHERE id = 5")
        result = audit_chain.verify(store)
        assert (result.ok, result.problem_kind, result.problem_id) == (False, "edited", 5)
        assert "audit row 5 was edited" in (result.problem or "")

    def test_a_deleted_row_is_named_by_its_successor(self, audit, store):
        tamper(store, "DELETE FROM audit_log WHERE id = 5")
        result = audit_chain.verify(store)
        assert (result.problem_kind, result.problem_id) == ("deleted", 6)
        assert "row 6 does not follow row 4" in (result.problem or "")

    def test_a_forged_row_without_hashes_is_named(self, audit, store):
        tamper(
            store,
            f"INSERT INTO audit_log ({_COLUMNS}) VALUES (?, NULL, NULL, 'GET /forged', NULL, 200, 1.0, NULL, NULL)",
            params=(audit_chain.utcnow(),),
        )
        result = audit_chain.verify(store)
        assert (result.problem_kind, result.problem_id) == ("inserted", 11)

    def test_a_forged_row_with_a_computed_hash_in_a_gap_is_named(self, audit, store):
        bump_ids(store, 20)
        write_rows(audit, 2)  # ids 21, 22: the ids 11..20 are a gap, as rolled-back writes leave
        row10 = store.query("SELECT row_hash FROM audit_log WHERE id = 10")[0]["row_hash"]
        fields = (audit_chain.utcnow(), None, None, "GET /forged", None, 200, 1.0)
        forged = (*fields, row10, audit_chain.chain_hash(row10, fields))
        override = "" if store.dialect == "sqlite" else " OVERRIDING SYSTEM VALUE"
        tamper(
            store,
            f"INSERT INTO audit_log (id, {_COLUMNS}){override} VALUES (15, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            params=forged,
        )
        result = audit_chain.verify(store)
        assert (result.problem_kind, result.problem_id) == ("inserted", 15)
        assert "both follow row 10" in (result.problem or "")

    def test_swapped_rows_are_named(self, audit, store):
        rows = {r["id"]: r for r in store.query(f"SELECT id, {_COLUMNS} FROM audit_log WHERE id IN (4, 5)")}
        sets = ", ".join(f"{c} = ?" for c in _COLUMNS.split(", "))
        tamper(
            store,
            f"UPDATE audit_log SET {sets} WHERE id = 4",
            params=tuple(rows[5][c] for c in _COLUMNS.split(", ")),
        )
        tamper(
            store,
            f"UPDATE audit_log SET {sets} WHERE id = 5",
            params=tuple(rows[4][c] for c in _COLUMNS.split(", ")),
        )
        result = audit_chain.verify(store)
        assert (result.problem_kind, result.problem_id) == ("reordered", 4)

    def test_a_cut_off_tail_is_found_by_the_checkpoint(self, audit, store, checkpoints):
        assert audit_chain.verify(store, checkpoints, record=True).ok
        tamper(store, "DELETE FROM audit_log WHERE id > 7")
        assert audit_chain.verify(store).ok  # the chain alone cannot tell
        result = audit_chain.verify(store, checkpoints)
        assert (result.problem_kind, result.problem_id) == ("truncated", 10)
        assert "ends at id 7 but the checkpoint" in (result.problem or "")
        assert "says id 10 existed" in (result.problem or "")

    def test_a_recomputed_chain_is_found_by_the_checkpoint(self, audit, store, checkpoints):
        assert audit_chain.verify(store, checkpoints, record=True).ok
        rows = store.query(f"SELECT id, {_COLUMNS} FROM audit_log ORDER BY id")
        previous, statements = audit_chain.GENESIS, []
        for row in rows:
            fields = list(audit_chain.row_fields(row))
            if row["id"] == 3:
                fields[5] = 200 if fields[5] != 200 else 500
            row_hash = audit_chain.chain_hash(previous, fields)
            status = fields[5]
            sets = f"status = {status}, prev_hash = '{previous}', row_hash = '{row_hash}'"
            statements.append(f"UPDATE audit_log SET {sets} WHERE id = {row['id']}")
            previous = row_hash
        tamper(store, *statements)
        assert audit_chain.verify(store).ok  # a consistent rewrite: only the checkpoint shows it
        result = audit_chain.verify(store, checkpoints)
        assert (result.ok, result.problem_kind, result.problem_id) == (False, "edited", 10)
        assert "differs from the checkpoint" in (result.problem or "")

    def test_a_deleted_first_row_is_named(self, audit, store):
        tamper(store, "DELETE FROM audit_log WHERE id = 1")
        result = audit_chain.verify(store)
        assert (result.problem_kind, result.problem_id) == ("deleted", 2)
        assert "not the start of the chain" in (result.problem or "")

    def test_rows_from_before_the_migration_stay_unchained(self, backend_settings):
        with open_sql_store(backend_settings) as store:  # back to the schema before migration 7
            store.execute("DROP INDEX audit_log_prev_hash_idx")
            store.execute("DROP TABLE audit_chain")
            store.execute("ALTER TABLE audit_log DROP COLUMN prev_hash")
            store.execute("ALTER TABLE audit_log DROP COLUMN row_hash")
            store.execute("DELETE FROM schema_migrations WHERE version = 7")
            for status in (200, 404, 201):
                store.execute(
                    "INSERT INTO audit_log (at, endpoint, status, latency_ms) VALUES (?, 'GET /old', ?, 1.0)",
                    (audit_chain.utcnow(), status),
                )
        with open_sql_store(backend_settings) as store:  # migration 7 applied now
            write_rows(AuditLog(store), 2)
            result = audit_chain.verify(store)
            assert (result.ok, result.unchained_through, result.chained_rows, result.head_id) == (True, 3, 2, 5)
            tamper(store, "UPDATE audit_log SET status = 500 WHERE id = 2")
            assert audit_chain.verify(store).ok  # unchained: nothing proves them unchanged
            tamper(store, "UPDATE audit_log SET status = 500 WHERE id = 4")
            assert audit_chain.verify(store).problem_id == 4

    def test_the_writer_records_a_checkpoint_every_n_rows(self, store, checkpoints):
        audit = AuditLog(store, checkpoints=checkpoints, checkpoint_every=4)
        write_rows(audit, 9)
        assert [p.id for p in checkpoints.read(store)] == [4, 8]
        assert audit_chain.verify(store, checkpoints).ok

    def test_two_processes_writing_at_once_keep_one_chain(self, store, backend_settings):
        script = (
            "import sys\n"
            "from healthmate_features.access.audit import AuditLog\n"
            "from healthmate_features.backends import open_sql_store\n"
            "from healthmate_features.config import Settings\n"
            "with open_sql_store(Settings.from_env()) as store:\n"
            "    audit = AuditLog(store)\n"
            "    for i in range(60):\n"
            "        if i % 3:\n"
            "            audit.write(endpoint='GET /p' + sys.argv[1], status=200, latency_ms=i)\n"
            "        else:\n"
            "            row = audit.entry(endpoint='POST /p' + sys.argv[1], status=201, latency_ms=i)\n"
            "            audit.write_many([row] * 3)\n"
        )
        env = {**os.environ, **backend_settings.to_env()}
        procs = [subprocess.Popen([sys.executable, "-c", script, str(n)], env=env) for n in range(2)]
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
        result = audit_chain.verify(store)
        assert result.ok, result.problem
        assert result.chained_rows == 2 * (40 + 20 * 3)
