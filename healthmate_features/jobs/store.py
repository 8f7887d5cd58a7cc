"""Job state in the SQL store: what was asked, by whom, and how it went. The truth about every job.

A job row is written before its message is published, so an id handed to a client always
answers; it survives restarts of the API and of workers. The broker only wakes a worker up:
the row decides whether a delivery runs (`claim`), and a delivery of a job that runs elsewhere,
finished or was cancelled is dropped.

    queued ──claim──> running ──> succeeded | failed
      │                  │ transient error, attempts left: retrying ──claim──> running ...
      │                  │ worker died (lease lapsed): queued again (`recover`), or failed after the last attempt
      └── cancel ──> cancelled          (also from retrying; a running job cannot be cancelled)

`attempts` counts executions started; every write of an execution names its attempt, so a
worker that lost its job (it stalled past its lease and another took over) cannot overwrite it.
"""

from __future__ import annotations

import builtins
import os
import re
import socket
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from healthmate_features.backends.sqlstore import SqlStore, read_json, read_ts, utcnow
from healthmate_features.errors import JobNotFoundError, JobStateError

JobStatus = Literal["queued", "running", "retrying", "succeeded", "failed", "cancelled"]
STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
FINISHED: tuple[JobStatus, ...] = ("succeeded", "failed", "cancelled")
UNFINISHED: tuple[JobStatus, ...] = ("queued", "running", "retrying")
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
_COLUMNS = (
    "job_id, kind, target, submitted_by, params, status, attempts, max_attempts, created_at, "
    "started_at, finished_at, lease_until, worker, result, error"
)


