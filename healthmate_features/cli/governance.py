"""Governance: `erase` (one person everywhere, `--verify` to scan, `--list` for the ledger), `retention apply`."""

from __future__ import annotations

import getpass
from datetime import datetime
from pathlib import Path

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


@main.group("retention")
def retention_group() -> None:
    """Retention: remove what is older than configs/retention.yaml allows."""


@retention_group.command("apply")
@click.option(
    "--policy",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The policy file (default: configs/retention.yaml in the repository).",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be removed; change nothing.")
@click.option("--now", "now", default=None, hidden=True, help="The clock, as an ISO time with a zone (tests).")
@profile_option
@json_option
@handles_errors
def retention_apply_cmd(
    policy: Path | None, dry_run: bool, now: str | None, profile: str | None, as_json: bool
) -> None:
    """Remove raw and feature rows, rejects files and dataset versions (tombstones) older than the policy allows.

    Dataset versions a model run in production was logged on are kept and listed. What a schedule runs
    (job kind apply_retention, configs/schedule.yaml)."""
    from healthmate_features.governance.retention import DEFAULT_POLICY, apply_retention, load_policy

    s = settings(profile)
    clock = None
    if now is not None:
        try:
            clock = datetime.fromisoformat(now)
        except ValueError as exc:
            raise click.BadParameter(
                f"{now!r} is not an ISO time, e.g. 2026-01-01T00:00:00+00:00", param_hint="--now"
            ) from exc
    result = apply_retention(s, load_policy(policy or s.repo_path / DEFAULT_POLICY), now=clock, dry_run=dry_run)
    if as_json:
        return echo_json(result.to_dict())
    verb = "would remove" if dry_run else "removed"
    click.echo(
        f"retention at {result.now[:19].replace('T', ' ')} UTC{' (dry run: nothing changed)' if dry_run else ''}"
    )
    for kind, cutoff in result.cutoffs.items():
        click.echo(f"  {kind}: " + (f"older than {cutoff[:10]}" if cutoff else "kept forever"))
    if not result.removed and not result.tombstoned:
        click.echo("nothing to remove")
    for step, places in result.removed.items():
        unit = "file(s)" if step == "rejects_files" else "row(s)"
        click.echo(f"{verb} {step}: " + ", ".join(f"{place} {n} {unit}" for place, n in places.items()))
    for entry in result.tombstoned:
        click.echo(f"{'would tombstone' if dry_run else 'tombstoned'} {entry['dataset']} ({entry['why']})")
    for entry in result.kept:
        click.echo(f"kept {entry['dataset']} (created {entry['created_at'][:10]}, {entry['why']})")
    return None
