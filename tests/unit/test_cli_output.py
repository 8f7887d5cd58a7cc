"""The one output convention of the command line: text for people, `--json` for machines (only JSON on stdout)."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import click
import numpy as np
from click.testing import CliRunner

from healthmate_features.cli import main
from healthmate_features.cli._common import echo_fields, echo_json, echo_table, json_option
from healthmate_features.util.text import format_counts, format_fields, format_value

# Commands that print no data (or documentation, or shell lines) and so take no --json.
WITHOUT_JSON = {
    ("schemas",): "prints README's schema section (Markdown)",
    ("features",): "prints docs/features.md (Markdown)",
    ("env",): "prints `export` lines for a shell",
    ("rejects",): "prints a rejects file (CSV) as it is",
    ("apply",): "prints no data",
    ("serve",): "runs a server",
    ("worker",): "runs a Celery worker (its log on stderr)",
    ("scheduler",): "runs Celery beat; `--check` prints the schedule file's entries for a person",
    ("audit", "export"): "prints JSON lines (one audit row each) for a compliance system",
}


def _leaf_commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _leaf_commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def test_every_command_that_prints_data_takes_json():
    missing = [
        " ".join(path)
        for path, cmd in _leaf_commands(main)
        if path not in WITHOUT_JSON and "--json" not in {o for p in cmd.params for o in getattr(p, "opts", [])}
    ]
    assert missing == [], f"commands without --json: {missing} (add json_option, or list them in WITHOUT_JSON)"
    assert set(WITHOUT_JSON) <= {path for path, _ in _leaf_commands(main)}


def test_values_read_as_text_never_as_python_reprs():
    assert format_value(None) == "-"
    assert format_value(float("nan")) == "-"
    assert format_value(np.float64(3.114482300479487)) == "3.11448"
    assert format_value(np.int64(1642)) == "1642"
    assert format_value(True) == "true"
    assert format_value({"train": 0.0816, "test": 0.078}) == "train 0.0816, test 0.078"
    assert format_value({"start": "2025-01-15", "end": "2025-08-28"}) == "2025-01-15 .. 2025-08-28"
    assert format_value(datetime(2025, 9, 28, tzinfo=timezone.utc)) == "2025-09-28 00:00:00+00:00"
    assert format_value(["a", "b"]) == "a, b"
    assert format_value([]) == format_value({}) == "-"
    assert format_fields({"rows": 3284, "rate": {"train": 0.08}}) == "rows: 3284; rate: train 0.08"
    reasons = {"value: impossible steps": 3, "unit: wrong for spo2": 1, "value: impossible spo2": 2}
    assert format_counts(reasons) == "3 value: impossible steps, 2 value: impossible spo2, 1 unit: wrong for spo2"


@click.command()
@json_option
def _noisy(as_json: bool) -> None:
    """A command whose library call prints on its own (as Feast's materialize does)."""
    print("Materializing 6 feature views")  # noqa: T201  (what Feast does)
    click.echo("==> a progress line")
    data = {"rows": 3, "ratio": math.nan, "at": datetime(2025, 1, 2, tzinfo=timezone.utc), "n": np.int64(7)}
    if as_json:
        return echo_json(data)
    echo_fields(data)
    echo_table(
        [{"feature": "steps_mean_7d", "value": 2836.2857}, {"feature": "bmi", "value": None}], ["feature", "value"]
    )


def test_json_output_is_only_strict_json_and_the_rest_goes_to_stderr():
    result = CliRunner().invoke(_noisy, ["--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"rows": 3, "ratio": None, "at": "2025-01-02T00:00:00+00:00", "n": 7}
    assert "Materializing 6 feature views" in result.stderr and "==> a progress line" in result.stderr


def test_text_output_is_a_summary_and_a_table():
    result = CliRunner().invoke(_noisy, [])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:2] == ["Materializing 6 feature views", "==> a progress line"]
    assert lines[2:6] == ["rows   3", "ratio  -", "at     2025-01-02 00:00:00+00:00", "n      7"]
    assert lines[6:] == ["feature        value", "steps_mean_7d  2836.29", "bmi            -"]
