"""Background jobs: `jobs submit|list|show|cancel` (rows of the SQL store; workers run them)."""

from __future__ import annotations

import json
from typing import Any

import click

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
from healthmate_features.errors import ConfigError
from healthmate_features.jobs import KINDS, STATUSES, Job, JobQueue

_COLUMNS = ["job_id", "kind", "status", "attempts", "target", "submitted_by", "created_at", "finished_at"]


def _row(job: Job) -> dict[str, Any]:
    row = job.to_dict()
    row["attempts"] = f"{job.attempts}/{job.max_attempts}"
    for key in ("created_at", "finished_at"):
        value = getattr(job, key)
        row[key] = f"{value:%Y-%m-%d %H:%M:%S}" if value else None
    return row


def _show(job: Job) -> None:
    for key, value in _row(job).items():
        if key in ("params", "result") and value is not None:
            value = json.dumps(value, sort_keys=True, default=str)
        if value is not None:
            click.echo(f"{key:13} {value}")


@main.group("jobs")
def jobs_group() -> None:
    """Background jobs: submit one, list, show, cancel (run by `healthmate-features worker`)."""


@jobs_group.command("submit")
@click.argument("kind", type=click.Choice(list(KINDS)))
@click.option("--params", "params_json", default="{}", help="The job's parameters as a JSON object.")
@profile_option
@json_option
@handles_errors
def jobs_submit_cmd(kind: str, params_json: str, profile: str | None, as_json: bool) -> None:
    """Queue a job of KIND; print its id (a worker runs it)."""
    try:
        params = json.loads(params_json)
    except ValueError as exc:
        raise ConfigError(
            f'--params {params_json!r} is not JSON ({exc}); e.g. --params \'{{"raw": "data/raw"}}\''
        ) from exc
    current = settings(profile)
    with open_sql_store(current) as store:
        job = JobQueue(current, store).submit(kind, params, submitted_by="cli")
    if as_json:
        return echo_json(job.to_dict())
    click.echo(f"queued job {job.job_id} ({kind}); follow it with `healthmate-features jobs show {job.job_id}`")


@jobs_group.command("list")
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only jobs with this status.")
@click.option("--kind", type=click.Choice(list(KINDS)), default=None, help="Only jobs of this kind.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, help="At most this many.")
@profile_option
@json_option
@handles_errors
def jobs_list_cmd(status: str | None, kind: str | None, limit: int, profile: str | None, as_json: bool) -> None:
    """List jobs, newest first."""
    current = settings(profile)
    with open_sql_store(current) as store:
        jobs = JobQueue(current, store).list(status=status, kind=kind, limit=limit)
    if as_json:
        return echo_json([j.to_dict() for j in jobs])
    if not jobs:
        return click.echo("no jobs")
    echo_table([_row(j) for j in jobs], _COLUMNS)


@jobs_group.command("show")
@click.argument("job_id")
@profile_option
@json_option
@handles_errors
def jobs_show_cmd(job_id: str, profile: str | None, as_json: bool) -> None:
    """Show one job: status, attempts, worker, timestamps, parameters, result or error."""
    current = settings(profile)
    with open_sql_store(current) as store:
        job = JobQueue(current, store).get(job_id)
    if as_json:
        return echo_json(job.to_dict())
    _show(job)


@jobs_group.command("cancel")
@click.argument("job_id")
@profile_option
@json_option
@handles_errors
def jobs_cancel_cmd(job_id: str, profile: str | None, as_json: bool) -> None:
    """Cancel a queued or retrying job (a running job finishes; it is not stopped midway)."""
    current = settings(profile)
    with open_sql_store(current) as store:
        job = JobQueue(current, store).cancel(job_id)
    if as_json:
        return echo_json(job.to_dict())
    click.echo(f"cancelled job {job.job_id} ({job.kind})")
