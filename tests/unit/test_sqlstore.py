"""The SQL store on SQLite (the contract of tests/contracts/sqlstore.py), and Postgres failures that need no server."""

from __future__ import annotations

import socket
import time

import pytest

from healthmate_features.backends import open_sql_store
from healthmate_features.config import Settings
from healthmate_features.errors import ServiceUnavailableError

from ..contracts.sqlstore import SqlStoreContract


class TestSqlStoreOnSqlite(SqlStoreContract):
    @pytest.fixture
    def backend_settings(self, sqlite_settings):
        return sqlite_settings


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
