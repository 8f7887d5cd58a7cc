"""The access contract: API keys (hashed at rest, revocable) and the append-only, PHI-free audit
log behave alike on every backend. Run on SQLite by tests/unit/test_auth_audit.py and on Postgres
by tests/integration/test_auth_audit.py."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from healthmate_features.access.audit import AuditLog
from healthmate_features.access.keys import ApiKeys, Principal, bearer_token
from healthmate_features.backends import open_sql_store
from healthmate_features.errors import ApiKeyError, AuditError, AuthError

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=timezone.utc)


def _all_rows(store) -> str:
    tables = ("api_keys", "audit_log", "model_runs", "model_metrics", "schema_migrations")
    return repr([store.query(f"SELECT * FROM {t}") for t in tables])


class AccessContract:
    """API keys and the audit log on one backend: a subclass provides the `backend_settings` fixture."""

    @pytest.fixture
    def store(self, backend_settings):
        with open_sql_store(backend_settings) as store:
            yield store

    # -- API keys --------------------------------------------------------------------------

    def test_create_and_authenticate(self, store):
        keys = ApiKeys(store)
        admin_id, admin_secret = keys.create_key("admin", name="ops")
        user = keys.create_key("user", user_id=42, name="ios-app")
        assert admin_secret.startswith(admin_id + ".") and len(admin_secret) > 50
        assert keys.authenticate(admin_secret) == Principal(admin_id, "admin", None)
        principal = keys.authenticate(bearer_token(f"Bearer {user.secret}"))
        assert principal == Principal(user.key_id, "user", 42)
        assert principal.may_access_user(42) and not principal.may_access_user(43)
        assert keys.authenticate(admin_secret).may_access_user(43)

    def test_secrets_are_stored_only_as_hashes(self, store, backend_settings):
        keys = ApiKeys(store)
        new = keys.create_key("user", user_id=7)
        rows = _all_rows(store)
        assert new.secret not in rows
        assert new.secret.split(".", 1)[1] not in rows
        assert hashlib.sha256(new.secret.encode()).hexdigest() in rows
        listed = [k.to_dict() for k in keys.list_keys()]
        assert new.secret not in repr(listed) and "sha256" not in repr(listed)
        if store.dialect == "sqlite":
            store.close()  # checkpoint the WAL, then look at every byte on disk
            data_dir = backend_settings.sql_path.parent
            on_disk = b"".join(p.read_bytes() for p in data_dir.glob("healthmate.db*"))
            assert new.key_id.encode() in on_disk
            assert new.secret.split(".", 1)[1].encode() not in on_disk

    @pytest.mark.parametrize(
        "token",
        [None, "", "Bearer ", "not-a-key", "hmk_0123456789abcdef.short", "hmk_0123456789abcdef." + "A" * 43],
    )
    def test_bad_tokens_are_rejected_without_echo(self, store, token):
        ApiKeys(store).create_key("admin")
        with pytest.raises(AuthError) as info:
            ApiKeys(store).authenticate(token)
        assert "keys create" in str(info.value)
        secret_part = (token or "").strip().removeprefix("Bearer").strip().split(".")[-1]
        if secret_part:
            assert secret_part not in str(info.value)

    def test_a_valid_key_id_with_a_wrong_secret_is_rejected(self, store):
        keys = ApiKeys(store)
        key_id, secret = keys.create_key("admin")
        forged = secret[:-1] + ("A" if secret[-1] != "A" else "B")
        with pytest.raises(AuthError, match="invalid API key"):
            keys.authenticate(forged)

    @pytest.mark.parametrize(
        "header, message",
        [
            (None, "missing API key"),
            ("", "missing API key"),
            ("hmk_0123456789abcdef." + "A" * 43, "a bare API key was sent; send 'Authorization: Bearer <key>'"),
            ("Basic dXNlcjpwYXNz", "without the Bearer scheme was sent; send 'Authorization: Bearer <key>'"),
        ],
    )
    def test_an_authorization_header_needs_the_bearer_scheme(self, header, message):
        with pytest.raises(AuthError, match=re.escape(message)) as info:
            bearer_token(header)
        assert "A" * 43 not in str(info.value) and "dXNlcjpwYXNz" not in str(info.value)
        assert bearer_token("Bearer  hmk_x.y ") == "hmk_x.y" == bearer_token("bearer hmk_x.y")

    def test_every_change_of_a_key_moves_the_revision_in_its_transaction(self, store, backend_settings):
        keys = ApiKeys(store)
        seen = [keys.revision()]
        new = keys.create_key("user", user_id=5)
        seen.append(keys.revision())
        keys.revoke(new.key_id)
        seen.append(keys.revision())
        with open_sql_store(backend_settings) as other:  # another connection's change, seen from here
            ApiKeys(other).create_key("admin")
        seen.append(keys.revision())
        assert seen == sorted(set(seen)), seen  # strictly increasing
        with pytest.raises(RuntimeError), store.transaction():  # a rolled-back change leaves it
            store.execute("UPDATE api_keys SET name = ?", ("x",))
            raise RuntimeError("roll back")
        assert keys.revision() == seen[-1]
        before_runs = store.revisions()["model_runs"]
        from healthmate_features.tracking import Tracker

        Tracker(store).log_metrics(
            "m", version="1", dataset="d@1.0.0", environment="staging", metrics={"auc": 0.5}, external_dataset=True
        )
        assert store.revisions()["model_runs"] > before_runs and keys.revision() == seen[-1]

    def test_revoked_keys_are_rejected(self, store):
        keys = ApiKeys(store)
        kept = keys.create_key("admin")
        gone = keys.create_key("user", user_id=3)
        info = keys.revoke(gone.key_id)
        assert not info.active and info.revoked_at is not None
        with pytest.raises(AuthError, match=f"API key {gone.key_id} was revoked"):
            keys.authenticate(gone.secret)
        assert keys.authenticate(kept.secret).key_id == kept.key_id
        assert keys.revoke(gone.key_id).revoked_at == info.revoked_at  # idempotent
        assert [k.key_id for k in keys.list_keys(include_revoked=False)] == [kept.key_id]
        assert {k.key_id: k.active for k in keys.list_keys()} == {kept.key_id: True, gone.key_id: False}
        with pytest.raises(ApiKeyError, match="no API key with id 'hmk_nope'"):
            keys.revoke("hmk_nope")

    @pytest.mark.parametrize(
        "role, kwargs, match",
        [
            ("root", {}, "role 'root' is unknown; use one of admin, user"),
            ("user", {}, "needs the positive integer user id"),
            ("user", {"user_id": 0}, "needs the positive integer user id"),
            ("user", {"user_id": "42"}, "needs the positive integer user id"),
            ("admin", {"user_id": 42}, "admin keys are not tied to a user"),
            ("admin", {"name": "x" * 101}, "at most 100 characters"),
        ],
    )
    def test_invalid_key_requests(self, store, role, kwargs, match):
        with pytest.raises(ApiKeyError, match=match):
            ApiKeys(store).create_key(role, **kwargs)
        assert ApiKeys(store).list_keys() == []

    # -- audit -----------------------------------------------------------------------------

    def test_write_and_query(self, store):
        audit = AuditLog(store)
        key = "hmk_0123456789abcdef"
        audit.write(
            endpoint="GET /api/v1/ml-data-preparation/features/extract",
            status=200,
            latency_ms=3.5,
            key_id=key,
            role="user",
            target="user:42",
            at=T0,
        )
        audit.write(
            endpoint="POST /api/v1/ml-data-preparation/datasets/prepare",
            status=403,
            latency_ms=1,
            key_id=key,
            role="user",
            target="dataset:health_risk@v3",
            at=T0 + timedelta(seconds=1),
        )
        audit.write(endpoint="/health", status=401, latency_ms=0.2, at=T0 + timedelta(seconds=2))

        entries = audit.query()
        assert [e.status for e in entries] == [401, 403, 200]  # newest first
        assert entries[0].key_id is None and entries[0].role is None
        assert entries[2].at == T0 and entries[2].target == "user:42" and entries[2].latency_ms == 3.5
        assert [e.status for e in audit.query(key_id=key)] == [403, 200]
        assert [e.status for e in audit.query(target="user:42")] == [200]
        assert [e.status for e in audit.query(status=401)] == [401]
        assert [e.status for e in audit.query(since=T0 + timedelta(seconds=1))] == [401, 403]
        assert [e.status for e in audit.query(until=T0 + timedelta(seconds=1))] == [200]
        assert [e.status for e in audit.query(limit=1)] == [401]
        assert entries[0].to_dict()["at"] == (T0 + timedelta(seconds=2)).isoformat()

    def test_write_many_commits_a_batch_together(self, store):
        audit = AuditLog(store)
        rows = [audit.entry(endpoint="/health", status=200, latency_ms=float(i)) for i in range(50)]
        audit.write_many(rows)
        assert sorted(e.latency_ms for e in audit.query()) == [float(i) for i in range(50)]
        with pytest.raises(AuditError, match="status"):
            audit.entry(endpoint="/health", status=99, latency_ms=1.0)
        import psycopg

        refused = (sqlite3.IntegrityError, psycopg.errors.NotNullViolation)
        with pytest.raises(refused):  # one bad row (a NULL endpoint) and none of the batch is kept
            audit.write_many([rows[0], (T0, None, None, None, None, 200, 1.0)])
        assert len(audit.query(limit=1000)) == 50

    def test_update_and_delete_are_refused_by_the_database(self, store):
        audit = AuditLog(store)
        audit.write(endpoint="/health", status=200, latency_ms=1.0)

        def refused(operation: str):
            """The error the database's own trigger raises (the SQL store passes it through)."""
            if store.dialect == "sqlite":  # RAISE(ABORT, ...) in a trigger
                return pytest.raises(sqlite3.IntegrityError, match=r"^audit_log is append-only$")
            import psycopg  # RAISE EXCEPTION in the trigger function

            return pytest.raises(
                psycopg.errors.RaiseException, match=rf"^audit_log is append-only \({operation} refused\)"
            )

        with refused("UPDATE"):
            store.execute("UPDATE audit_log SET status = ?", (500,))
        with refused("DELETE"):
            store.execute("DELETE FROM audit_log")
        if store.dialect == "postgres":
            with refused("TRUNCATE"):
                store.execute("TRUNCATE audit_log")
        assert [e.status for e in audit.query()] == [200]
        # nor does the library offer a way to change it: writing and reading are all there is
        assert {name for name in vars(AuditLog) if not name.startswith("_")} == {
            "write",
            "write_many",
            "entry",
            "query",
            "append_chained",  # what write and write_many call: appends, chained
        }

    def test_only_the_listed_fields_can_be_logged(self, store):
        audit = AuditLog(store)
        ok = dict(endpoint="/health", status=200, latency_ms=1.0)
        with pytest.raises(TypeError):
            audit.write(**ok, body={"blood_glucose": 180})
        with pytest.raises(TypeError):
            audit.write(**ok, blood_glucose=180)
        bad = [
            {"target": "user:42 blood_glucose=180"},
            {"target": "blood glucose 180 mg/dL"},
            {"target": {"user_id": 42, "blood_glucose": 180}},
            {"endpoint": "/api/v1/ml-data-preparation/data/preprocess?blood_glucose=180"},
            {"endpoint": "GET /features {'steps': 12000}"},
            {"key_id": "hmk_0123456789abcdef.the-secret-token"},
            {"role": "doctor"},
            {"status": 1200},
            {"status": "ok"},
            {"latency_ms": -1.0},
            {"latency_ms": float("nan")},
            {"at": datetime(2024, 1, 1)},
        ]
        for change in bad:
            with pytest.raises(AuditError):
                audit.write(**{**ok, **change})
        assert audit.query() == []
        if store.dialect == "sqlite":
            columns = {c["name"] for c in store.query("PRAGMA table_info(audit_log)")}
        else:
            columns = {
                c["column_name"]
                for c in store.query(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = ?", ("audit_log",)
                )
            }
        chain = {"prev_hash", "row_hash"}  # the hash chain (access.audit_chain), never free text
        assert columns == {"id", "at", "key_id", "role", "endpoint", "target", "status", "latency_ms", *chain}

    def test_query_limit_is_bounded(self, store):
        with pytest.raises(AuditError, match="limit"):
            AuditLog(store).query(limit=0)
        with pytest.raises(AuditError, match="limit"):
            AuditLog(store).query(limit=10_001)

    # -- CLI -------------------------------------------------------------------------------

    def test_cli_keys_create_list_revoke(self, backend_settings):
        import json

        from click.testing import CliRunner

        from healthmate_features.cli import main

        runner = CliRunner(env=backend_settings.to_env())

        def run(*args, ok=True):
            result = runner.invoke(main, ["keys", *args])
            assert (result.exit_code == 0) is ok, result.output
            return result.output

        out = run("create", "--role", "admin", "--name", "ops")
        key_id, secret = out.split()[3], out.strip().splitlines()[-1]
        assert out.startswith(f"created admin key {key_id} (ops)")
        user = json.loads(run("create", "--role", "user", "--user-id", "42", "--json"))
        assert user["user_id"] == 42 and user["secret"].startswith(user["key_id"] + ".")
        assert "needs the positive integer user id" in run("create", "--role", "user", ok=False)

        listing = run("list")
        assert key_id in listing and user["key_id"] in listing
        assert secret not in listing and user["secret"] not in listing
        assert secret not in run("list", "--json")

        assert f"revoked {user['key_id']} (user)" in run("revoke", user["key_id"])
        listed = {k["key_id"]: k["active"] for k in json.loads(run("list", "--json"))}
        assert listed == {key_id: True, user["key_id"]: False}
        assert key_id in run("list", "--active") and user["key_id"] not in run("list", "--active")
        assert "no API key with id 'hmk_nope'" in run("revoke", "hmk_nope", ok=False)

        with open_sql_store(backend_settings) as store:  # what the CLI printed is what the API accepts
            keys = ApiKeys(store)
            assert keys.authenticate(secret).role == "admin"
            with pytest.raises(AuthError, match="revoked"):
                keys.authenticate(user["secret"])
