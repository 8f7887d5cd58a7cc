"""Every command that prints data, on real data: a table or summary by default, `--json` for machines.

The demo's repository (conftest `demo_run`), cloned; the tiny dataset for the raw-data steps. Each
test runs a command both ways and checks that the text has its header and the values of the JSON.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from healthmate_features.cli import main
from healthmate_features.util.text import format_value

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(demo_run, clone_repo, tmp_path_factory):
    """This module's copy of the demo repository: its tests save dataset versions."""
    return clone_repo(demo_run[0], tmp_path_factory.mktemp("cli_output") / "repo")


def _cli(settings):
    runner = CliRunner(env={"HM_REPO_PATH": str(settings.repo_path), "HM_PROFILE": "embedded"})

    def run(*args: str, ok: bool = True):
        result = runner.invoke(main, list(args))
        assert (result.exit_code == 0) is ok, result.output
        return result

    return run


@pytest.fixture(scope="module")
def cli(repo):
    return _cli(repo)


def both(cli, *args: str) -> tuple[list[str], object]:
    """(the text's lines, the parsed --json) of one command."""
    text = cli(*args).stdout
    return text.splitlines(), json.loads(cli(*args, "--json").stdout)


def field(lines: list[str], key: str) -> str:
    """The value of `key` in an `echo_fields` summary."""
    found = [line[len(key) :].strip() for line in lines if line.startswith(key + " ")]
    assert len(found) == 1, (key, lines)
    return found[0]


def table(lines: list[str], header: list[str]) -> list[list[str]]:
    """The rows of the table whose header line holds exactly `header` (cells split on 2+ spaces)."""
    starts = [i for i, line in enumerate(lines) if line.split() == header]
    assert starts, (header, lines)
    rows = []
    for line in lines[starts[0] + 1 :]:
        cells = [c for c in line.split("  ") if c.strip()]
        if len(cells) != len(header):
            break
        rows.append([c.strip() for c in cells])
    return rows


def test_demo_prints_a_readable_report_and_with_json_only_json(demo_run):
    _, stdout, report = demo_run
    figures = json.loads(stdout)  # nothing else on stdout: the report goes to stderr
    assert figures["dataset"] == "health_risk@1.0.0" and figures["frame"]["rows"] == 3284
    assert "==> training set" in report and "7 feature views" in report
    for repr_marker in ("{'", "['", "': "):
        assert repr_marker not in report, f"a Python repr in the demo's report: {repr_marker!r}"
    rates = figures["frame"]["label_positive_rate"]
    assert f"label_positive_rate: {rates}" in report
    assert "label_positive_rate: train 0.0816, test 0.078" in report
    assert "(3 value: impossible steps, 2 value: impossible spo2, 1 unit: wrong for spo2" in report
    # The online features shown are the same every run (Feast's own order changes with the process).
    shown = report.split("==> online features")[1].split("==> ")[0].splitlines()[2:-1]
    names = [line.split(" = ")[0].strip() for line in shown]
    assert len(names) == 12 and names[0] == "user_id" and names[1:] == sorted(names[1:]), names


def test_online_prints_a_feature_table(cli, repo):
    lines, values = both(cli, "online", "--user-id", "15", "--feature-service", "health_risk_v1")
    assert values["user_id"] == 15 and len(values) == 85
    missing = sum(v is None for v in values.values())
    assert lines[0] == f"user 15, feature service health_risk_v1: 84 features, {missing} without a value (-)"
    rows = dict(table(lines, ["feature", "value"]))
    assert set(rows) == set(values) - {"user_id"}
    for name, value in rows.items():
        if name not in ("day_of_year", "days_since_signup", "hour_sin", "hour_cos"):  # the request time is now
            assert value == format_value(values[name]), name


def test_training_frame_prints_a_summary(cli, tmp_path):
    lines, summary = both(cli, "training-frame", "--out", str(tmp_path / "frame.parquet"))
    assert summary["rows"] == len(pd.read_parquet(tmp_path / "frame.parquet")) == 3284
    assert summary["out"] == str(tmp_path / "frame.parquet")
    for key in ("rows", "users", "features", "label_positive_rate", "missing_share"):
        assert field(lines, key) == format_value(summary[key])
    start, end = (pd.Timestamp(summary["time_range"][k]) for k in ("start", "end"))
    assert field(lines, "time_range") == f"{start.isoformat(sep=' ')} .. {end.isoformat(sep=' ')}"
    assert lines[-1] == f"wrote 3,284 rows to {tmp_path / 'frame.parquet'}"


