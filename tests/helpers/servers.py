"""Servers a test starts itself (`feast serve`, `feast ui`, uvicorn): a spare loopback port, started, stopped.

A server runs in its own process group, so that stopping it also stops the workers it forks;
its output goes to a log file that a failure quotes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx


def spare_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


@contextmanager
def running(
    args: Sequence[str], *, cwd: Path, ready: str, log: Path, env: dict[str, str] | None = None, timeout: float = 180
) -> Iterator[subprocess.Popen]:
    """Start `args` in `cwd`, wait until GET `ready` answers (any status below 500), yield the process, stop it.

    Fails with the server's output when it exits or does not answer within `timeout` seconds.
    """
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(args), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{args[0]} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(ready, timeout=5).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{' '.join(args)} did not answer {ready} in {timeout} s:\n{log.read_text()[-4000:]}"
                )
            time.sleep(0.5)
        yield proc
    finally:
        _stop(proc)
