"""The production database's roles: `db init-roles`."""

from __future__ import annotations

from healthmate_features.backends.roles import init_roles
from healthmate_features.cli._common import echo_fields, echo_json, handles_errors, json_option, main, settings


@main.group("db")
def db_group() -> None:
    """The production Postgres: least-privilege roles."""


@db_group.command("init-roles")
@json_option
@handles_errors
def db_init_roles_cmd(as_json) -> None:
    """Create (or update) the owner role (HM_PG_OWNER_USER) and the application role (HM_PG_USER), as HM_PG_SUPERUSER.

    The owner owns the schema and tables and runs the migrations; the application role can read
    and write rows but only append to audit_log, and cannot alter, drop or create tables or
    disable triggers. Idempotent; passwords come from HM_PG_OWNER_PASSWORD and HM_PG_PASSWORD
    and are never printed."""
    report = init_roles(settings("production"))
    if as_json:
        return echo_json(report.to_dict())
    echo_fields(
        {
            "owner role": report.owner + (" (created)" if report.owner in report.created else ""),
            "application role": report.application + (" (created)" if report.application in report.created else ""),
            "database": report.database,
            "schema": report.schema,
            "migrations applied": ", ".join(map(str, report.migrations_applied)) or "none pending",
        }
    )
