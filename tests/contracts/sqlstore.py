"""The SQL store's contract: idempotent migrations, values, placeholders and transactions alike on
every backend. Run on SQLite by tests/unit/test_sqlstore.py and on Postgres by
tests/integration/test_sqlstore.py."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from healthmate_features.backends import open_sql_store
from healthmate_features.backends.sqlstore import MIGRATIONS, SqlStore, read_json, read_ts
from healthmate_features.errors import StoreError

TABLES = {
    "schema_migrations",
    "model_runs",
    "model_metrics",
    "api_keys",
    "audit_log",
    "jobs",
    "leases",
    "revisions",
    "data_keys",
    "erasures",
    "audit_chain",
}


def table_columns(store: SqlStore) -> dict[str, list[str]]:
    """Every table of the store's schema and its columns in order."""
    if store.dialect == "sqlite":
        names = [r["name"] for r in store.query("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            t: [c["name"] for c in store.query(f"PRAGMA table_info({t})")] for t in names if not t.startswith("sqlite_")
        }
    rows = store.query(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = ? ORDER BY table_name, ordinal_position",
        (store.schema,),
    )
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r["table_name"], []).append(r["column_name"])
    return out


class SqlStoreContract:
    """The SQL store on one backend: a subclass provides the `backend_settings` fixture (the
    Settings of an empty store)."""

    def test_migrations_apply_in_order_once(self, backend_settings):
        with open_sql_store(backend_settings, migrate=False) as store:
            assert store.migrate() == [m.number for m in MIGRATIONS]
            assert store.migrate() == []
            assert store.applied_migrations() == [m.number for m in MIGRATIONS]
        with open_sql_store(backend_settings) as store:  # reopening migrates nothing
            assert store.applied_migrations() == [m.number for m in MIGRATIONS]
            assert set(table_columns(store)) == TABLES

    def test_newer_database_is_refused(self, backend_settings):
        with open_sql_store(backend_settings) as store:
            store.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (999, "from the future", datetime.now(timezone.utc)),
            )
            with pytest.raises(StoreError, match=r"\[999\].*upgrade healthmate-features"):
                store.migrate()

    def test_values_round_trip_and_placeholders(self, backend_settings):
        at = datetime(2024, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))
        with open_sql_store(backend_settings) as store:
            run_id = store.insert(
                "INSERT INTO model_runs (model_name, model_version, dataset_name, dataset_version,"
                " environment, logged_at, params) VALUES (?, ?, ?, ?, ?, ?, ?)",
                ("m", "1.0", "d", "v1", "staging", at, {"note": "100% sure?", "n": [1, 2]}),
            )
            (row,) = store.query("SELECT logged_at, params FROM model_runs WHERE id = ?", (run_id,))
            assert read_ts(row["logged_at"]) == at
            assert read_ts(row["logged_at"]).tzinfo == timezone.utc
            assert read_json(row["params"]) == {"note": "100% sure?", "n": [1, 2]}

    def test_jobs_are_claimed_once_and_fenced_by_their_attempt(self, backend_settings):
        from healthmate_features.jobs.store import JobStore

        with open_sql_store(backend_settings) as store:
            jobs = JobStore(store)
            job = jobs.create("version_ml_data", {"a": [1]}, max_attempts=2, target="dataset:x", submitted_by="cli")
            assert jobs.claim(job.job_id, worker="w:1", lease_s=0.05).attempts == 1
            assert jobs.claim(job.job_id, worker="w:2", lease_s=60) is None  # its lease is live
            time.sleep(0.1)
            taken = jobs.claim(job.job_id, worker="w:2", lease_s=60)  # lapsed: a redelivery takes it over
            assert taken.attempts == 2 and taken.worker == "w:2" and taken.params == {"a": [1]}
            assert not jobs.succeed(job.job_id, 1, {"stale": True})
            assert jobs.succeed(job.job_id, 2, {"n": 1.5})
            done = jobs.get(job.job_id)
            assert (done.status, done.result, done.lease_until) == ("succeeded", {"n": 1.5}, None)
            assert done.created_at.tzinfo == timezone.utc and done.finished_at >= done.created_at

    def test_leases_are_exclusive_until_they_lapse(self, backend_settings):
        from healthmate_features.backends.locks import SqlLeases

        with open_sql_store(backend_settings) as store:
            leases = SqlLeases(store)
            assert leases.try_acquire("dataset:x", "a", 0.05)
            assert not leases.try_acquire("dataset:x", "b", 60)
            assert leases.renew("dataset:x", "a", 0.05) and leases.holder("dataset:x") == "a"
            time.sleep(0.1)
            assert leases.holder("dataset:x") is None and not leases.renew("dataset:x", "a", 60)
            assert leases.try_acquire("dataset:x", "b", 60) and leases.holder("dataset:x") == "b"
            leases.release("dataset:x", "a")
            assert leases.holder("dataset:x") == "b"
            leases.release("dataset:x", "b")
            assert leases.holder("dataset:x") is None

    def test_transaction_rolls_back(self, backend_settings):
        with open_sql_store(backend_settings) as store:
            with pytest.raises(RuntimeError):
                with store.transaction():
                    store.execute(
                        "INSERT INTO api_keys (key_id, secret_sha256, role, created_at) VALUES (?, ?, ?, ?)",
                        ("k1", "h1", "admin", datetime.now(timezone.utc)),
                    )
                    raise RuntimeError("boom")
            assert store.query("SELECT key_id FROM api_keys") == []

    def test_concurrent_first_use_migrates_once(self, backend_settings):
        from concurrent.futures import ThreadPoolExecutor

        def first_use(_):
            with open_sql_store(backend_settings) as store:
                return store.applied_migrations()

        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(first_use, range(4)))
        assert results == [[m.number for m in MIGRATIONS]] * 4
