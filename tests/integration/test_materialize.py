"""Materialization windows per view, after Feast's own CLI too, and progress only on a terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from feast import FeatureStore

from healthmate_features.cli import main
from healthmate_features.features.catalog import FEATURE_TABLES
from healthmate_features.features.pushed import TODAY_VIEW
from healthmate_features.stores import feature_store as store

BIN = Path(sys.executable).parent
VIEWS = set(FEATURE_TABLES) | {TODAY_VIEW}  # the built tables' views and the push-fed one


def intervals(settings) -> dict[str, list[tuple[datetime, datetime]]]:
    """Feast's record of materialized windows per view, read from the registry."""
    feast = FeatureStore(repo_path=str(settings.repo_path))
    return {fv.name: list(fv.materialization_intervals) for fv in feast.list_feature_views()}


def cli(settings, *args: str):
    """Our CLI in-process on the repository `settings`; returns click's result."""
    return CliRunner().invoke(main, list(args), env={"HM_REPO_PATH": str(settings.repo_path)})


def view_lines(output: str) -> dict[str, str]:
    """`materialize` output: view name -> its line."""
    lines = [line for line in output.splitlines() if line.split(":")[0] in VIEWS]
    return {line.split(":")[0]: line for line in lines}


@pytest.mark.slow
def test_incremental_continues_from_feasts_record_and_never_runs_backwards(
    tiny_applied, tiny, clone_repo, tmp_path, feature_table
):
    repo = clone_repo(tiny_applied, tmp_path / "repo")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    feast = subprocess.run(  # Feast's own CLI materializes one view up to now (finding nothing: the data is older)
        [str(BIN / "feast"), "materialize-incremental", now.replace(tzinfo=None).isoformat(), "-v", "health_daily"],
        cwd=repo.repo_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert feast.returncode == 0, feast.stdout + feast.stderr
    lo, hi = tiny.day(0, 8) - timedelta(seconds=1), tiny.day(tiny.LAST_DAY + 1) + timedelta(seconds=1)

    first = cli(repo, "materialize", "--incremental")
    assert first.exit_code == 0, first.output
    lines = view_lines(first.output)
    assert set(lines) == VIEWS, first.output
    assert lines["health_daily"] == (
        f"health_daily: already materialized up to {now} (at or past the requested end {hi}); nothing to do"
    )
    for name in VIEWS - {"health_daily"}:  # never materialized: the feature tables' whole range, not now - TTL
        assert lines[name] == f"{name}: materialized {lo} .. {hi}", first.output
    assert first.output.splitlines()[-1] == f"materialized 6 of 7 view(s) incrementally up to {hi}; 1 already current"
    assert "Materializing" not in first.output and "\x1b[" not in first.output  # Feast's own console lines
    assert "materialize:" not in first.output  # no progress bar: stderr is not a terminal
    recorded = intervals(repo)
    assert [end for _, end in recorded["health_daily"]] == [now]  # no backwards window was added to Feast's record
    assert all(recorded[name] == [(lo, hi)] for name in VIEWS - {"health_daily"}), recorded
    online = store.online_features(repo, 1, at=tiny.day(40, 12))
    latest = feature_table(repo, "health_rolling").iloc[-1]
    assert online["health_rolling__resting_heart_rate_mean_7d"] == pytest.approx(latest.resting_heart_rate_mean_7d)

    later = hi + timedelta(days=2)  # before `now`: health_daily stays current, the others continue from hi
    second = store.materialize(repo, incremental=True, end=later)
    by_view = {v.view: v for v in second.views}
    assert not by_view["health_daily"].ran and by_view["health_daily"].materialized_until == now
    assert all(
        (v.start, v.end, v.materialized_until) == (hi, later, hi) for n, v in by_view.items() if n != "health_daily"
    )
    assert all(end >= start for windows in intervals(repo).values() for start, end in windows)

    nothing = cli(repo, "materialize", "--incremental", "--end", later.strftime("%Y-%m-%d %H:%M:%S"))
    assert nothing.exit_code == 0, nothing.output
    assert nothing.output.splitlines()[-1].startswith("nothing to materialize: all 7 view(s) are materialized up to")


def test_a_backwards_window_or_an_unknown_view_is_refused_before_anything_runs(tiny_applied, clone_repo, tmp_path):
    repo = clone_repo(tiny_applied, tmp_path / "repo")
    backwards = cli(repo, "materialize", "--start", "2025-02-01", "--end", "2025-01-15")
    assert backwards.exit_code == 1
    assert "materialization window is empty or backwards: start 2025-02-01 00:00:00+00:00 is not before end" in (
        backwards.output
    )
    assert "for 7 view(s)" in backwards.output and "Traceback" not in backwards.output
    unknown = cli(repo, "materialize", "--view", "nosuch", "--view", "health_daily")
    assert unknown.exit_code == 1
    assert "feature view(s) 'nosuch' cannot be materialized" in unknown.output and "health_daily" in unknown.output
    assert all(windows == [] for windows in intervals(repo).values())  # nothing ran


def run_on_terminal(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run a command with stderr on a 120-column pseudo-terminal and stdout on a pipe.

    Returns (exit status, what the terminal showed, stdout)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    shown: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return
            if not chunk:
                return
            shown.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        child = subprocess.run(args, cwd=cwd, stdout=subprocess.PIPE, stderr=slave, timeout=300)
    finally:
        os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    return child.returncode, b"".join(shown).decode(errors="replace"), child.stdout.decode()


@pytest.mark.slow
def test_progress_shows_on_a_terminal_only_and_quiet_silences_it(tiny_applied, clone_repo, tmp_path):
    repo = clone_repo(tiny_applied, tmp_path / "repo")
    hm = str(BIN / "healthmate-features")

    status, terminal, stdout = run_on_terminal([hm, "materialize"], repo.repo_path)
    assert status == 0, terminal + stdout
    assert "materialize: 100%" in terminal and "7/7" in terminal, terminal  # one step per view
    assert set(view_lines(stdout)) == VIEWS and "\x1b[" not in stdout and "Materializing" not in stdout

    status, terminal, stdout = run_on_terminal([hm, "materialize", "--quiet"], repo.repo_path)
    assert status == 0 and terminal == "", terminal
    assert set(view_lines(stdout)) == VIEWS

    status, terminal, stdout = run_on_terminal([hm, "apply"], repo.repo_path)
    assert status == 0, terminal
    assert "feast apply [00:0" in terminal, terminal  # the elapsed time, while Feast starts
    assert "Applying changes for project" in terminal  # Feast's status line as it came
