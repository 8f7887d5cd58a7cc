"""Submitting jobs: a row in the SQL store first, then a message on the profile's Celery broker.

`JobQueue(settings, store)` is what the API, the CLI and the scheduler use: `submit` checks the
parameters (ConfigError before anything is written), writes the job row, publishes its message
and returns the job; `get`, `list` and `cancel` read and change rows; `recover` puts the jobs
of dead workers back on the queue. `celery_app(settings)` is the Celery application both sides
share: the broker comes from the profile's Backend (`Backend.broker()`), messages carry only
the job id (everything else is in the row).
"""

from __future__ import annotations

import builtins
import functools
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from healthmate_features.backends import backend_for
from healthmate_features.backends.sqlstore import SqlStore
from healthmate_features.config import Settings
from healthmate_features.errors import ServiceUnavailableError
from healthmate_features.jobs import tasks
from healthmate_features.jobs.store import UNFINISHED, Job, JobStore

if TYPE_CHECKING:
    from celery import Celery

QUEUE = "healthmate"  # the Celery queue of every job (not Celery's default, which other apps share)
TASK_PREFIX = "healthmate_features.jobs."
log = logging.getLogger(__name__)


def task_name(kind: str) -> str:
    """The Celery task name of a job kind."""
    return TASK_PREFIX + kind


@functools.lru_cache(maxsize=16)
def celery_app(settings: Settings) -> Celery:
    """The Celery application of the settings' broker (one per settings in a process).

    Late acknowledgement with `task_reject_on_worker_lost`: a message is acknowledged only when
    its task ended, and given back when the process running it dies, so a killed worker does not
    lose it (brokers that do not redeliver are covered by the job leases: `JobQueue.recover`).
    One message at a time per worker process; no result backend (job state is in the SQL store).
    """
    from celery import Celery

    broker = backend_for(settings).broker()
    app = Celery("healthmate_features", broker=broker.url, set_as_current=False)
    app.conf.update(
        broker_transport_options=dict(broker.transport_options),
        broker_use_ssl=dict(broker.use_ssl) if broker.use_ssl else False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.connect_timeout_s,
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
        worker_prefetch_multiplier=1,
        worker_enable_remote_control=False,  # needs a fanout exchange, which the SQLite broker lacks
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        timezone="UTC",
        enable_utc=True,
    )
    app.broker_description = broker.description
    return app


class JobQueue:
    """Jobs of one settings' profile: rows in `store` (a SqlStore), messages on its broker."""

    def __init__(self, settings: Settings, store: SqlStore) -> None:
        self.settings = settings
        self.jobs = JobStore(store)

    # -- submit -------------------------------------------------------------------------------

    def submit(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        *,
        submitted_by: str | None = None,
        checked: bool = False,
    ) -> Job:
        """Queue a job of `kind` and return it (status queued): its row first, then its message.

        Raises ConfigError for an unknown kind or bad parameters (nothing is written), and
        ServiceUnavailableError when the broker cannot take the message (the row is then marked
        failed with that reason). `checked=True` skips the parameter check (already done)."""
        spec = tasks.kind_of(kind)
        normalized = dict(params or {}) if checked else tasks.check_params(kind, params, self.settings)
        job = self.jobs.create(
            kind,
            normalized,
            max_attempts=self.settings.job_max_attempts,
            target=spec.target(normalized),
            submitted_by=submitted_by,
        )
        self.publish(job)
        return job

    def publish(self, job: Job, *, countdown: float | None = None) -> None:
        """Put the job's message on the broker; on failure mark the job failed and raise ServiceUnavailableError."""
        app = celery_app(self.settings)
        try:
            app.send_task(task_name(job.kind), args=[job.job_id], task_id=job.job_id, countdown=countdown)
        except Exception as exc:  # kombu and the transports raise many kinds; all mean "not queued"
            where = getattr(app, "broker_description", "the broker")
            message = (
                f"could not queue job {job.job_id} ({job.kind}) on {where}: {type(exc).__name__}: {exc}; "
                "check the broker (HM_BROKER_URL, or the profile's Redis) and submit again"
            )
            self.jobs.fail_unsent(job.job_id, message)
            raise ServiceUnavailableError(message) from exc

    # -- read and cancel ----------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """A job's row; JobNotFoundError for an unknown id."""
        return self.jobs.get(job_id)

    def list(self, *, status: str | None = None, kind: str | None = None, limit: int = 50) -> builtins.list[Job]:
        """Jobs, newest first."""
        return self.jobs.list(status=status, kind=kind, limit=limit)

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or retrying job (JobStateError for a running or finished one)."""
        return self.jobs.cancel(job_id)

    def unfinished(self, submitted_by: str) -> builtins.list[Job]:
        """Unfinished jobs submitted by `submitted_by` (the scheduler skips an entry whose last run is)."""
        return [
            j
            for status in UNFINISHED
            for j in self.jobs.list(status=status, limit=1000)
            if j.submitted_by == submitted_by
        ]

    # -- recovery -----------------------------------------------------------------------------

    def recover(self) -> builtins.list[tuple[str, str]]:
        """Take back the jobs whose worker died: queued again and re-published, or failed after their
        last attempt. Safe to run from any number of processes at once; returns (job id, new status)."""
        done = []
        for job in self.jobs.lapsed():
            status = self.jobs.requeue_lapsed(job)
            if status is None:
                continue
            if status == "queued":
                try:
                    self.publish(job)
                except ServiceUnavailableError:
                    log.exception("could not re-queue job %s", job.job_id)
                    continue
            log.warning(
                "job %s (%s): worker %s lost it during attempt %s: %s",
                job.job_id,
                job.kind,
                job.worker,
                job.attempts,
                status,
            )
            done.append((job.job_id, status))
        return done
