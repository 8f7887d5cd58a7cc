"""The parts of an erasure that need no server: redaction of a dataset version, the ledger and its
key, ingest's "erased" rejects, one user's rows out of a file."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from healthmate_features.backends import open_sql_store
from healthmate_features.backends.ledger import ErasureLedger, erasure_key, key_fingerprint, subject_of
from healthmate_features.config import Settings
from healthmate_features.datasets.registry import LIFECYCLE, DatasetRegistry
from healthmate_features.errors import ConfigError, DatasetVersionError
from healthmate_features.governance.rows import count_user_rows, remove_user_rows
from healthmate_features.raw.ingest import ingest


def _files(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _u3(frame: pd.DataFrame) -> pd.Series:
    return frame["user_id"] == "u3"


# -- redaction of dataset versions -----------------------------------------------------------


def test_a_redacted_version_verifies_loads_without_the_rows_and_says_by_which_erasure(tmp_path, make_dataset):
    registry = DatasetRegistry(tmp_path / "datasets")
    original = make_dataset()
    registry.save(original, "risk")
    before = registry.show("risk", "1.0.0")
    record = registry.redact("risk", "1.0.0", _u3, erasure_id="E-1", note="pipeline kept")
    assert record is not None and record["status"] == "complete"
    assert record["previous"]["data_hash"] == before["data_hash"] != record["data_hash"]
    removed = int((original.joined_train["user_id"] == "u3").sum())
    assert record["removed_rows"]["X_train"] == record["removed_rows"]["joined_train"] == removed > 0
    report = registry.verify("risk", "1.0.0")
    assert report.ok, report.problems
    assert report.redacted_by == ["E-1"] and "redacted by erasure E-1" in report.notes[0]
    loaded = registry.load("risk", "1.0.0")
    assert not (loaded.joined_train["user_id"] == "u3").any() and not (loaded.joined_test["user_id"] == "u3").any()
    keep = (original.joined_train["user_id"] != "u3").to_numpy()
    pd.testing.assert_frame_equal(loaded.X_train, original.X_train[keep])  # other rows, same values and index
    pd.testing.assert_series_equal(loaded.y_train, original.y_train[keep])
    assert loaded.metadata["redacted_by"] == ["E-1"] and loaded.pipeline is not None
    assert registry.show("risk", "1.0.0") == before  # the manifest is never edited
    assert registry.list("risk")[0]["rows"]["train"] == len(loaded.X_train)
    assert registry.read_split("risk", "1.0.0", "X_train")  # checked against the record's hash
    assert stat.S_IMODE(os.stat(Path(registry.root) / "risk" / "1.0.0").st_mode) == 0o555


def test_redaction_touches_no_version_without_the_rows_and_a_second_run_is_a_no_op(tmp_path, make_dataset):
    registry = DatasetRegistry(tmp_path / "datasets")
    registry.save(make_dataset(), "risk")
    directory = Path(registry.root) / "risk" / "1.0.0"
    untouched = _files(directory)
    assert registry.redact("risk", "1.0.0", lambda f: f["user_id"] == "nobody", erasure_id="E-1") is None
    assert _files(directory) == untouched
    registry.redact("risk", "1.0.0", _u3, erasure_id="E-1")
    redacted = _files(directory)
    assert registry.redact("risk", "1.0.0", _u3, erasure_id="E-1") is None
    assert _files(directory) == redacted
    registry.redact("risk", "1.0.0", lambda f: f["user_id"] == "u4", erasure_id="E-2")  # a second erasure chains
    report = registry.verify("risk", "1.0.0")
    assert report.ok and report.redacted_by == ["E-1", "E-2"], report.problems


def test_an_edited_lifecycle_or_a_changed_file_after_redaction_fails_verify(tmp_path, make_dataset):
    registry = DatasetRegistry(tmp_path / "datasets")
    registry.save(make_dataset(), "risk")
    registry.redact("risk", "1.0.0", _u3, erasure_id="E-1")
    directory = Path(registry.root) / "risk" / "1.0.0"
    directory.chmod(0o755)
    path = directory / LIFECYCLE
    doc = json.loads(path.read_text())
    doc["records"][0]["removed_rows"]["X_train"] = 0
    path.chmod(0o644)
    path.write_text(json.dumps(doc))
    assert any("self-hash" in p for p in registry.verify("risk", "1.0.0").problems)
    with pytest.raises(DatasetVersionError, match="was edited"):
        registry.redact("risk", "1.0.0", lambda f: f["user_id"] == "u4", erasure_id="E-2")


def test_a_pending_redaction_is_reported_and_completed_by_the_same_erasure(tmp_path, make_dataset):
    """A record written, the files not yet replaced (what a kill between the two leaves)."""
    registry = DatasetRegistry(tmp_path / "datasets")
    registry.save(make_dataset(), "risk")
    directory = Path(registry.root) / "risk" / "1.0.0"
    before = _files(directory)
    record = registry.redact("risk", "1.0.0", _u3, erasure_id="E-1")
    assert record is not None
    lifecycle = (directory / LIFECYCLE).read_text()
    directory.chmod(0o755)
    for name in before:  # put the old data files back, keep the record: as if killed
        if name != "manifest.json":
            (directory / name).chmod(0o644)
    registry2 = DatasetRegistry(tmp_path / "datasets2")
    registry2.save(make_dataset(), "risk")
    for name in before:
        if name != "manifest.json":
            (directory / name).write_bytes((Path(registry2.root) / "risk" / "1.0.0" / name).read_bytes())
    doc = json.loads(lifecycle)
    doc["records"][-1]["status"] = "pending"
    from healthmate_features.datasets import manifest as mf

    doc.pop("lifecycle_sha256")
    doc["lifecycle_sha256"] = mf.self_hash(doc)
    (directory / LIFECYCLE).chmod(0o644)
    (directory / LIFECYCLE).write_text(json.dumps(doc))
    report = registry.verify("risk", "1.0.0")
    assert any("E-1 was interrupted" in p for p in report.problems), report.problems
    with pytest.raises(DatasetVersionError, match="interrupted"):
        registry.load("risk", "1.0.0")
    done = registry.redact("risk", "1.0.0", _u3, erasure_id="E-1")
    assert done is not None and done["status"] == "complete"
    assert registry.verify("risk", "1.0.0").ok


# -- the ledger and its key ------------------------------------------------------------------


def test_the_key_file_is_created_once_with_mode_0600_outside_data(tmp_path):
    settings = Settings(repo_path=tmp_path)
    key = erasure_key(settings)
    path = settings.erasure_key_path
    assert path.exists() and not path.is_relative_to(settings.data_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert erasure_key(settings) == key and len(key) >= 32
    assert erasure_key(replace(settings, erasure_key="x" * 20)) == b"x" * 20
    with pytest.raises(ConfigError, match="at least 16"):
        erasure_key(replace(settings, erasure_key="short"))


def test_the_ledger_keeps_keyed_hashes_and_refuses_another_key(tmp_path):
    settings = Settings(repo_path=tmp_path, erasure_key="k" * 32)
    with open_sql_store(settings) as sql:
        ledger = ErasureLedger(sql, settings)
        assert ledger.erased_among([1, 5, 7]) == set()
        erasure, created = ledger.begin(5, reason="r", actor="cli:test")
        assert created and erasure.status == "pending" and ledger.begin(5, reason=None, actor=None)[1] is False
        assert erasure.subject == subject_of(b"k" * 32, 5) != hashlib.sha256(b"user_id:5").hexdigest()
        assert erasure.key_id == key_fingerprint(b"k" * 32)
        rows = sql.query("SELECT * FROM erasures")
        assert all("5" != str(v) for row in rows for v in row.values())
        assert ledger.erased_among([1, 5, "7", None]) == {5}
        other = ErasureLedger(sql, replace(settings, erasure_key="o" * 32))
        with pytest.raises(ConfigError, match="hashed with key"):
            other.erased_among([5])


# -- ingest and files ------------------------------------------------------------------------


def test_ingest_rejects_an_erased_persons_rows_counted_without_their_values(tmp_path, tiny, small):
    raw = tiny.write_raw(tmp_path / "raw", small.raw_tables())
    out = tmp_path / "ingested"
    reports = {r.table: r for r in ingest(raw, out, erased=lambda ids: {3} & {int(i) for i in ids})}
    for table in ("users", "health_readings", "app_events"):
        report = reports[table]
        assert report.reasons.get("user_id: erased", 0) > 0
        assert "user_id: not in users" not in report.reasons  # the one reason of an erased person's row
        rejects = pd.read_csv(out / f"{table}.rejects.csv", dtype=str)
        erased = rejects[rejects["_reason"].str.contains("erased")]
        assert len(erased) == report.reasons["user_id: erased"]
        assert erased.drop(columns=["_row", "_reason"]).isna().all().all()
        assert not (pd.read_parquet(out / f"{table}.parquet")["user_id"] == 3).any()


def test_remove_user_rows_rewrites_only_files_that_hold_them(tmp_path):
    frame = pd.DataFrame({"user_id": [1, 5, 2, 5], "value": [0.1, 0.2, 0.3, 0.4]})
    parquet, csv = tmp_path / "t.parquet", tmp_path / "t.csv"
    frame.to_parquet(parquet)
    frame.astype(str).to_csv(csv, index=False)
    untouched = {p: p.read_bytes() for p in (parquet, csv)}
    for path in (parquet, csv):
        assert remove_user_rows(path, 9) == 0 and path.read_bytes() == untouched[path]
        assert count_user_rows(path, 5) == 2 and remove_user_rows(path, 5) == 2
        assert count_user_rows(path, 5) == 0 and count_user_rows(path, 1) == 1
    assert pd.read_parquet(parquet)["value"].tolist() == [0.1, 0.3]
