"""The SQL store on Postgres (the contract of tests/contracts/sqlstore.py); the same schema as on
SQLite; a lost connection is reported, then reopened."""

from __future__ import annotations

import pytest

from healthmate_features.backends import open_sql_store
from healthmate_features.config import Settings
from healthmate_features.errors import ServiceUnavailableError

from ..contracts.sqlstore import SqlStoreContract, table_columns

pytestmark = pytest.mark.postgres


class TestSqlStoreOnPostgres(SqlStoreContract):
    @pytest.fixture
    def backend_settings(self, postgres_settings):
        return postgres_settings


def test_same_schema_on_both_backends(tmp_path, pg_dsn, settings_for_dsn):
    with open_sql_store(Settings.from_env(repo_path=tmp_path, profile="embedded")) as lite:
        with open_sql_store(settings_for_dsn(pg_dsn, tmp_path)) as pg:
            assert table_columns(lite) == table_columns(pg)


def test_lost_postgres_connection_is_reported_then_reopened(tmp_path, pg_dsn, settings_for_dsn):
    import psycopg

    with open_sql_store(settings_for_dsn(pg_dsn, tmp_path)) as store:
        pid = store.query("SELECT pg_backend_pid() AS pid")[0]["pid"]
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(ServiceUnavailableError, match="lost the connection"):
            store.query("SELECT 1 AS one")
        assert store.query("SELECT 1 AS one") == [{"one": 1}]
