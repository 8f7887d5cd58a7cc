"""Background jobs on Celery: durable job rows in the SQL store, a worker, a scheduler.

store.py     the `jobs` table: submit, claim, lease, finish, cancel (the truth about every job)
tasks.py     the job kinds, each a thin wrapper over one library call, and their parameters
queue.py     the Celery app on the profile's broker; JobQueue: submit, read, cancel, recover
worker.py    `healthmate-features worker` and `scheduler`: Celery's worker and beat around them
schedule.py  configs/schedule.yaml: cron entries, checked like every config
"""

from healthmate_features.jobs.queue import JobQueue, celery_app
from healthmate_features.jobs.store import STATUSES, Job, JobStatus, JobStore
from healthmate_features.jobs.tasks import KINDS

__all__ = ["KINDS", "STATUSES", "Job", "JobQueue", "JobStatus", "JobStore", "celery_app"]