def worker_id() -> str:
    """This process as a job holder: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Job:
    """A snapshot of one job's row."""

    job_id: str
    kind: str
    status: JobStatus
    created_at: datetime
    params: dict[str, Any]
    attempts: int = 0
    max_attempts: int = 1
    target: str | None = None
    submitted_by: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    lease_until: datetime | None = None
    worker: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (timestamps as ISO 8601)."""
        out = asdict(self)
        for key in ("created_at", "started_at", "finished_at", "lease_until"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


def _job(row: Mapping[str, Any]) -> Job:
    ts = {k: read_ts(row[k]) if row[k] is not None else None for k in ("started_at", "finished_at", "lease_until")}
    return Job(
        job_id=row["job_id"],
        kind=row["kind"],
        status=row["status"],
        created_at=read_ts(row["created_at"]),
        params=read_json(row["params"]) or {},
        attempts=int(row["attempts"]),
        max_attempts=int(row["max_attempts"]),
        target=row["target"],
        submitted_by=row["submitted_by"],
        worker=row["worker"],
        result=read_json(row["result"]) if row["result"] is not None else None,
        error=row["error"],
        **ts,
    )


class JobStore:
    """The `jobs` table of a SQL store (backends.open_sql_store). Every change is one atomic statement."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    # -- reading ----------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """The job's current row; JobNotFoundError for an unknown id."""
        rows = (
            self.store.query(f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,))
            if isinstance(job_id, str) and re.match(JOB_ID_PATTERN, job_id)
            else []
        )
        if not rows:
            raise JobNotFoundError(
                f"no job {job_id!r} in {self.store.description}; list jobs with `healthmate-features jobs list`"
            )
        return _job(rows[0])

    def list(self, *, status: str | None = None, kind: str | None = None, limit: int = 50) -> builtins.list[Job]:
        """Jobs, newest first, optionally of one status or kind."""
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        if status is not None:
            if status not in STATUSES:
                raise JobStateError(f"unknown job status {status!r}; use one of {', '.join(STATUSES)}")
            where.append("status = ?")
            params.append(status)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        sql = f"SELECT {_COLUMNS} FROM jobs" + (f" WHERE {' AND '.join(where)}" if where else "")
        rows = self.store.query(sql + " ORDER BY created_at DESC, job_id LIMIT ?", (*params, int(limit)))
        return [_job(r) for r in rows]

    # -- submitting and cancelling (any process) --------------------------------------------

    def create(
        self,
        kind: str,
        params: Mapping[str, Any],
        *,
        max_attempts: int,
        target: str | None = None,
        submitted_by: str | None = None,
    ) -> Job:
        """Write a new queued job (before its message is published) and return it."""
        job_id = uuid.uuid4().hex
        self.store.execute(
            "INSERT INTO jobs (job_id, kind, target, submitted_by, params, status, attempts, max_attempts, created_at) "
            "VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?)",
            (job_id, kind, target, submitted_by, dict(params), int(max_attempts), utcnow()),
        )
        return self.get(job_id)

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or retrying job; its message, when delivered, is dropped.

        Raises JobStateError for a running job (it cannot be stopped midway safely: it may be
        publishing a dataset version) and for a finished one."""
        if self.store.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = ?, lease_until = NULL "
            "WHERE job_id = ? AND status IN ('queued', 'retrying')",
            (utcnow(), job_id),
        ):
            return self.get(job_id)
        job = self.get(job_id)
        if job.status == "running":
            raise JobStateError(
                f"job {job_id} is running (attempt {job.attempts} on {job.worker}); a running job is not "
                "stopped midway (it may be publishing a dataset version): wait for it to finish"
            )
        raise JobStateError(f"job {job_id} already finished ({job.status}); nothing to cancel")

    def fail_unsent(self, job_id: str, error: str) -> None:
        """Mark a job whose message could not be published as failed."""
        self.store.execute(
            "UPDATE jobs SET status = 'failed', finished_at = ?, error = ? WHERE job_id = ? AND status = 'queued'",
            (utcnow(), error, job_id),
        )

    # -- running (workers) ------------------------------------------------------------------

    def claim(self, job_id: str, *, worker: str, lease_s: float) -> Job | None:
        """Start the next attempt of a job if nobody runs it; None when this delivery must be dropped.

        Runs when the job is queued or retrying, or running under a lease that lapsed (its
        worker died); never while another worker's lease is live, after it finished, or past its
        last attempt. One atomic UPDATE: of two deliveries at once, one wins."""
        now = utcnow()
        claimed = self.store.execute(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, worker = ?, lease_until = ?, "
            "started_at = COALESCE(started_at, ?) "
            "WHERE job_id = ? AND attempts < max_attempts AND (status IN ('queued', 'retrying') "
            "OR (status = 'running' AND lease_until < ?))",
            (worker, now + timedelta(seconds=lease_s), now, job_id, now),
        )
        return self.get(job_id) if claimed else None

    def renew(self, job_id: str, attempt: int, *, lease_s: float) -> bool:
        """Extend the running attempt's lease; False if the job is no longer this attempt's."""
        return (
            self.store.execute(
                "UPDATE jobs SET lease_until = ? WHERE job_id = ? AND attempts = ? AND status = 'running'",
                (utcnow() + timedelta(seconds=lease_s), job_id, attempt),
            )
            == 1
        )

    def succeed(self, job_id: str, attempt: int, result: Mapping[str, Any]) -> bool:
        """Record the attempt's result; False if the job was taken over meanwhile."""
        return self._finish(job_id, attempt, status="succeeded", result=dict(result), error=None)

    def fail(self, job_id: str, attempt: int, error: str, result: Mapping[str, Any] | None = None) -> bool:
        """Record the attempt's failure (final); False if the job was taken over meanwhile."""
        return self._finish(job_id, attempt, status="failed", result=dict(result) if result else None, error=error)

    def retry_later(self, job_id: str, attempt: int, error: str, *, countdown_s: float, lease_s: float) -> bool:
        """The attempt failed transiently: the job waits for its retry (held `countdown_s + lease_s`)."""
        return (
            self.store.execute(
                "UPDATE jobs SET status = 'retrying', error = ?, lease_until = ? "
                "WHERE job_id = ? AND attempts = ? AND status = 'running'",
                (error, utcnow() + timedelta(seconds=countdown_s + lease_s), job_id, attempt),
            )
            == 1
        )

    def _finish(self, job_id: str, attempt: int, *, status: str, result: Any, error: str | None) -> bool:
        return (
            self.store.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, lease_until = NULL, result = ?, error = ? "
                "WHERE job_id = ? AND attempts = ? AND status = 'running'",
                (status, utcnow(), result, error, job_id, attempt),
            )
            == 1
        )

    def lapsed(self) -> builtins.list[Job]:
        """Unfinished jobs whose lease lapsed: their worker died (or stalled) holding them."""
        rows = self.store.query(
            f"SELECT {_COLUMNS} FROM jobs WHERE status IN ('running', 'retrying') AND lease_until < ?",
            (utcnow(),),
        )
        return [_job(r) for r in rows]

    def requeue_lapsed(self, job: Job) -> str | None:
        """Take a lapsed job back from its dead worker: queued again (returns "queued"), or failed
        after its last attempt (returns "failed"); None if another process got there first."""
        now = utcnow()
        lost = f"worker {job.worker} stopped renewing its lease during attempt {job.attempts} of {job.max_attempts}"
        if job.attempts >= job.max_attempts:
            done = self.store.execute(
                "UPDATE jobs SET status = 'failed', finished_at = ?, lease_until = NULL, error = ? "
                "WHERE job_id = ? AND attempts = ? AND status = ? AND lease_until < ?",
                (now, f"{lost} (killed or lost); no attempts left", job.job_id, job.attempts, job.status, now),
            )
            return "failed" if done else None
        done = self.store.execute(
            "UPDATE jobs SET status = 'queued', lease_until = NULL, worker = NULL, error = ? "
            "WHERE job_id = ? AND attempts = ? AND status = ? AND lease_until < ?",
            (f"{lost}; queued again", job.job_id, job.attempts, job.status, now),
        )
        return "queued" if done else None
