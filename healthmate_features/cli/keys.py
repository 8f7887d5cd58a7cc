"""Keys: API keys for the HTTP API (`keys create|list|revoke`) and the data keys of encryption at
rest (`keys data-keys|rotate-data-key|encrypt-files`)."""

from __future__ import annotations

import click

from healthmate_features.access.keys import ApiKeys
from healthmate_features.backends import open_sql_store
from healthmate_features.cli._common import (
    echo_json,
    echo_table,
    handles_errors,
    json_option,
    main,
    profile_option,
    settings,
)


@main.group("keys")
def keys_group() -> None:
    """API keys (create, list, revoke) and the data keys of encryption at rest (data-keys, rotate-data-key)."""


@keys_group.command("create")
@click.option("--role", required=True, help="admin or user.")
@click.option("--user-id", type=int, default=None, help="For user keys: the user id the key belongs to.")
@click.option("--name", default=None, help="A label, e.g. ios-app.")
@profile_option
@json_option
@handles_errors
def keys_create_cmd(role, user_id, name, profile, as_json) -> None:
    """Create an API key and print its secret once (only its hash is stored)."""

    with open_sql_store(settings(profile)) as store:
        key_id, secret = ApiKeys(store).create_key(role, user_id=user_id, name=name)
    if as_json:
        return echo_json({"key_id": key_id, "secret": secret, "role": role, "user_id": user_id, "name": name})
    owner = f" for user {user_id}" if user_id is not None else ""
    click.echo(f"created {role} key {key_id}{owner}" + (f" ({name})" if name else ""))
    click.echo("secret (shown only now; send it as 'Authorization: Bearer <secret>'):")
    click.echo(secret)


@keys_group.command("list")
@click.option("--active", "active_only", is_flag=True, help="Hide revoked keys.")
@profile_option
@json_option
@handles_errors
def keys_list_cmd(active_only, profile, as_json) -> None:
    """List API keys (ids, roles, users, names; never secrets)."""

    with open_sql_store(settings(profile)) as store:
        keys = ApiKeys(store).list_keys(include_revoked=not active_only)
    if as_json:
        return echo_json([k.to_dict() for k in keys])
    if not keys:
        return click.echo("no API keys; create one with `healthmate-features keys create`")
    rows = [
        {
            **k.to_dict(),
            "created_at": f"{k.created_at:%Y-%m-%d %H:%M:%S}",
            "status": "active" if k.active else f"revoked {k.revoked_at:%Y-%m-%d %H:%M:%S}",
        }
        for k in keys
    ]
    echo_table(rows, ["key_id", "role", "user_id", "name", "created_at", "status"])


@keys_group.command("revoke")
@click.argument("key_id")
@profile_option
@json_option
@handles_errors
def keys_revoke_cmd(key_id, profile, as_json) -> None:
    """Revoke an API key: it is rejected from now on (kept for the audit log)."""

    with open_sql_store(settings(profile)) as store:
        info = ApiKeys(store).revoke(key_id)
    if as_json:
        return echo_json(info.to_dict())
    click.echo(f"revoked {info.key_id} ({info.role}) at {info.revoked_at:%Y-%m-%d %H:%M:%S} UTC")


@keys_group.command("data-keys")
@profile_option
@json_option
@handles_errors
def keys_data_keys_cmd(profile, as_json) -> None:
    """List the data keys of encryption at rest: ids and states (active, rotating, retired); never secrets."""
    from healthmate_features.governance.data_keys import data_keys

    keys = data_keys(settings(profile))
    if as_json:
        return echo_json([{"key_id": k, "state": state} for k, state in keys.items()])
    if not keys:
        return click.echo("no data key yet; the first write of health data creates one")
    echo_table([{"key_id": k, "state": state} for k, state in keys.items()], ["key_id", "state"])


def _rotation_output(report, as_json: bool) -> None:
    if as_json:
        return echo_json(report.to_dict())
    if report.created:
        click.echo(f"new data key {report.active} is active")
    elif report.resumed_from:
        click.echo(f"resuming the rotation to {report.active} (away from {', '.join(report.resumed_from)})")
    click.echo(f"re-encrypted {len(report.files)} file(s) under {report.active}")
    if report.online is not None:
        click.echo(f"re-encrypted {report.online} online value(s)")
    elif report.online_note:
        click.echo(f"online store: {report.online_note}")
    if report.retired:
        click.echo(f"retired data key(s) {', '.join(report.retired)} (kept: backups still open)")


@keys_group.command("rotate-data-key")
@profile_option
@json_option
@handles_errors
def keys_rotate_data_key_cmd(profile, as_json) -> None:
    """Create a new data key (or resume a rotation under way), re-encrypt every file and online value
    under it, then retire the old key. Safe to interrupt and run again."""
    from healthmate_features.governance.data_keys import rotate_data_key

    _rotation_output(rotate_data_key(settings(profile)), as_json)


@keys_group.command("encrypt-files")
@profile_option
@json_option
@handles_errors
def keys_encrypt_files_cmd(profile, as_json) -> None:
    """Encrypt the package's files that are still plaintext (written by an older checkout) under the active
    data key, without creating a key. Safe to interrupt and run again."""
    from healthmate_features.governance.data_keys import rotate_data_key

    _rotation_output(rotate_data_key(settings(profile), new_key=False), as_json)
