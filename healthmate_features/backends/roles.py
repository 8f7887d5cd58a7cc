"""Least privilege on Postgres: an owner role for the tables and migrations, an application role for the rest.

    owner (HM_PG_OWNER_USER)   owns HM_PG_SCHEMA and every table in it, runs the migrations
    application (HM_PG_USER)   what the API, CLI and workers connect as: reads and writes rows;
                               audit_log, audit_chain and schema_migrations: SELECT (and INSERT
                               into audit_log) only; owns nothing, so it cannot ALTER, DROP or
                               disable a trigger of a table, and it has no CREATE on the schema
                               or the database, so it cannot create tables

`init_roles(settings)` sets this up as the superuser (HM_PG_SUPERUSER), idempotently: run it
again after an upgrade and it migrates and grants what is new. Passwords come from the settings
(HM_PG_PASSWORD, HM_PG_OWNER_PASSWORD) and are never printed or logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from healthmate_features.backends import postgres
from healthmate_features.config import Settings
from healthmate_features.errors import ConfigError

_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Tables the application role may only read (audit_log: and append to).
READ_ONLY_TABLES = ("audit_log", "audit_chain", "schema_migrations")


@dataclass(frozen=True)
class RolesReport:
    """What `init_roles` did: the roles (and which of them it created), where, the migrations it applied."""

    owner: str
    application: str
    database: str
    schema: str
    created: tuple[str, ...]
    migrations_applied: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (no passwords)."""
        return {
            "owner": self.owner,
            "application": self.application,
            "database": self.database,
            "schema": self.schema,
            "created": list(self.created),
            "migrations_applied": list(self.migrations_applied),
        }


def separate_owner(settings: Settings) -> bool:
    """Whether migrations run as an owner role other than the connecting one (HM_PG_OWNER_USER set and different)."""
    return bool(settings.pg_owner_user) and settings.pg_owner_user != settings.pg_user


def owner_settings(settings: Settings) -> Settings:
    """The settings with the owner role's credentials in place of the application role's."""
    return replace(settings, pg_user=settings.pg_owner_user, pg_password=settings.pg_owner_password)


def _check(settings: Settings) -> None:
    if not settings.pg_owner_user:
        raise ConfigError(
            "HM_PG_OWNER_USER is not set: name the owner role (e.g. healthmate_owner) and set HM_PG_USER "
            "to the application role (e.g. healthmate_app)"
        )
    names = {"HM_PG_USER": settings.pg_user, "HM_PG_OWNER_USER": settings.pg_owner_user}
    for variable, name in names.items():
        if not _ROLE.match(name):
            raise ConfigError(f"{variable}={name!r} is not a plain role name; use lowercase letters, digits, _")
        if name == settings.pg_superuser:
            raise ConfigError(
                f"{variable}={name!r} is the superuser (HM_PG_SUPERUSER): the roles must be others, "
                "e.g. healthmate_owner and healthmate_app"
            )
    if settings.pg_user == settings.pg_owner_user:
        raise ConfigError(
            f"HM_PG_USER and HM_PG_OWNER_USER are both {settings.pg_user!r}: the application role must be "
            "another role than the owner, e.g. healthmate_app"
        )


def init_roles(settings: Settings) -> RolesReport:
    """Create or update the owner and application roles, migrate as the owner, grant the application role its rights.

    Side effects, on the server of the settings: connects as HM_PG_SUPERUSER; creates the
    database if missing; creates the roles (LOGIN, no superuser, no CREATEDB/CREATEROLE) or
    resets their passwords; gives the schema and the tables already in it to the owner; applies
    the pending migrations as the owner; sets the application role's privileges (module
    docstring), also for tables the owner creates later. Raises ConfigError for missing or
    clashing role names, ServiceUnavailableError when the server cannot be reached."""
    from psycopg import sql

    from healthmate_features.backends.sqlstore import SqlStore

    _check(settings)
    admin = replace(settings, pg_user=settings.pg_superuser, pg_password=settings.pg_superuser_password)
    postgres.ensure_database(admin)
    owner, app = sql.Identifier(settings.pg_owner_user), sql.Identifier(settings.pg_user)
    schema, database = sql.Identifier(settings.pg_schema), sql.Identifier(settings.pg_database)
    created: list[str] = []
    with postgres.connect(admin, autocommit=True) as conn:
        for name, password in (
            (settings.pg_owner_user, settings.pg_owner_password),
            (settings.pg_user, settings.pg_password),
        ):
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            conn.execute(
                sql.SQL("{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS PASSWORD {}").format(
                    sql.SQL("ALTER" if exists else "CREATE"),
                    sql.Identifier(name),
                    sql.Literal(password) if password else sql.SQL("NULL"),
                )
            )
            if not exists:
                created.append(name)
        conn.execute(sql.SQL("GRANT CONNECT, CREATE ON DATABASE {} TO {}").format(database, owner))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, app))
        conn.execute(sql.SQL("REVOKE CREATE ON DATABASE {} FROM {}").format(database, app))
        # Feast's registry tables go to `public` (created by the owner's `apply`; PostgreSQL 15
        # lets no one else create there); the application role only uses them.
        conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(owner))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(app))
        conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(app))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(schema, owner))
        conn.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(schema, owner))
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tableowner <> %s",
            (settings.pg_schema, settings.pg_owner_user),
        ).fetchall()
        for (table,) in tables:
            conn.execute(sql.SQL("ALTER TABLE {}.{} OWNER TO {}").format(schema, sql.Identifier(table), owner))
    store = SqlStore.postgres(owner_settings(settings))
    try:
        applied = store.migrate()
    finally:
        store.close()
    grant_application(settings)
    return RolesReport(
        settings.pg_owner_user,
        settings.pg_user,
        settings.pg_database,
        settings.pg_schema,
        tuple(created),
        tuple(applied),
    )


def grant_application(settings: Settings) -> None:
    """Set the application role's privileges on the schema (module docstring), as the owner; rows of
    the owner's tables in `public` (Feast's registry) too.

    Side effect: GRANT/REVOKE statements; tables the owner creates later get the same rights
    (ALTER DEFAULT PRIVILEGES), except that a new append-only table needs its own REVOKE here."""
    from psycopg import sql

    schema, app = sql.Identifier(settings.pg_schema), sql.Identifier(settings.pg_user)
    owner = sql.Identifier(settings.pg_owner_user)
    read_only = sql.SQL(", ").join(sql.SQL("{}.{}").format(schema, sql.Identifier(t)) for t in READ_ONLY_TABLES)
    statements = [
        sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(schema),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, app),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}").format(schema, app),
        sql.SQL("REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON {} FROM {}").format(read_only, app),
        sql.SQL("GRANT INSERT ON {}.audit_log TO {}").format(schema, app),
        sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(schema, app),
        sql.SQL(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}"
        ).format(owner, schema, app),
        sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT USAGE, SELECT ON SEQUENCES TO {}").format(
            owner, schema, app
        ),
        # Feast's registry tables live in `public` (README "Settings"), created by the owner's `apply`.
        sql.SQL(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}"
        ).format(owner, app),
    ]
    public_tables = "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tableowner = current_user"
    with postgres.connect(owner_settings(settings), autocommit=True) as conn:
        for (table,) in conn.execute(public_tables).fetchall():
            statements.append(
                sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON public.{} TO {}").format(sql.Identifier(table), app)
            )
        for statement in statements:
            conn.execute(statement)
