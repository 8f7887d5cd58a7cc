"""Metric values shared by a process and its children: prometheus_client's multiprocess mode.

prometheus_client picks where metric values live once, when it is first imported: in memory, or
(when PROMETHEUS_MULTIPROC_DIR names a directory) in files there, one per process, which an
exposition sums. A Celery prefork worker runs its tasks in forked children and `serve` may run
several workers, so ours live in files: `healthmate_features/__init__.py` calls
`share_values_with_children` before anything can import prometheus_client.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

DIR_VARIABLES = (
    "PROMETHEUS_MULTIPROC_DIR",
    "PROMETHEUS_MULTIPROCESS_DIR",
)  # prometheus_client's; Feast reads the second


def share_values_with_children() -> None:
    """Name a multiprocess directory in the environment, unless prometheus_client is imported already.

    A directory the environment names (an operator's, or a parent process's) is used, created if
    missing; otherwise a new temporary one, removed when this process exits (not when a forked
    child does). Feast, which does the same when imported, then uses ours. Side effects: sets
    both variables; creates the directory."""
    if "prometheus_client.values" in sys.modules:
        return  # the mode is decided; changing the environment now would only mislead children
    named = next((os.environ[var] for var in DIR_VARIABLES if os.environ.get(var)), None)
    if named:
        os.makedirs(named, exist_ok=True)
        for var in DIR_VARIABLES:
            os.environ.setdefault(var, named)
        return
    path = tempfile.mkdtemp(prefix="healthmate_metrics_")
    for var in DIR_VARIABLES:
        os.environ[var] = path
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
