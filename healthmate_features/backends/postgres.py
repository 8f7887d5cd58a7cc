"""Connections to the production profile's Postgres: the one place that opens them.

`connect(settings)` is used by the raw and feature table I/O of the production backend and by
the SQL store; every connection has the session time zone UTC, the connect timeout of the
settings and their TLS settings (HM_PG_SSLMODE, HM_PG_SSLROOTCERT, HM_PG_SSLCERT, HM_PG_SSLKEY),
and a failure to connect is a ServiceUnavailableError that names
the server and the fix (or NotIngestedError when the database does not exist yet).
"""

from __future__ import annotations

import math
import re
from typing import Any

from healthmate_features.config import Settings
from healthmate_features.errors import NotIngestedError, ServiceUnavailableError
from healthmate_features.util.sql import quote_ident

PG_HINT = "start it (`docker compose up -d postgres`) or point HM_PG_HOST/HM_PG_PORT at a running server"


def connect_timeout(settings: Settings) -> int:
    """Whole seconds for libpq's connect_timeout (it accepts integers only; 2 s is its minimum)."""
    return max(2, math.ceil(settings.connect_timeout_s))


_TLS_WORDS = ("ssl", "certificate", "no encryption", "tls")


def ssl_options(settings: Settings) -> dict[str, str]:
    """libpq's TLS connection parameters from the settings (only those set): sslmode, sslrootcert, sslcert, sslkey."""
    options = {
        "sslmode": settings.pg_sslmode,
        "sslrootcert": settings.pg_sslrootcert,
        "sslcert": settings.pg_sslcert,
        "sslkey": settings.pg_sslkey,
    }
    return {name: value for name, value in options.items() if value}


def _tls_hint(settings: Settings, message: str) -> str:
    """The fix for a TLS failure (`message` is libpq's), naming the settings; "" when it is no TLS failure."""
    text = message.lower()
    if not any(word in text for word in _TLS_WORDS):
        return ""
    if "no encryption" in text:
        return (
            f"the server accepts TLS connections only and HM_PG_SSLMODE is {settings.pg_sslmode}: "
            "set HM_PG_SSLMODE=verify-full and HM_PG_SSLROOTCERT to the CA file that signed its certificate"
        )
    if "does not match host name" in text:
        return (
            f"the server's certificate does not name HM_PG_HOST={settings.pg_host} (HM_PG_SSLMODE="
            f"{settings.pg_sslmode}): connect with a host name the certificate names"
        )
    return (
        f"check HM_PG_SSLMODE (now {settings.pg_sslmode}) and HM_PG_SSLROOTCERT (now "
        f"{'set' if settings.pg_sslrootcert else 'unset'}): it must be the CA file that signed the server's certificate"
        + (", and HM_PG_SSLCERT/HM_PG_SSLKEY the client certificate and key" if settings.pg_sslcert else "")
    )


def postgres_unavailable(settings: Settings, exc: BaseException) -> ServiceUnavailableError:
    """The error for a Postgres that cannot be reached or refuses the connection.

    A TLS failure (wrong CA, a certificate for another host name, a server that requires TLS)
    names the HM_PG_SSL* settings to fix; file paths in libpq's message are left out."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else type(exc).__name__
    hint = _tls_hint(settings, str(exc))
    if hint:
        reason = next((line for line in lines if any(word in line.lower() for word in _TLS_WORDS)), reason)
        reason = re.sub(r'"/[^"]*"', "(a file)", reason)
    what = "failed to set up TLS" if hint else f"is unreachable within {connect_timeout(settings)} s"
    return ServiceUnavailableError(
        f"PostgreSQL at {settings.pg_host}:{settings.pg_port} (database {settings.pg_database}, user "
        f"{settings.pg_user}; HM_PG_*) {what}: {reason}; {hint or PG_HINT}"
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
    extra: dict[str, Any] = {"row_factory": row_factory} if row_factory is not None else {}
    extra.update(ssl_options(settings))
    try:
        return psycopg.connect(
            host=settings.pg_host,
            port=settings.pg_port,
            user=settings.pg_user,
            password=settings.pg_password or None,
            dbname=database or settings.pg_database,
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


async def connect_async(settings: Settings, *, autocommit: bool = False, search_path: str | None = None) -> Any:
    """`connect`'s psycopg AsyncConnection (for an event loop): the same server, options and errors."""
    import psycopg

    options = "-c TimeZone=UTC" + (f" -c search_path={search_path}" if search_path else "")
    tls: dict[str, Any] = ssl_options(settings)
    try:
        return await psycopg.AsyncConnection.connect(
            host=settings.pg_host,
            port=settings.pg_port,
            user=settings.pg_user,
            password=settings.pg_password or None,
            dbname=settings.pg_database,
            connect_timeout=connect_timeout(settings),
            application_name="healthmate-features",
            options=options,
            autocommit=autocommit,
            **tls,
        )
    except psycopg.OperationalError as exc:
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
