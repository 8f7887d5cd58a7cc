"""Encryption at rest of the package's files: what a run writes is unreadable without the key,
readable with it; a wrong key is a clear error; a data-key rotation, interrupted or killed, resumes.

(The key layer itself: test_crypto.py. The offline store over encrypted feature tables through
real Feast: tests/integration/test_feature_repo.py and test_training.py read the same files.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from healthmate_features.api.app import response_for
from healthmate_features.backends import backend_for
from healthmate_features.cli import main
from healthmate_features.config import Settings
from healthmate_features.crypto import file_key_id
from healthmate_features.datasets.registry import DatasetRegistry
from healthmate_features.errors import EncryptionKeyError
from healthmate_features.features.catalog import FEATURE_TABLES
from healthmate_features.governance.data_keys import package_files, rotate_data_key
from healthmate_features.raw.ingest import ingest
from tests.helpers.files import read_csv, read_frame

OTHER_MASTER = "B" * 43 + "="  # base64 of 32 bytes, not the repository's key


@pytest.fixture
def repo(tmp_path, tiny, build_tiny, make_dataset) -> Settings:
    """A tiny repository as a run leaves it: ingested (with a rejected row), built, one dataset version saved."""
    tables = tiny.raw_tables()
    readings = tables["health_readings"]
    stray = readings.iloc[:1].assign(user_id=999_999)  # a reading of nobody: rejected, into the rejects file
    settings = build_tiny(tmp_path / "repo", {**tables, "health_readings": pd.concat([readings, stray])})
    DatasetRegistry.from_settings(settings).save(make_dataset(), "risk")
    return settings


def _version_files(settings: Settings) -> list[Path]:
    return sorted(p for p in settings.datasets_dir.rglob("*") if p.is_file() and p.suffix in (".parquet", ".joblib"))


def test_every_file_a_run_writes_is_unreadable_without_the_key_and_readable_with_it(repo):
    files = package_files(repo)
    names = {p.name for p in files}
    assert {f"{t}.parquet" for t in FEATURE_TABLES} <= names
    assert {"users.parquet", "health_readings.parquet", "health_readings.rejects.csv"} <= names
    for path in files:
        assert file_key_id(path) is not None, path
        if path.suffix == ".parquet":
            with pytest.raises(OSError, match="encrypted"):
                pq.read_table(path)
            with pytest.raises(duckdb.Error):
                duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()
            assert len(read_frame(repo, path)) > 0
        else:
            assert b"999999" not in path.read_bytes()
            assert (read_csv(repo, path)["user_id"].astype(str) == "999999").any()
    versions = _version_files(repo)
    assert {p.name for p in versions} >= {"X_train.parquet", "joined_train.parquet", "pipeline.joblib"}
    for path in versions:
        assert path.read_bytes().startswith(b"HME1"), path  # sealed whole: pyarrow cannot even find a footer
        with pytest.raises(Exception):  # noqa: B017 - pyarrow's error type differs by what it trips on
            pq.read_table(path)
    registry = DatasetRegistry.from_settings(repo)
    assert registry.verify("risk").ok
    assert len(registry.load("risk").X_train) == 30


def test_the_package_reads_and_rewrites_encrypted_tables(repo):
    backend = backend_for(repo)
    users = backend.query_feature_tables("SELECT count(DISTINCT user_id) FROM {0}", "health_daily")[0][0]
    assert users > 1
    start, end = backend.feature_time_range(list(FEATURE_TABLES))
    assert start < end
    removed = backend.erase_feature_rows(["health_daily"], 1)
    assert removed["health_daily"] > 0
    path = repo.features_dir / "health_daily.parquet"
    assert file_key_id(path) is not None  # the rewrite stays encrypted
    assert not (read_frame(repo, path)["user_id"] == 1).any()


def test_a_wrong_master_key_is_an_error_naming_the_file_and_the_key(repo):
    wrong = Settings.from_env(repo.repo_path, profile=repo.profile, master_key=OTHER_MASTER)
    path = repo.features_dir / "health_daily.parquet"
    with pytest.raises(EncryptionKeyError) as caught:
        backend_for(wrong).query_feature_tables("SELECT count(*) FROM {0}", "health_daily")
    assert str(path) in str(caught.value) and str(file_key_id(path)) in str(caught.value)
    with pytest.raises(EncryptionKeyError, match="X_test.parquet|X_train.parquet"):
        DatasetRegistry.from_settings(wrong).load("risk")
    with pytest.raises(EncryptionKeyError, match="is encrypted and .* has no keyring"):
        DatasetRegistry(repo.datasets_dir).load("risk")


def test_the_api_answers_a_key_error_with_503_and_no_path():
    response = response_for(EncryptionKeyError("/srv/data/features/x.parquet needs data key dk-0123 (...)"))
    body = json.loads(response.body)
    assert response.status_code == 503 and body["error"] == "service_unavailable"
    assert "/srv" not in body["detail"] and "dk-0123" not in body["detail"] and "cannot be decrypted" in body["detail"]


def test_the_cli_names_the_file_and_key_on_a_key_error(repo, monkeypatch):
    monkeypatch.setenv("HM_REPO_PATH", str(repo.repo_path))
    monkeypatch.setenv("HM_MASTER_KEY", OTHER_MASTER)
    result = CliRunner().invoke(main, ["erase", "--verify", "--user-id", "1"])
    assert result.exit_code == 1, result.output
    assert "Error: " in result.output and "data key dk-" in result.output and "master key" in result.output


def test_rotation_reencrypts_every_file_keeps_dataset_identity_and_retires_the_old_key(repo):
    registry = DatasetRegistry.from_settings(repo)
    manifest = (repo.datasets_dir / "risk" / "1.0.0" / "manifest.json").read_bytes()
    before = registry.load("risk")
    old = backend_for(repo).keyring().active().key_id
    report = rotate_data_key(repo)
    assert report.created and report.active != old and report.retired == [old]
    assert len(report.files) == len(package_files(repo)) + len(_version_files(repo))
    assert report.online == 0 and report.online_note == ""  # the encrypting online store: nothing materialized here
    for path in package_files(repo) + _version_files(repo):
        assert file_key_id(path) == report.active, path
    assert backend_for(repo).keyring().key_ids() == {old: "retired", report.active: "active"}
    assert (repo.datasets_dir / "risk" / "1.0.0" / "manifest.json").read_bytes() == manifest  # same identity
    fresh = DatasetRegistry.from_settings(repo)
    assert fresh.verify("risk").ok
    pd.testing.assert_frame_equal(fresh.load("risk").X_train, before.X_train)
    again = rotate_data_key(repo, new_key=False)  # nothing left to do
    assert again.files == [] and not again.created


def test_an_interrupted_rotation_leaves_files_old_or_new_and_resumes(repo):
    old = backend_for(repo).keyring().active().key_id
    seen: list[str] = []

    def stop_after_two(path: str) -> None:
        seen.append(path)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rotate_data_key(repo, on_file=stop_after_two)
    keyring = backend_for(repo).keyring()
    new = keyring.active().key_id
    assert keyring.rotating() == [old]
    states = [file_key_id(p) for p in package_files(repo) + _version_files(repo)]
    assert states.count(new) == 2 and set(states) == {old, new}
    assert backend_for(repo).query_feature_tables("SELECT count(*) FROM {0}", "health_daily")[0][0] > 0
    report = rotate_data_key(repo)
    assert not report.created and report.resumed_from == [old] and report.active == new
    assert len(report.files) == len(states) - 2 and report.retired == [old]
    assert {file_key_id(p) for p in package_files(repo) + _version_files(repo)} == {new}


def test_a_rotation_killed_mid_way_resumes_from_the_cli(repo):
    """SIGKILL after the third file (a real kill, no cleanup runs); `keys rotate-data-key` finishes it."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from healthmate_features.config import Settings
        from healthmate_features.governance.data_keys import rotate_data_key
        done = []
        def kill(path):
            done.append(path)
            if len(done) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        rotate_data_key(Settings.from_env({str(repo.repo_path)!r}, profile={repo.profile!r}), on_file=kill)
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    rotating = backend_for(repo).keyring().rotating()
    assert len(rotating) == 1
    result = CliRunner().invoke(main, ["keys", "rotate-data-key", "--json"], env={"HM_REPO_PATH": str(repo.repo_path)})
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["created"] is False and report["resumed_from"] == rotating
    assert report["files_reencrypted"] == len(package_files(repo)) + len(_version_files(repo)) - 3
    assert {file_key_id(p) for p in package_files(repo) + _version_files(repo)} == {report["active"]}
    assert DatasetRegistry.from_settings(repo).verify("risk").ok
    listed = CliRunner().invoke(main, ["keys", "data-keys", "--json"], env={"HM_REPO_PATH": str(repo.repo_path)})
    assert sorted(k["state"] for k in json.loads(listed.stdout)) == ["active", "retired"]