def test_dataset_list_show_verify_and_load(cli, tmp_path):
    lines, versions = both(cli, "datasets", "list", "health_risk")
    header = ["name", "version", "created_at", "bump", "train", "test", "feature_service", "data_hash"]
    rows = table(lines, header)
    assert [r[1] for r in rows] == [v["version"] for v in versions] and rows[0][1] == "1.0.0"
    assert rows[0][4:7] == [str(versions[0]["rows"]["train"]), str(versions[0]["rows"]["test"]), "health_risk_v1"]
    assert versions[0]["data_hash"].startswith(rows[0][7])

    lines, manifest = both(cli, "datasets", "show", "health_risk", "1.0.0")
    assert lines[0] == "health_risk@1.0.0" and "splits" in manifest and "manifest_sha256" in manifest
    counts = manifest["row_counts"]
    assert field(lines, "rows") == f"train {counts['train']}, test {counts['test']}"
    assert field(lines, "data_hash") == manifest["data_hash"]
    assert field(lines, "bump") == "initial: first version"
    assert len(lines) < 25 and lines[-1].endswith("datasets show health_risk 1.0.0 --json)")

    lines, report = both(cli, "datasets", "verify", "health_risk", "1.0.0")
    assert report["ok"] is True and report["problems"] == []
    assert lines == [
        f"health_risk@1.0.0: intact ({len(report['checked_files'])} files and the data hash match the manifest)"
    ]

    lines, loaded = both(cli, "datasets", "load", "health_risk", "1.0.0", "--out", str(tmp_path / "splits"))
    assert lines[0] == loaded["dataset"] == "health_risk@1.0.0"
    assert field(lines, "train_rows") == str(loaded["train_rows"]) == str(counts["train"])
    assert all((tmp_path / "splits" / name).exists() for name in ("X_train.parquet", "y_test.parquet"))
    assert loaded["written"] == [str(tmp_path / "splits" / f"{s}.parquet") for s in _splits(loaded["written"])]
    assert lines[-1] == f"wrote {len(loaded['written'])} splits as Parquet to {tmp_path / 'splits'}"


def _splits(paths: list[str]) -> list[str]:
    return [p.rsplit("/", 1)[1].removesuffix(".parquet") for p in paths]


@pytest.fixture(scope="module")
def second_version(cli, repo, tmp_path_factory, training_config):
    """A version with another test size (fewer training rows; a column fewer survives the filters),
    built once as text and once as JSON; returns (text lines, JSON) of the text build's version."""
    config = tmp_path_factory.mktemp("configs") / "risk.yaml"
    split = {"strategy": "time", "test_size": 0.3, "label_horizon_days": 30}
    config.write_text(yaml.safe_dump(training_config("health_risk", split=split)))
    text = cli("training-set", "build", "--config", str(config)).stdout.splitlines()
    data = json.loads(cli("training-set", "build", "--config", str(config), "--bump", "minor", "--json").stdout)
    return text, data


def test_training_set_build_prints_the_version_and_a_summary(second_version):
    lines, data = second_version
    assert lines[0] == "health_risk@2.0.0"
    assert data["dataset"].startswith("health_risk@2.") and data["dataset"] != "health_risk@2.0.0"
    for key in ("train_rows", "test_rows", "features", "strategy", "excluded_rows", "label_positive_rate"):
        assert field(lines, key) == format_value(data[key])
    assert field(lines, "label_positive_rate").startswith("train ")


