"""Settings for a test's SQL store or production profile, and the Postgres database behind it."""

from __future__ import annotations

from pathlib import Path

from healthmate_features.config import Settings


def settings_for_dsn(dsn: str, repo_path: Path) -> Settings:
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
