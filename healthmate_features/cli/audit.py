"""The audit trail: `audit verify` (the hash chain and its checkpoints), `audit export` (JSON lines)."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import click

from healthmate_features.access import audit_chain
from healthmate_features.backends import open_sql_store
from healthmate_features.cli._common import (
    echo_fields,
    echo_json,
    handles_errors,
    json_option,
    main,
    profile_option,
    settings,
)
from healthmate_features.errors import AuditError


@main.group("audit")
def audit_group() -> None:
    """The audit trail of the HTTP API: verify its hash chain, export it for a compliance system."""


@audit_group.command("verify")
@profile_option
@json_option
@handles_errors
def audit_verify_cmd(profile, as_json) -> None:
    """Walk the audit log's hash chain and its checkpoints; exit 1 naming the first row edited,
    deleted, inserted or reordered, or the tail cut off.

    An intact chain's head is appended to the checkpoint file (HM_AUDIT_CHECKPOINTS)."""
    config = settings(profile)
    with open_sql_store(config) as store:
        result = audit_chain.verify(store, audit_chain.Checkpoints(config.audit_checkpoints_path), record=True)
    if as_json:
        echo_json({**result.to_dict(), "retention_days": config.audit_retention_days})
    elif result.ok:
        echo_fields(
            {
                "audit log": "intact",
                "chained rows": result.chained_rows,
                "unchained rows": f"ids 1..{result.unchained_through} (written before the chain started)"
                if result.unchained_through
                else "none",
                "head": f"id {result.head_id} {result.head_hash}" if result.head_id is not None else "-",
                "checkpoints checked": result.checkpoints_checked,
                "retention": f"{config.audit_retention_days} days (HM_AUDIT_RETENTION_DAYS)",
            }
        )
    else:
        click.echo(f"audit log TAMPERED ({result.problem_kind}, row {result.problem_id}): {result.problem}", err=True)
    if not result.ok:
        sys.exit(1)


def _moment(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise AuditError(
            f"{option} {value!r} is not an ISO 8601 time; e.g. 2026-01-01 or 2026-01-01T00:00:00+00:00"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@audit_group.command("export")
@click.option("--since", required=True, help="First time included (ISO 8601; UTC unless it names a zone).")
@click.option("--until", default=None, help="First time excluded (ISO 8601; default: no end).")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write to this file (default: stdout).",
)
@profile_option
@handles_errors
def audit_export_cmd(since, until, output, profile) -> None:
    """Print the audit rows of a time range as JSON lines in id order, with prev_hash and row_hash
    (README "Audit trail" says how a receiver verifies them).

    Side effect: the chain's head is appended to the checkpoint file (HM_AUDIT_CHECKPOINTS)."""
    config = settings(profile)
    start, end = _moment(since, "--since"), _moment(until, "--until")
    assert start is not None
    with open_sql_store(config) as store:
        rows = audit_chain.export_rows(store, since=start, until=end)
        if output:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
        with click.open_file(output or "-", "w") as out:
            for row in rows:
                out.write(json.dumps(row, separators=(",", ":")) + "\n")
        head_id, head_hash = audit_chain.chain_head(store)
        if head_hash != audit_chain.GENESIS:
            audit_chain.Checkpoints(config.audit_checkpoints_path).append(store, (head_id, head_hash))
