"""Run a command in a fresh process; return its wall time, peak memory and CPU time (used by bench/ scripts)."""

from __future__ import annotations

import os
import subprocess
import time


def run_measured(cmd: list[str], *, cwd=None, env=None) -> tuple[float, float]:
    """Wall seconds and peak RSS in MiB of one child process (fails if the command fails)."""
    wall, peak, _ = run_measured_cpu(cmd, cwd=cwd, env=env)
    return wall, peak


def run_measured_cpu(cmd: list[str], *, cwd=None, env=None) -> tuple[float, float, float]:
    """Wall seconds, peak RSS in MiB and CPU seconds (user + system, all threads) of one child
    process (fails if the command fails). CPU seconds barely move with the load of a shared
    machine; wall seconds do."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed ({os.waitstatus_to_exitcode(status)}): {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime
