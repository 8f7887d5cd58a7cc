"""Background jobs: long work (building a training set) runs on a thread pool, polled by id.

Jobs live in memory: a restart forgets them (their results, dataset versions, stay on disk).
A job is queued, then running, then succeeded (with a JSON result) or failed (with the error's
message). The runner keeps the most recent finished jobs up to a limit.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any, Literal, get_args

from healthmate_features.errors import HealthmateError, JobNotFoundError

JobStatus = Literal["queued", "running", "succeeded", "failed"]
STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """A snapshot of one background job."""

    job_id: str
    kind: str
    status: JobStatus
    created_at: datetime
    target: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: dict[str, Any] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (timestamps as ISO 8601)."""
        out = asdict(self)
        for key in ("created_at", "started_at", "finished_at"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


def _now() -> datetime:
    return datetime.now(timezone.utc)


class JobRunner:
    """Runs callables on a thread pool and remembers their status by job id.

    `max_workers` bounds concurrent jobs (training-set builds are CPU and memory heavy);
    `keep` bounds how many jobs are remembered (the oldest finished ones are forgotten first).
    """

    def __init__(self, *, max_workers: int = 1, keep: int = 1000) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="hm-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._keep = keep

    def submit(self, kind: str, fn: Callable[[], dict[str, Any]], *, target: str | None = None) -> Job:
        """Queue `fn` (returning a JSON-ready dict) and return the queued job's snapshot."""
        job = Job(job_id=uuid.uuid4().hex, kind=kind, status="queued", created_at=_now(), target=target)
        with self._lock:
            self._jobs[job.job_id] = job
            self._forget_old()
        self._pool.submit(self._run, job.job_id, fn)
        return job

    def get(self, job_id: str) -> Job:
        """The job's current snapshot; JobNotFoundError for an unknown or forgotten id."""
        with self._lock:
            job = self._jobs.get(job_id) if isinstance(job_id, str) and re.match(JOB_ID_PATTERN, job_id) else None
        if job is None:
            raise JobNotFoundError(
                f"no job {job_id!r}; jobs are kept in memory until the server restarts "
                f"(at most the {self._keep} most recent)"
            )
        return job

    def jobs(self) -> list[Job]:
        """Snapshots of every remembered job, oldest first."""
        with self._lock:
            return list(self._jobs.values())

    def shutdown(self, *, wait: bool = False) -> None:
        """Stop accepting jobs; queued jobs are cancelled, running ones finish in the background."""
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def _run(self, job_id: str, fn: Callable[[], dict[str, Any]]) -> None:
        self._update(job_id, status="running", started_at=_now())
        try:
            result = fn()
        except HealthmateError as exc:
            self._update(job_id, status="failed", finished_at=_now(), error=str(exc))
        except Exception as exc:  # a job must never die silently: record what happened
            log.exception("job %s failed unexpectedly", job_id)
            self._update(job_id, status="failed", finished_at=_now(), error=f"unexpected {type(exc).__name__}: {exc}")
        else:
            self._update(job_id, status="succeeded", finished_at=_now(), result=result)

    def _update(self, job_id: str, **changes: Any) -> None:
        with self._lock:
            if job_id in self._jobs:
                self._jobs[job_id] = replace(self._jobs[job_id], **changes)

    def _forget_old(self) -> None:
        excess = len(self._jobs) - self._keep
        for job_id in [j for j, job in self._jobs.items() if job.status in ("succeeded", "failed")][: max(0, excess)]:
            del self._jobs[job_id]
