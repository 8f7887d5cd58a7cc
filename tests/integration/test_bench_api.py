"""bench/api_load.py runs end to end on the embedded profile with tiny limits, so it cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

TARGETS = (
    "GET /health (ours)",
    "GET features/extract (ours)",
    "POST /get-online-features (feast serve)",
    "GET dashboard/summary (ours)",
    "GET dashboard/summary, one at a time (ours)",
)


def test_api_load_bench_runs_on_the_embedded_profile(repo_root, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(repo_root / "bench" / "api_load.py"),
            "--profile",
            "embedded",
            "--users",
            "80",
            "--days",
            "150",
            "--concurrency",
            "2",
            "--requests",
            "6",
            "--rounds",
            "1",
            "--seconds",
            "30",
            "--calls",
            "2",
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    cpu_ms = []
    for target in TARGETS:
        line = next(line for line in out.splitlines() if line.strip().startswith(target))
        sent, errors = (int(n) for n in line[len(line.split(target)[0]) + len(target) :].split()[:2])
        assert (sent, errors) == (6, 0), line
        cpu_ms.append(float(line.split()[-1]))  # the server's CPU per request
        assert cpu_ms[-1] >= 0, line
        if "(ours)" in target:
            assert line.split()[-2] == "6/6", line  # an audit row for every request
    # Six requests of one target may fit in one 10 ms tick of the kernel's CPU accounting (0.000); all together do not.
    assert sum(cpu_ms) > 0, out
    assert re.search(r"peak RSS healthmate-features serve: \d+ MiB", out), out
    assert "online_features (the extract handler's call)" in out and "AuditLog.write" in out, out
    assert re.search(r"embedded\s+extract req/s / feast serve req/s\s+\d+\.\d\d", out), out
