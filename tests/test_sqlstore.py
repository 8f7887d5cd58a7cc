"""The SQL store: same schema on SQLite and Postgres, idempotent migrations, no hangs."""

from __future__ import annotations

import socket
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlbackends import backend_settings  # noqa: F401  (fixture)

from healthmate_features.backends import open_sql_store
from healthmate_features.backends.sqlstore import MIGRATIONS, SqlStore, read_json, read_ts
from healthmate_features.config import Settings
from healthmate_features.errors import ServiceUnavailableError, StoreError

TABLES = {"schema_migrations", "model_runs", "model_metrics", "api_keys", "audit_log"}


def _columns(store: SqlStore) -> dict[str, list[str]]:
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


def test_migrations_apply_in_order_once(backend_settings):
    with open_sql_store(backend_settings, migrate=False) as store:
        assert store.migrate() == [m.number for m in MIGRATIONS]
        assert store.migrate() == []
        assert store.applied_migrations() == [m.number for m in MIGRATIONS]
    with open_sql_store(backend_settings) as store:  # reopening migrates nothing
        assert store.applied_migrations() == [m.number for m in MIGRATIONS]
        assert set(_columns(store)) == TABLES


def test_same_schema_on_both_backends(tmp_path, pg_dsn):
    from sqlbackends import settings_for_dsn

    with open_sql_store(Settings.from_env(repo_path=tmp_path, profile="embedded")) as lite:
        with open_sql_store(settings_for_dsn(pg_dsn, tmp_path)) as pg:
            assert _columns(lite) == _columns(pg)


def test_newer_database_is_refused(backend_settings):
    with open_sql_store(backend_settings) as store:
        store.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            (999, "from the future", datetime.now(timezone.utc)),
        )
        with pytest.raises(StoreError, match=r"\[999\].*upgrade healthmate-features"):
            store.migrate()


def test_values_round_trip_and_placeholders(backend_settings):
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


def test_transaction_rolls_back(backend_settings):
    with open_sql_store(backend_settings) as store:
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.execute(
                    "INSERT INTO api_keys (key_id, secret_sha256, role, created_at) VALUES (?, ?, ?, ?)",
                    ("k1", "h1", "admin", datetime.now(timezone.utc)),
                )
                raise RuntimeError("boom")
        assert store.query("SELECT key_id FROM api_keys") == []


def test_embedded_store_lives_under_data(tmp_path):
    settings = Settings.from_env(repo_path=tmp_path, profile="embedded")
    with open_sql_store(settings):
        pass
    assert settings.sql_path == tmp_path / "data" / "healthmate.db"
    assert settings.sql_path.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_postgres_names_host_port_and_fix(tmp_path):
    port = _free_port()  # nothing listens there
    settings = Settings.from_env(repo_path=tmp_path, profile="production", pg_port=port)
    with pytest.raises(ServiceUnavailableError, match=rf"127\.0\.0\.1:{port}.*HM_PG_HOST"):
        open_sql_store(settings)


def test_silent_postgres_times_out(tmp_path):
    with socket.socket() as server:  # accepts TCP connections, never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        settings = Settings.from_env(repo_path=tmp_path, profile="production", pg_port=port, connect_timeout_s=1)
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError, match=rf"127\.0\.0\.1:{port}"):
            open_sql_store(settings)
        assert time.monotonic() - started < 10


def test_concurrent_first_use_migrates_once(backend_settings):
    from concurrent.futures import ThreadPoolExecutor

    def first_use(_):
        with open_sql_store(backend_settings) as store:
            return store.applied_migrations()

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(first_use, range(4)))
    assert results == [[m.number for m in MIGRATIONS]] * 4


def test_lost_postgres_connection_is_reported_then_reopened(tmp_path, pg_dsn):
    import psycopg
    from sqlbackends import settings_for_dsn

    with open_sql_store(settings_for_dsn(pg_dsn, tmp_path)) as store:
        pid = store.query("SELECT pg_backend_pid() AS pid")[0]["pid"]
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(ServiceUnavailableError, match="lost the connection"):
            store.query("SELECT 1 AS one")
        assert store.query("SELECT 1 AS one") == [{"one": 1}]
