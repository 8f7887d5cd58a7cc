"""The `backend_settings` fixture: each SQL-store test runs on SQLite and on Postgres.

Import it into a test module (`from sqlbackends import backend_settings`). The Postgres case
uses conftest's `pg_dsn` (a fresh database per test: skipped locally when Postgres is down,
failing in CI).
"""

from __future__ import annotations

import pytest

from healthmate_features.config import Settings


def settings_for_dsn(dsn: str, repo_path) -> Settings:
    """Production-profile Settings pointing at the database of a libpq conninfo string."""
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(dsn)
    return Settings.from_env(
        repo_path=repo_path,
        profile="production",
        pg_host=info.get("host", "127.0.0.1"),
        pg_port=int(info.get("port", 5432)),
        pg_user=info.get("user", "postgres"),
        pg_password=info.get("password", ""),
        pg_database=info["dbname"],
        pg_schema="healthmate",
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The HM_* environment variables that make `Settings.from_env()` return `settings`."""
    return settings.to_env()


@pytest.fixture(params=["sqlite", "postgres"])
def backend_settings(request, tmp_path) -> Settings:
    """Settings of an empty SQL store: embedded SQLite under tmp_path, or a fresh Postgres DB."""
    if request.param == "sqlite":
        return Settings.from_env(repo_path=tmp_path, profile="embedded")
    return settings_for_dsn(request.getfixturevalue("pg_dsn"), tmp_path)
