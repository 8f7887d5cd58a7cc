"""The worker and the scheduler: Celery's worker and beat, started from code, around our job rows.

A worker process runs one job at a time (Celery's solo pool: the job runs in the worker process
itself, so its metrics, its leases and a crash all belong to one process; run more worker
processes to run more jobs at once). For every delivered message it

1. claims the job in the SQL store (`JobStore.claim`): a delivery of a job that is running
   elsewhere, finished, cancelled or out of attempts is dropped;
2. renews the job's lease every HM_JOB_LEASE_S / 3 while the work runs;
3. records the result, or the error: a transient one (ServiceUnavailableError, a lock held too
   long) is retried with exponential backoff while attempts remain, anything else (a bad config,
   a missing file, a damaged dataset) fails at once.

When it starts, and then every HM_JOB_LEASE_S / 2, it re-queues the jobs whose worker died
(their lease lapsed; `JobQueue.recover`). When it starts it also deletes the temporary
directories of dataset saves killed midway (`DatasetRegistry.clean_temporary`) and what the
broker keeps but never delivers again (`Backend.clean_broker`).

The scheduler (Celery beat) submits the entries of `configs/schedule.yaml` through
`JobQueue.submit`, so a scheduled job has its row before its message like any other.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from healthmate_features.backends import backend_for, open_sql_store
from healthmate_features.config import Settings
from healthmate_features.errors import HealthmateError, LockTimeoutError, ServiceUnavailableError
from healthmate_features.jobs import tasks
from healthmate_features.jobs.queue import QUEUE, JobQueue, celery_app, task_name
from healthmate_features.jobs.store import Job, JobStore, worker_id
from healthmate_features.monitoring.metrics import JOB_SECONDS, JOBS

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)
#: Failures worth another attempt: a server that did not answer, a lock held longer than we wait.
TRANSIENT: tuple[type[HealthmateError], ...] = (ServiceUnavailableError, LockTimeoutError)
MAX_BACKOFF_S = 600.0


def backoff_s(settings: Settings, attempt: int) -> float:
    """Seconds before retry number `attempt` (1, 2, ...): HM_JOB_RETRY_BACKOFF_S doubled each time,
    at most 10 minutes, with +-20% jitter so retries of many jobs spread out."""
    base = min(MAX_BACKOFF_S, settings.job_retry_backoff_s * 2 ** (attempt - 1))
    return round(base * random.uniform(0.8, 1.2), 3)


class WorkerContext:
    """What one worker process holds: its settings, its SQL store connection, the job queue."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sql = open_sql_store(settings)
        self.queue = JobQueue(settings, self.sql)
        self.jobs: JobStore = self.queue.jobs
        self.me = worker_id()

    def close(self) -> None:
        self.sql.close()


