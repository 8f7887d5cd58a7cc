"""The audit chain on Postgres (tests/contracts/audit_chain.py), and least privilege: the
application role made by `db init-roles` cannot rewrite the audit log by any of the ways the
superuser can (UPDATE, DELETE, TRUNCATE, ALTER TABLE ... DISABLE TRIGGER, DROP TRIGGER) nor create
tables. The roles are cluster-wide: named uniquely per test and dropped at its end."""

from __future__ import annotations

import dataclasses
import uuid

import psycopg
import pytest
from click.testing import CliRunner

from healthmate_features.access import audit_chain
from healthmate_features.access.audit import AuditLog
from healthmate_features.access.keys import ApiKeys
from healthmate_features.backends import open_sql_store, postgres
from healthmate_features.backends.roles import init_roles
from healthmate_features.cli import main
from healthmate_features.config import Settings
from healthmate_features.errors import ConfigError

from ..contracts.audit_chain import AuditChainContract, write_rows

pytestmark = pytest.mark.postgres


class TestAuditChainOnPostgres(AuditChainContract):
    @pytest.fixture
    def backend_settings(self, postgres_settings):
        return postgres_settings


@pytest.fixture
def roles(postgres_settings):
    """Settings whose HM_PG_USER is a fresh application role and HM_PG_OWNER_USER a fresh owner (not yet created)."""
    tag = uuid.uuid4().hex[:10]
    settings = dataclasses.replace(
        postgres_settings,
        pg_user=f"hm_app_{tag}",
        pg_password=f"app-secret-{tag}",
        pg_owner_user=f"hm_owner_{tag}",
        pg_owner_password=f"owner-secret-{tag}",
        pg_superuser=postgres_settings.pg_user,
    )
    yield settings
    admin = dataclasses.replace(settings, pg_user=settings.pg_superuser, pg_password="")
    with postgres.connect(admin, autocommit=True) as conn:
        for name in (settings.pg_user, settings.pg_owner_user):
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                conn.execute(f'DROP OWNED BY "{name}" CASCADE')
    with postgres.connect(admin, database="postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{settings.pg_database}" WITH (FORCE)')
        for name in (settings.pg_user, settings.pg_owner_user):
            conn.execute(f'DROP ROLE IF EXISTS "{name}"')


def test_init_roles_is_idempotent_and_never_prints_a_password(roles: Settings):
    first = CliRunner().invoke(main, ["db", "init-roles", "--json"], env=roles.to_env(), catch_exceptions=False)
    assert first.exit_code == 0, first.output
    report = first.stdout
    assert '"created"' in report and roles.pg_user in report and roles.pg_owner_user in report
    assert 7 in __import__("json").loads(report)["migrations_applied"]
    again = CliRunner().invoke(main, ["db", "init-roles"], env=roles.to_env(), catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert "none pending" in again.output and "(created)" not in again.output
    for output in (first.output, again.output):
        assert roles.pg_password not in output and roles.pg_owner_password not in output
    with postgres.connect(roles) as conn:  # the application role logs in with its password
        owner = conn.execute(
            "SELECT tableowner FROM pg_tables WHERE schemaname = %s AND tablename = 'audit_log'", (roles.pg_schema,)
        ).fetchone()
    assert owner == (roles.pg_owner_user,)


def test_init_roles_refuses_missing_or_clashing_names(postgres_settings):
    with pytest.raises(ConfigError, match="HM_PG_OWNER_USER is not set"):
        init_roles(dataclasses.replace(postgres_settings, pg_user="hm_app_x"))
    with pytest.raises(ConfigError, match="must be another role than the owner"):
        init_roles(dataclasses.replace(postgres_settings, pg_user="hm_same", pg_owner_user="hm_same"))
    with pytest.raises(ConfigError, match="is the superuser"):
        init_roles(dataclasses.replace(postgres_settings, pg_owner_user="hm_owner_x"))


REWRITES = [
    "UPDATE {s}.audit_log SET status = 200",
    "DELETE FROM {s}.audit_log",
    "TRUNCATE {s}.audit_log",
    "ALTER TABLE {s}.audit_log DISABLE TRIGGER USER",
    "ALTER TABLE {s}.audit_log DISABLE TRIGGER audit_log_no_update_delete",
    "DROP TRIGGER audit_log_no_update_delete ON {s}.audit_log",
    "DROP INDEX {s}.audit_log_prev_hash_idx",
    "ALTER TABLE {s}.audit_log ADD COLUMN note TEXT",
    "DROP TABLE {s}.audit_log",
    "INSERT INTO {s}.audit_chain (name, unchained_through, started_at) VALUES ('x', 0, now())",
    "CREATE TABLE {s}.shadow_audit (id INTEGER)",
    "CREATE TABLE public.shadow_audit (id INTEGER)",
    "CREATE SCHEMA shadow",
]


def test_the_application_role_cannot_rewrite_the_audit_log(roles: Settings):
    init_roles(roles)
    with open_sql_store(roles) as store:  # as the application role: all migrated, nothing to create
        audit = AuditLog(store)
        write_rows(audit, 3)  # it can append
        assert audit_chain.verify(store).ok
        keys = ApiKeys(store)  # and do its other work: keys (whose revision trigger updates a row)
        created = keys.create_key("admin")
        keys.revoke(created.key_id)
    refused = []
    with postgres.connect(roles, autocommit=True) as conn:
        for statement in REWRITES:
            try:
                conn.execute(statement.format(s=roles.pg_schema))
            except psycopg.errors.InsufficientPrivilege:
                refused.append(statement)
    assert refused == REWRITES
    with open_sql_store(roles) as store:
        result = audit_chain.verify(store)
    assert (result.ok, result.chained_rows) == (True, 3)


def test_a_new_migration_runs_as_the_owner(roles: Settings):
    init_roles(roles)
    admin = dataclasses.replace(roles, pg_user=roles.pg_superuser, pg_password="")
    with postgres.connect(admin, autocommit=True) as conn:  # as if migration 7 were new to this database
        conn.execute(f'DROP TABLE "{roles.pg_schema}".audit_chain')
        conn.execute(f'ALTER TABLE "{roles.pg_schema}".audit_log DROP COLUMN prev_hash, DROP COLUMN row_hash')
        conn.execute(f'DELETE FROM "{roles.pg_schema}".schema_migrations WHERE version = 7')
    with open_sql_store(roles) as store:
        assert 7 in store.applied_migrations()
        write_rows(AuditLog(store), 2)
        assert audit_chain.verify(store).ok
