"""Connections to the production profile's Postgres: the one place that opens them.

`connect(settings)` is used by the raw and feature table I/O of the production backend and by
the SQL store; every connection has the session time zone UTC, the connect timeout of the
settings and their sslmode, and a failure to connect is a ServiceUnavailableError that names
the server and the fix (or NotIngestedError when the database does not exist yet).
"""

from __future__ import annotations

import math
from typing import Any

from healthmate_features.config import Settings
from healthmate_features.errors import NotIngestedError, ServiceUnavailableError
from healthmate_features.util.sql import quote_ident

PG_HINT = "start it (`docker compose up -d postgres`) or point HM_PG_HOST/HM_PG_PORT at a running server"


def connect_timeout(settings: Settings) -> int:
    """Whole seconds for libpq's connect_timeout (it accepts integers only; 2 s is its minimum)."""
    return max(2, math.ceil(settings.connect_timeout_s))


def postgres_unavailable(settings: Settings, exc: BaseException) -> ServiceUnavailableError:
    """The error for a Postgres that cannot be reached or refuses the connection."""
    reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return ServiceUnavailableError(
        f"PostgreSQL at {settings.pg_host}:{settings.pg_port} (database {settings.pg_database}, user "
        f"{settings.pg_user}; HM_PG_*) is unreachable within {connect_timeout(settings)} s: {reason}; {PG_HINT}"
    )


def connect(
    settings: Settings,
    *,
    database: str | None = None,
    autocommit: bool = False,
    search_path: str | None = None,
    row_factory: Any = None,
) -> Any:
    """A psycopg connection to the settings' database (session time zone UTC), within the timeout.

    `search_path` sets the session's schema search path; `row_factory` is psycopg's (e.g. dict_row).
    Raises ServiceUnavailableError, naming the server and the fix, when it cannot connect, and
    NotIngestedError when the server answers but the database does not exist yet.
    """
    import psycopg

    options = "-c TimeZone=UTC" + (f" -c search_path={search_path}" if search_path else "")
    extra = {"row_factory": row_factory} if row_factory is not None else {}
    try:
        return psycopg.connect(
            host=settings.pg_host,
            port=settings.pg_port,
            user=settings.pg_user,
            password=settings.pg_password or None,
            dbname=database or settings.pg_database,
            sslmode=settings.pg_sslmode,
            connect_timeout=connect_timeout(settings),
            application_name="healthmate-features",
            options=options,
            autocommit=autocommit,
            **extra,
        )
    except psycopg.OperationalError as exc:
        name = database or settings.pg_database
        if f'database "{name}" does not exist' in str(exc):
            raise NotIngestedError(
                f"database {name!r} does not exist on {settings.pg_host}:{settings.pg_port}; "
                "`healthmate-features ingest --profile production --raw DIR` creates it (or fix HM_PG_DATABASE)"
            ) from exc
        raise postgres_unavailable(settings, exc) from exc


def table_name(settings: Settings, table: str) -> str:
    """Schema-qualified, quoted name of one of our tables."""
    return f"{quote_ident(settings.pg_schema)}.{quote_ident(table)}"


def ensure_database(settings: Settings) -> None:
    """Create the settings' database if it does not exist yet (connecting to `postgres` for that).

    Raises ServiceUnavailableError when the server cannot be reached.
    """
    import psycopg

    try:
        with connect(settings):
            return
    except NotIngestedError:  # connect's error for a database that does not exist
        pass
    with connect(settings, database="postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (settings.pg_database,)).fetchone()
        if not exists:
            try:
                conn.execute(f"CREATE DATABASE {quote_ident(settings.pg_database)}")
            except psycopg.errors.DuplicateDatabase:  # created concurrently
                pass
