"""`worker` and `scheduler`: Celery's worker and beat for the background jobs."""

from __future__ import annotations

from pathlib import Path

import click

from healthmate_features.cli._common import handles_errors, main, profile_option, settings

_LOGLEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)


@main.command("worker")
@click.option(
    "--metrics-port", type=click.IntRange(1, 65535), default=None, help="Serve Prometheus metrics on this port."
)
@click.option("--metrics-addr", default="127.0.0.1", show_default=True, help="Interface of the metrics port.")
@click.option("--loglevel", type=_LOGLEVELS, default="INFO", show_default=True)
@profile_option
@handles_errors
def worker_cmd(metrics_port: int | None, metrics_addr: str, loglevel: str, profile: str | None) -> None:
    """Run background jobs (one at a time; start more workers for more) until stopped.

    On start it removes what killed runs left behind (temporary dataset directories) and
    re-queues the jobs of workers that died. Ctrl-C or SIGTERM lets the running job finish."""
    from healthmate_features.jobs.worker import run_worker

    code = run_worker(settings(profile), metrics_port=metrics_port, metrics_addr=metrics_addr, loglevel=loglevel)
    raise SystemExit(code)


@main.command("scheduler")
@click.option(
    "--schedule",
    "schedule_file",
    type=click.Path(path_type=Path),
    default=Path("configs/schedule.yaml"),
    show_default=True,
    help="The timetable (cron entries; relative to the repository root).",
)
@click.option("--check", is_flag=True, help="Only check the file and print its entries.")
@click.option("--loglevel", type=_LOGLEVELS, default="INFO", show_default=True)
@profile_option
@handles_errors
def scheduler_cmd(schedule_file: Path, check: bool, loglevel: str, profile: str | None) -> None:
    """Queue the jobs of a schedule file when their cron expressions fire (UTC), until stopped."""
    from healthmate_features.jobs.schedule import load_schedule
    from healthmate_features.jobs.worker import run_scheduler

    current = settings(profile)
    if check:
        for entry in load_schedule(schedule_file, current):
            click.echo(f"{entry.name}: {entry.kind} at '{entry.cron}' (UTC) {entry.params}")
        return
    run_scheduler(current, schedule_file=schedule_file, loglevel=loglevel)
