"""Governance: `erase` (one person everywhere, `--verify` to scan, `--list` for the ledger)."""

from __future__ import annotations

import getpass

import click

from healthmate_features.cli._common import (
    echo_fields,
    echo_json,
    echo_table,
    handles_errors,
    json_option,
    main,
    profile_option,
    settings,
)


def _actor() -> str:
    """Who runs the command, for the certificate: `cli:<login name>`."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


@main.command("erase")
@click.option("--user-id", type=click.IntRange(min=0), default=None, help="The HealthMate user id to erase.")
@click.option("--reason", default=None, help="Why (kept in the certificate; one line, no health details).")
@click.option(
    "--verify", "verify", is_flag=True, help="Only scan every store for the user; exit 1 if anything remains."
)
@click.option(
    "--list", "list_all", is_flag=True, help="List the erasures in the ledger (no user ids: they are not kept)."
)
@profile_option
@json_option
@handles_errors
def erase_cmd(user_id, reason, verify, list_all, profile, as_json) -> None:
    """Erase one user from every store: raw, ingested and rejects files, raw and feature tables, the
    online store and dataset versions (redacted, still verifiable). Safe to interrupt and re-run.

    Writes a certificate (data/erasures/<erasure id>.json and the ledger in the SQL store)."""
    from healthmate_features.governance import erase_user, list_erasures, scan_user

    s = settings(profile)
    if list_all:
        rows = list_erasures(s)
        if as_json:
            return echo_json(rows)
        if not rows:
            return click.echo("no erasures in the ledger")
        return echo_table(
            rows, ["erasure_id", "status", "requested_at", "completed_at", "removed_total", "certificate"]
        )
    if user_id is None:
        raise click.UsageError("pass --user-id N (or --list)")
    if verify:
        scan = scan_user(user_id, s)
        if as_json:
            echo_json({"user_id": user_id, **scan.to_dict()})
        else:
            where = f" (erasure {scan.erasure['erasure_id']}, {scan.erasure['status']})" if scan.erasure else ""
            if scan.clean:
                click.echo(f"user {user_id}: nothing left in any store: 0 rows, 0 keys{where}")
            else:
                click.echo(f"user {user_id}: {scan.total} row(s) or key(s) remain{where}:")
                for step, places in scan.remaining.items():
                    for place, n in places.items():
                        click.echo(f"  {step}: {place}: {n}")
            kept = {k: v for k, v in scan.kept.items() if v}
            if kept:
                click.echo(
                    "kept by design (README 'Erasure, retention and exports'): "
                    + ", ".join(f"{k}: {v}" for k, v in kept.items())
                )
            if scan.sources:
                click.echo(
                    "not the package's to erase: raw files outside the repository that an ingest read still hold "
                    + ", ".join(f"{k}: {v}" for k, v in scan.sources.items())
                    + " (erase the person in the source system)"
                )
        if not scan.clean:
            raise click.ClickException(
                f"user {user_id} is not fully erased ({scan.total} remaining); run `healthmate-features erase "
                f"--user-id {user_id}` (again)"
            )
        return None
    result = erase_user(user_id, s, reason=reason, actor=_actor())
    if as_json:
        return echo_json(result.to_dict())
    if result.status == "already erased":
        click.echo(f"user {user_id} was already erased ({result.erasure_id}): nothing to remove")
    else:
        resumed = " (resumed an interrupted run)" if result.resumed else ""
        click.echo(f"erased user {user_id}: erasure {result.erasure_id}{resumed}")
        for step, places in result.removed.items():
            click.echo(f"  {step}: " + ", ".join(f"{place} {n}" for place, n in places.items()))
        for place, n in (result.report.get("source_files_not_erased") or {}).items():
            click.echo(f"  not erased (a source export outside the repository): {place} {n}; erase at the source")
        redacted = [v["dataset"] for v in result.report.get("versions_redacted", [])]
        echo_fields(
            {
                "rows/keys removed": result.removed_total,
                "versions redacted": ", ".join(redacted) or "none",
                "api keys revoked": result.report.get("api_keys_revoked", 0),
                "certificate": result.certificate,
            }
        )
    return None