@contextmanager
def _heartbeat(ctx: WorkerContext, job: Job) -> Iterator[None]:
    """Renew the running attempt's lease every HM_JOB_LEASE_S / 3 until the block ends."""
    stop = threading.Event()
    lease_s = ctx.settings.job_lease_s

    def beat() -> None:
        while not stop.wait(lease_s / 3):
            try:
                if not ctx.jobs.renew(job.job_id, job.attempts, lease_s=lease_s):
                    log.warning("job %s: attempt %s was taken over (this worker stalled)", job.job_id, job.attempts)
                    return
            except Exception:  # the store hiccuped: try again before the lease lapses
                log.warning("job %s: renewing the lease failed", job.job_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"job-lease-{job.job_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_job(ctx: WorkerContext, task: Any, kind: str, job_id: str) -> str:
    """Run one delivery of job `job_id`; return its outcome (succeeded, failed, retried, dropped, ...).

    `task` is the bound Celery task (for `retry`); its Retry exception propagates after the job
    row says `retrying`."""
    job = ctx.jobs.claim(job_id, worker=ctx.me, lease_s=ctx.settings.job_lease_s)
    if job is None:
        return _drop(ctx, kind, job_id)
    spec = tasks.kind_of(job.kind)
    log.info("job %s (%s): attempt %s of %s", job_id, job.kind, job.attempts, job.max_attempts)
    started = time.monotonic()
    outcome = "failed"
    try:
        with _heartbeat(ctx, job):
            try:
                result = spec.run(ctx.settings, job.params, job_id)
            except TRANSIENT as exc:
                if job.attempts < job.max_attempts:
                    countdown = backoff_s(ctx.settings, job.attempts)
                    error = f"attempt {job.attempts} of {job.max_attempts}: {exc}; retrying in {countdown:g} s"
                    ctx.jobs.retry_later(
                        job_id, job.attempts, error, countdown_s=countdown, lease_s=ctx.settings.job_lease_s
                    )
                    outcome = "retried"
                    raise task.retry(countdown=countdown, exc=exc, max_retries=None) from exc
                ctx.jobs.fail(
                    job_id, job.attempts, f"{exc} (attempt {job.attempts} of {job.max_attempts}; no attempts left)"
                )
            except tasks.JobFailed as exc:
                ctx.jobs.fail(job_id, job.attempts, str(exc), exc.result)
            except (
                HealthmateError
            ) as exc:  # configuration, data, missing files: another attempt would fail the same way
                ctx.jobs.fail(job_id, job.attempts, str(exc))
            except Exception as exc:
                log.exception("job %s (%s) failed unexpectedly", job_id, job.kind)
                ctx.jobs.fail(  # its text may quote a file or a value: the log has it, the job record does not
                    job_id, job.attempts, f"unexpected {type(exc).__name__}; the worker log has the details"
                )
            else:
                outcome = "succeeded" if ctx.jobs.succeed(job_id, job.attempts, result) else "lost"
    finally:
        JOB_SECONDS.labels(job.kind).observe(time.monotonic() - started)
        if outcome != "lost":
            JOBS.labels(job.kind, outcome).inc()
        log.info("job %s (%s): %s after %.1f s", job_id, job.kind, outcome, time.monotonic() - started)
    return outcome


def _drop(ctx: WorkerContext, kind: str, job_id: str) -> str:
    """A delivery that must not run: say why in the log (and count cancelled jobs)."""
    try:
        job = ctx.jobs.get(job_id)
    except HealthmateError:
        log.warning("dropped a message for unknown job %s (%s)", job_id, kind)
        return "unknown"
    if job.status == "cancelled":
        JOBS.labels(job.kind, "cancelled").inc()
    log.info("dropped a delivery of job %s (%s): it is %s (attempt %s)", job_id, job.kind, job.status, job.attempts)
    return "dropped"


def register_tasks(app: Celery, ctx: WorkerContext) -> None:
    """One Celery task per job kind, each running `run_job` for the job id its message carries."""
    for kind in tasks.KINDS:

        def run(self: Any, job_id: str, _kind: str = kind) -> str:
            return run_job(ctx, self, _kind, job_id)

        run.__name__ = kind
        app.task(name=task_name(kind), bind=True, acks_late=True, reject_on_worker_lost=True)(run)


def _maintenance(ctx: WorkerContext, stop: threading.Event) -> None:
    """Re-queue the jobs of dead workers every HM_JOB_LEASE_S / 2, until `stop` is set."""
    queue = JobQueue(ctx.settings, ctx.sql)
    while not stop.wait(ctx.settings.job_lease_s / 2):
        try:
            queue.recover()
        except Exception:  # the store or the broker hiccuped: next round
            log.warning("recovering lapsed jobs failed", exc_info=True)


def prepare_worker(settings: Settings) -> dict[str, Any]:
    """What a worker does before it takes messages; returns what it cleaned and recovered.

    Deletes the temporary directories of dataset saves that were killed midway, what the broker
    keeps but never delivers again, and re-queues the jobs of dead workers."""
    from healthmate_features.datasets.registry import DatasetRegistry

    removed = DatasetRegistry.from_settings(settings).clean_temporary()
    cleaned = backend_for(settings).clean_broker()
    with open_sql_store(settings) as sql:
        recovered = JobQueue(settings, sql).recover()
    return {"temporary_dirs_removed": removed, "broker_messages_removed": cleaned, "jobs_recovered": recovered}


def run_worker(
    settings: Settings, *, metrics_port: int | None = None, metrics_addr: str = "127.0.0.1", loglevel: str = "INFO"
) -> int:
    """Run a worker until it is stopped (SIGTERM or Ctrl-C: the running job finishes first); return its exit code.

    Side effects: see the module docstring; with `metrics_port`, Prometheus metrics on
    http://metrics_addr:metrics_port/ (healthmate_jobs_total, healthmate_job_duration_seconds)."""
    backend_for(settings).check_services()
    report = prepare_worker(settings)
    for path in report["temporary_dirs_removed"]:
        log.warning("removed %s, left by a dataset save that was killed", path)
    if metrics_port is not None:
        from healthmate_features.monitoring.metrics import start_metrics_server

        start_metrics_server(metrics_port, metrics_addr)
    app = celery_app(settings)
    ctx = WorkerContext(settings)
    register_tasks(app, ctx)
    stop = threading.Event()
    threading.Thread(target=_maintenance, args=(ctx, stop), name="job-recovery", daemon=True).start()
    worker = app.Worker(
        pool="solo",
        concurrency=1,
        queues=[QUEUE],
        hostname=f"healthmate@{ctx.me}",
        loglevel=loglevel,
        without_mingle=True,
        without_gossip=True,
        without_heartbeat=True,
        optimization="fair",
    )
    try:
        worker.start()
    finally:
        stop.set()
        ctx.close()
    return int(worker.exitcode or 0)


def run_scheduler(settings: Settings, *, schedule_file: Path, loglevel: str = "INFO") -> None:
    """Run the scheduler (Celery beat) over `schedule_file` until it is stopped.

    Each due entry becomes a job through `JobQueue.submit` (row first, then message), submitted
    by `schedule:<entry>`; an entry whose previous job has not finished is skipped, so slow runs
    do not pile up. Beat's own state (last run times) is kept in data/scheduler-state."""
    from celery.beat import PersistentScheduler

    from healthmate_features.jobs.schedule import load_schedule

    schedule = load_schedule(schedule_file, settings)
    backend_for(settings).check_services()
    app = celery_app(settings)
    app.conf.beat_schedule = {
        entry.name: {"task": task_name(entry.kind), "schedule": entry.crontab(), "kwargs": {"params": entry.params}}
        for entry in schedule
    }
    sql = open_sql_store(settings)
    queue = JobQueue(settings, sql)

    class JobScheduler(PersistentScheduler):
        """Beat, submitting our jobs instead of sending bare task messages."""

        def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
            entry = self.reserve(entry) if advance else entry
            kind = entry.task.removeprefix(task_name(""))
            by = f"schedule:{entry.name}"
            running = queue.unfinished(by)
            if running:
                log.warning(
                    "schedule %s: skipped, job %s from its last run is still %s",
                    entry.name,
                    running[0].job_id,
                    running[0].status,
                )
                return None
            job = queue.submit(kind, entry.kwargs["params"], submitted_by=by, checked=True)
            log.info("schedule %s: queued job %s (%s)", entry.name, job.job_id, kind)
            return job

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    beat = app.Beat(
        scheduler=JobScheduler, schedule=str(settings.data_dir / "scheduler-state"), loglevel=loglevel, max_interval=30
    )
    try:
        beat.run()
    finally:
        sql.close()
