"""Prometheus metrics (prometheus_client): what the worker and the API expose for scraping.

Labels never carry user ids or health values.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

JOBS = Counter("healthmate_jobs_total", "Jobs finished, by kind and outcome", ["kind", "outcome"])
JOB_SECONDS = Histogram("healthmate_job_duration_seconds", "Job run time", ["kind"])


def start_metrics_server(port: int, addr: str = "127.0.0.1") -> None:
    """Serve the process's metrics in Prometheus text format on http://addr:port/ (a daemon thread)."""
    start_http_server(port, addr=addr)