def test_plaintext_files_of_an_older_checkout_are_read_and_then_encrypted(tmp_path, tiny, build_tiny, make_dataset):
    settings = build_tiny(tmp_path / "repo")
    ingest(settings.repo_path / "raw", settings.ingested_dir)  # no keyring: plaintext, as before encryption
    plain = settings.features_dir / "health_daily.parquet"
    pq.write_table(_plain(settings, plain), plain)
    DatasetRegistry(settings.datasets_dir).save(make_dataset(), "risk")  # no keyring: plaintext, as before
    assert file_key_id(plain) is None and file_key_id(settings.ingested_dir / "users.parquet") is None
    backend = backend_for(settings)
    assert backend.query_feature_tables("SELECT count(*) FROM {0}", "health_daily")[0][0] > 0
    assert DatasetRegistry.from_settings(settings).verify("risk").ok
    keys_before = backend.keyring().key_ids()
    result = CliRunner().invoke(main, ["keys", "encrypt-files"], env={"HM_REPO_PATH": str(settings.repo_path)})
    assert result.exit_code == 0, result.output
    assert "re-encrypted" in result.output
    assert backend_for(settings).keyring().key_ids() == keys_before  # no new key
    active = backend.keyring().active().key_id
    assert {file_key_id(p) for p in package_files(settings) + _version_files(settings)} == {active}
    assert DatasetRegistry.from_settings(settings).verify("risk").ok


def _plain(settings: Settings, path: Path):
    from healthmate_features.crypto import open_parquet

    return open_parquet(backend_for(settings).keyring, path).read()


def test_the_rejects_command_prints_the_decrypted_rejects(repo):
    result = CliRunner().invoke(main, ["rejects", "health_readings"], env={"HM_REPO_PATH": str(repo.repo_path)})
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith('"_row"') or result.output.startswith("_row")
    assert "999999" in result.output and "is not in users" in result.output
    missing = CliRunner().invoke(main, ["rejects", "users"], env={"HM_REPO_PATH": str(repo.repo_path)})
    assert missing.exit_code == 1 and "has no rejects file" in missing.output
