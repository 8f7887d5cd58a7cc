"""Retention on the embedded profile with a frozen clock: the policy's checks, what goes and what stays,
tombstoned dataset versions, a dry run that changes nothing, a second run that removes nothing."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from healthmate_features.backends import open_sql_store
from healthmate_features.backends.base import INGEST_MANIFEST
from healthmate_features.cli import main
from healthmate_features.datasets.registry import DatasetRegistry
from healthmate_features.errors import ConfigError, DatasetVersionError
from healthmate_features.governance.retention import RetentionPolicy, apply_retention, load_policy
from healthmate_features.raw.ingest import check_raw_store
from healthmate_features.tracking import Tracker
from tests.helpers.files import read_frame

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under the repository with its SHA-256 and mtime (what a dry run must leave alone)."""
    return {
        str(p.relative_to(root)): f"{hashlib.sha256(p.read_bytes()).hexdigest()} {p.stat().st_mtime_ns}"
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _policy(tiny, *, raw_day: int = 20, versions: int | None = 365) -> RetentionPolicy:
    """A policy whose raw and feature cut falls at midnight of tiny day `raw_day`, as seen from NOW."""
    days = (NOW - tiny.day(raw_day).to_pydatetime()).days
    return RetentionPolicy(raw_events=days, feature_rows=days, rejects_files=30, dataset_versions=versions)


@pytest.fixture
def kept_repo(tmp_path, build_tiny, make_dataset):
    """A built tiny repository with two dataset versions, the first used by a production model run."""
    settings = build_tiny(tmp_path / "repo")
    registry = DatasetRegistry.from_settings(settings)
    registry.save(make_dataset(seed=1), "risk")
    registry.save(make_dataset(seed=2), "risk")
    with open_sql_store(settings) as sql:
        Tracker(sql, datasets=registry).log_metrics(
            "risk-model", version="1", dataset="risk@1.0.0", environment="production", metrics={"auc": 0.8}
        )
    old, recent = settings.ingested_dir / "app_events.rejects.csv", settings.ingested_dir / "labels.rejects.csv"
    for path, age in ((old, 40), (recent, 10)):  # the policy keeps rejects files 30 days
        path.write_text("user_id,at,reason\n3,2025-01-02T00:00:00Z,at: not a time\n")
        stamp = (NOW - timedelta(days=age)).timestamp()
        os.utime(path, (stamp, stamp))
    return settings


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"max_age_days": {"raw_events": 0}}, r"max_age_days.raw_events is 0; it must be an integer in \[1, 36500\]"),
        ({"max_age_days": {"raw_events": 1.5}}, "raw_events is 1.5; it must be an integer"),
        ({"max_age_days": {"raw_events": True}}, "raw_events is True"),
        (
            {"max_age_days": {"raw_event": 3}},
            r"unknown kind\(s\) raw_event in max_age_days; use raw_events, feature_rows",
        ),
        ({"max_age_days": [3]}, "max_age_days must be a mapping"),
        ({"max_age": {}}, "exactly one key, max_age_days"),
        (None, "exactly one key, max_age_days"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_key_and_the_range(doc, message):
    with pytest.raises(ConfigError, match=message):
        RetentionPolicy.from_dict(doc)


def test_the_committed_policy_is_valid_and_a_missing_file_is_named(repo_root, tmp_path):
    policy = load_policy(repo_root / "configs" / "retention.yaml")
    assert all(isinstance(getattr(policy, k), int) for k in policy.to_dict())
    with pytest.raises(ConfigError, match="no retention policy file nope.yaml"):
        load_policy(tmp_path / "nope.yaml")
    assert RetentionPolicy.from_dict({"max_age_days": {"raw_events": None}}).cutoff("raw_events", NOW) is None


def test_a_dry_run_changes_nothing_byte_for_byte(kept_repo, tiny):
    before = _snapshot(kept_repo.repo_path)
    result = apply_retention(kept_repo, _policy(tiny), now=NOW, dry_run=True)
    assert result.dry_run and result.removed["feature_tables"] and result.removed["raw_files"]
    assert [t["dataset"] for t in result.tombstoned] == ["risk@1.0.1"]
    assert _snapshot(kept_repo.repo_path) == before


def test_retention_removes_what_is_past_its_age_and_a_second_run_removes_nothing(kept_repo, tiny):
    settings = kept_repo
    cut = tiny.day(20)
    planned = apply_retention(settings, _policy(tiny), now=NOW, dry_run=True)
    result = apply_retention(settings, _policy(tiny), now=NOW)
    assert result.removed == planned.removed and result.tombstoned == planned.tombstoned
    # raw and ingested rows by event time; users (no event time) stay
    readings = read_frame(settings, settings.ingested_dir / "health_readings.parquet")
    assert len(readings) and (readings["recorded_at"] >= cut).all()
    assert result.removed["raw_files"]["data/ingested/health_readings.parquet"] > 0
    assert len(read_frame(settings, settings.ingested_dir / "users.parquet")) == len(tiny.raw_tables()["users"])
    for path in (settings.features_dir).glob("*.parquet"):
        frame = read_frame(settings, path)
        assert (frame["event_timestamp"] >= cut).all(), path.name
    assert sum(result.removed["feature_tables"].values()) > 0
    check_raw_store(settings.repo_path / "raw", settings)  # the manifest's hashes follow the rewritten raw files
    manifest = json.loads((settings.ingested_dir / INGEST_MANIFEST).read_text())
    assert manifest["retention"][0]["at"] == NOW.isoformat()
    # rejects files by age
    assert result.removed["rejects_files"] == {"data/ingested/app_events.rejects.csv": 1}
    assert [p.name for p in settings.ingested_dir.glob("*.rejects.csv")] == ["labels.rejects.csv"]
    # dataset versions: 1.0.0 is used in production (kept, reported), 1.0.1 becomes a tombstone
    assert [k["dataset"] for k in result.kept] == ["risk@1.0.0"]
    assert [t["dataset"] for t in result.tombstoned] == ["risk@1.0.1"]
    registry = DatasetRegistry.from_settings(settings)
    report = registry.verify("risk", "1.0.1")
    assert report.ok and report.tombstoned == NOW.isoformat()
    assert "tombstoned by retention on 2030-01-01" in report.notes[0]
    assert sorted(os.listdir(Path(registry.root) / "risk" / "1.0.1")) == ["lifecycle.json", "manifest.json"]
    with pytest.raises(DatasetVersionError, match=r"risk@1.0.1 was tombstoned by retention on 2030-01-01 \(created"):
        registry.load("risk", "1.0.1")
    with pytest.raises(DatasetVersionError, match="tombstoned"):
        registry.read_split("risk", "1.0.1", "X_train")
    assert registry.load("risk", "1.0.0").X_train is not None
    assert registry.list("risk")[1]["tombstoned"] == NOW.isoformat() and registry.list("risk")[1]["rows"] is None
    assert registry.redact("risk", "1.0.1", lambda f: f["user_id"] == "u1", erasure_id="E-x") is None

    # a second run: nothing left to remove, nothing changes
    def files() -> dict[str, str]:  # the SQL store's file aside: it holds the run's locks
        return {k: v for k, v in _snapshot(settings.repo_path).items() if not k.startswith("data/healthmate.db")}

    snapshot = files()
    again = apply_retention(settings, _policy(tiny), now=NOW)
    assert again.removed == {} and again.tombstoned == [] and [k["dataset"] for k in again.kept] == ["risk@1.0.0"]
    assert files() == snapshot


def test_a_naive_clock_is_refused(kept_repo, tiny):
    with pytest.raises(ConfigError, match="no time zone"):
        apply_retention(kept_repo, _policy(tiny), now=datetime(2030, 1, 1))


def test_the_cli_prints_what_it_removed_as_text_and_json(kept_repo, tiny, monkeypatch):
    settings = kept_repo
    days = _policy(tiny).raw_events
    policy = settings.repo_path / "retention.yaml"
    policy.write_text(f"max_age_days:\n  raw_events: {days}\n  feature_rows: null\n  dataset_versions: 365\n")
    monkeypatch.setenv("HM_REPO_PATH", str(settings.repo_path))
    runner = CliRunner()
    args = ["retention", "apply", "--policy", str(policy), "--now", NOW.isoformat()]
    dry = runner.invoke(main, [*args, "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    doc = json.loads(dry.output)
    assert doc["dry_run"] is True and doc["cutoffs"]["feature_rows"] is None and doc["removed_total"] > 0
    text = runner.invoke(main, args)
    assert text.exit_code == 0, text.output
    assert "removed raw_files: data/ingested/health_readings.parquet" in text.output
    assert "tombstoned risk@1.0.1" in text.output and "kept risk@1.0.0" in text.output
    assert "feature_rows: kept forever" in text.output
    verify = runner.invoke(main, ["datasets", "verify"])
    assert verify.exit_code == 0 and "risk@1.0.1: tombstoned by retention on 2030-01-01" in verify.output
    load = runner.invoke(main, ["datasets", "load", "risk", "1.0.1"])
    assert load.exit_code == 1 and "tombstoned by retention" in load.output and "Traceback" not in load.output
    bad = runner.invoke(main, [*args[:-1], "yesterday"])
    assert bad.exit_code == 2 and "not an ISO time" in bad.output


def test_the_job_kind_checks_its_policy_at_submission_and_runs_it(kept_repo, repo_root):
    from healthmate_features.jobs import tasks

    settings = kept_repo
    (settings.repo_path / "configs").mkdir(exist_ok=True)
    (settings.repo_path / "configs" / "retention.yaml").write_text(
        (repo_root / "configs" / "retention.yaml").read_text()
    )
    assert tasks.check_params("apply_retention", {}, settings) == {"policy": "configs/retention.yaml", "dry_run": False}
    with pytest.raises(ConfigError, match="unknown apply_retention parameter.*when"):
        tasks.check_params("apply_retention", {"when": 1}, settings)
    (settings.repo_path / "bad.yaml").write_text("max_age_days: {raw_events: -1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: max_age_days.raw_events is -1"):
        tasks.check_params("apply_retention", {"policy": "bad.yaml"}, settings)
    with pytest.raises(ConfigError, match="dry_run must be true or false"):
        tasks.check_params("apply_retention", {"dry_run": "yes"}, settings)
    result = tasks.KINDS["apply_retention"].run(settings, {"policy": "configs/retention.yaml", "dry_run": True}, None)
    assert result["dry_run"] is True and json.dumps(result)  # JSON-ready: what the job's record keeps


def test_an_interrupted_tombstone_fails_verify_until_retention_completes_it(tmp_path, make_dataset, monkeypatch):
    from healthmate_features.datasets import registry as registry_module

    registry = DatasetRegistry(tmp_path / "datasets")
    registry.save(make_dataset(), "risk")
    real_unlink = os.unlink
    calls = []

    def crash_after_one(path, *args, **kwargs):  # the process dies after deleting one data file
        if calls:
            raise KeyboardInterrupt
        calls.append(path)
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(registry_module.os, "unlink", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        registry.tombstone("risk", "1.0.0", at=NOW, why="a test")
    monkeypatch.setattr(registry_module.os, "unlink", real_unlink)
    report = registry.verify("risk", "1.0.0")
    assert not report.ok and "tombstoning by retention was interrupted" in " ".join(report.problems)
    record = registry.tombstone("risk", "1.0.0", at=NOW + timedelta(days=1), why="again")
    assert record is not None and record["at"] == NOW.isoformat() and record["why"] == "a test"  # the first record
    assert registry.verify("risk", "1.0.0").ok and registry.tombstone("risk", "1.0.0", at=NOW, why="x") is None
    # a build whose data did not change still saves a new version: the tombstone holds no data to reuse
    version, created = registry.save_if_changed(make_dataset(), "risk")
    assert (version, created) == ("1.0.1", True) and registry.load("risk", version).X_train is not None