def test_diff_prints_a_short_summary_and_the_details_with_json(cli, second_version):
    lines, diff = both(cli, "datasets", "diff", "health_risk", "1.0.0", "2.0.0")
    assert len(json.dumps(diff, indent=2).splitlines()) > 1000 and len(lines) < 30
    rule = diff["bump_rule"]
    assert rule["kind"] == "major"
    assert lines[0] == f"health_risk 1.0.0 -> 2.0.0: the bump rule says major ({'; '.join(rule['reasons'])})"
    assert field(lines, "inputs_changed") == ", ".join(k for k, v in diff["changed"].items() if v)
    assert "split_config" in field(lines, "inputs_changed")
    rows = diff["rows"]
    assert field(lines, "rows") == (
        f"train {rows['train']['from']} -> {rows['train']['to']} ({rows['train']['delta']:+d}), "
        f"test {rows['test']['from']} -> {rows['test']['to']} ({rows['test']['delta']:+d})"
    )
    x = diff["schema"]["X_train"]
    assert x["added"] or x["removed"]
    shown = field(lines, "columns (X_train)")
    assert all(c in shown for c in x["added"] + x["removed"])
    assert shown.startswith(f"{len(x['added'])} added")

    shifts = diff["largest_shifts"]
    assert 0 < len(shifts) <= 5
    shown_rows = table(lines, ["split", "column", "stat", "from", "to", "delta", "shift"])
    assert [r[:3] for r in shown_rows] == [[s["split"], s["column"], s["stat"]] for s in shifts]
    for s in shifts:  # each is a real change of the diff's statistics
        assert diff["stats"][s["split"]][s["column"]][s["stat"]] == {k: s[k] for k in ("from", "to", "delta")}
    assert [s["shift"] for s in shifts] == sorted((s["shift"] for s in shifts), reverse=True)
    assert lines[-1] == "(every column's statistics: healthmate-features datasets diff health_risk 1.0.0 2.0.0 --json)"


def test_verify_reports_problems_both_ways_and_exits_1(cli, repo, second_version):
    version = second_version[1]["dataset"].split("@")[1]
    target = repo.repo_path / "data" / "datasets" / "health_risk" / version / "y_test.parquet"
    target.chmod(0o644)
    target.write_bytes(target.read_bytes() + b"tampered")
    data = cli("datasets", "verify", "health_risk", version, "--json", ok=False)
    report = json.loads(data.stdout)  # the error goes to stderr
    assert report["ok"] is False and any(p.startswith("y_test.parquet: SHA-256 mismatch") for p in report["problems"])
    assert f"Error: health_risk@{version} failed verification" in data.stderr
    text = cli("datasets", "verify", "health_risk", version, ok=False)
    problems = report["problems"]
    assert text.stdout.splitlines() == [f"health_risk@{version}: {len(problems)} problem(s)"] + [
        f"  {p}" for p in problems
    ]
    assert f"Error: health_risk@{version} failed verification" in text.stderr


def test_rebuild_prints_whether_the_data_hash_is_identical(cli):
    lines, report = both(cli, "datasets", "rebuild", "health_risk", "1.0.0")
    assert report["identical"] is True
    assert lines == [f"health_risk@1.0.0 rebuilt: identical data hash {report['data_hash']}"]


def test_materialize_json_carries_only_json_though_feast_prints(cli):
    text = cli("materialize", "--view", "profile")
    data = json.loads(cli("materialize", "--view", "profile", "--json").stdout)
    assert pd.Timestamp(data["end"]) > pd.Timestamp(data["start"])
    assert str(pd.Timestamp(data["end"])) in text.stdout


@pytest.fixture
def tiny_repo(tiny_built, clone_repo, tmp_path):
    return clone_repo(tiny_built, tmp_path / "repo")


def test_generate_ingest_and_build_features_both_ways(tiny_repo, tmp_path):
    cli = _cli(tiny_repo)
    raw = str(tiny_repo.repo_path / "raw")
    for args in (["generate", "--users", "3", "--days", "4", "--seed", "1", "--quiet", "--out"],):
        lines, data = both(cli, *args, str(tmp_path / "generated"))
        assert data["rows"]["users"] == 3 and data["out"] == str(tmp_path / "generated")
        assert "users: 3 rows" in lines

    lines, data = both(cli, "ingest", "--raw", raw, "--quiet")
    accepted = {t["table"]: t["accepted"] for t in data["tables"]}
    assert accepted["users"] > 0 and accepted["health_readings"] > 0
    text = "\n".join(lines)
    for table_name, n in accepted.items():
        assert table_name in text and f"{n:,}" in text

    lines, data = both(cli, "build-features", "--raw", raw, "--quiet")
    assert set(data["tables"]) >= {"health_daily", "health_rolling", "profile"}
    for table_name, built in data["tables"].items():
        assert f"{table_name}: {built['rows']:,} rows -> {built['table']}" in lines
