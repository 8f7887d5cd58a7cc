"""Erasure of one user everywhere (README "Erasure, retention and exports"), on both profiles.

Each profile gets a repository of its own: generated raw data (in the repository, as `make demo`
writes it), ingested, built, applied, materialized, and two dataset versions: `health_risk`
holds USER, `churn_without` holds everyone but USER. The erasure is interrupted for real (a
killed subprocess, a lock held too long) and completed by running it again; then every file,
table and key the package owns is scanned for USER without the package's own scanner, every
version is loaded and verified, the untouched version is compared byte for byte, other users'
values are compared with a snapshot, the original raw data is ingested again (USER's rows are
rejected as erased), and a second run removes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from healthmate_features.backends import backend_for, open_sql_store
from healthmate_features.backends.ledger import ErasureLedger
from healthmate_features.config import Settings
from healthmate_features.datasets.registry import DatasetRegistry
from healthmate_features.errors import LockTimeoutError, UserNotFoundError
from healthmate_features.features.build import build_features, keep_raw_fingerprints
from healthmate_features.governance import erase_user, scan_user
from healthmate_features.raw.generate import generate
from healthmate_features.raw.ingest import ingest_raw
from healthmate_features.stores import feature_store as store
from healthmate_features.training.builder import build_and_save, build_training_set
from tests.helpers.files import read_any_csv, read_frame

from ..helpers import repos

pytestmark = pytest.mark.slow

USER, OTHER = 5, 13
AT = datetime(2026, 1, 1, tzinfo=timezone.utc)  # the request time of online lookups (temporal features)
BIN = Path(sys.executable).parent


def _build(settings: Settings, tmp: Path) -> dict:
    """Generate, ingest, build, apply, materialize, save two versions; keep a copy of the raw data."""
    generate(settings.raw_dir, users=40, days=200, seed=3, progress=False)
    ingest_raw(settings.raw_dir, settings)
    keep_raw_fingerprints(settings)  # as `healthmate-features ingest` does: per-user rows to erase too
    build_features(settings.raw_dir, settings)
    store.apply(settings)
    store.materialize(settings)
    labels = read_frame(settings, settings.ingested_dir / "labels.parquet")
    assert (labels["user_id"] == USER).any()
    labels[labels["user_id"] != USER].to_parquet(settings.data_dir / "labels_without.parquet")
    with_user = build_and_save(repos.training_config("health_risk"), settings).ref
    without = build_and_save(
        repos.training_config("engagement_churn", name="churn_without", entities="data/labels_without.parquet"),
        settings,
    ).ref
    original = tmp / "original_raw"  # outside the repository: a source export, as a user's would be
    original.mkdir()
    for path in settings.raw_dir.iterdir():
        (original / path.name).write_bytes(path.read_bytes())
    return {"with_user": with_user, "without": without, "original_raw": original}


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), **extra}


def _cli(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(BIN / "healthmate-features"), *args],
        cwd=settings.repo_path,
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def _version_files(settings: Settings, ref: str) -> dict[str, str]:
    name, version = ref.split("@")
    directory = settings.datasets_dir / name / version
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _user_rows_in_files(settings: Settings, user_id: int) -> dict[str, int]:
    """Rows of the user in every Parquet and CSV file under data/ (dataset versions included), read with pandas."""
    found = {}
    for path in sorted(settings.data_dir.rglob("*")):
        if path.suffix not in (".parquet", ".csv") or not path.is_file():
            continue
        frame = read_frame(settings, path) if path.suffix == ".parquet" else read_any_csv(settings, path, dtype=str)
        if "user_id" in frame.columns:
            hits = int((pd.to_numeric(frame["user_id"], errors="coerce") == user_id).sum())
            if hits:
                found[str(path.relative_to(settings.repo_path))] = hits
    return found


def _other_user_snapshot(settings: Settings, refs: list[str]) -> dict:
    """OTHER's rows in every feature table and version, and their online features."""
    snap: dict = {}
    for path in sorted(settings.features_dir.glob("*.parquet")):
        frame = read_frame(settings, path)
        snap[path.name] = frame[frame["user_id"] == OTHER].reset_index(drop=True)
    registry = DatasetRegistry.from_settings(settings)
    for ref in refs:
        ds = registry.load(*ref.split("@"), load_pipeline=False)
        for side in ("train", "test"):
            joined = getattr(ds, f"joined_{side}")
            rows = joined["user_id"] == OTHER
            snap[f"{ref}:{side}"] = (joined[rows], getattr(ds, f"X_{side}")[rows.to_numpy()])
    snap["online"] = store.online_features(settings, OTHER, feature_service="health_risk_v1", at=AT)
    return snap


def _assert_same_other_user(before: dict, after: dict) -> None:
    for key, value in before.items():
        if isinstance(value, tuple):
            for a, b in zip(value, after[key], strict=True):
                pd.testing.assert_frame_equal(a, b)
        elif isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(
                value.sort_values(list(value.columns[:2])).reset_index(drop=True),
                after[key].sort_values(list(value.columns[:2])).reset_index(drop=True),
            )
        else:
            assert value == after[key]


def _wait_for(predicate, timeout_s: float = 300, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _ledger_report(settings: Settings) -> dict:
    with open_sql_store(settings) as sql:
        rows = ErasureLedger(sql, settings).list()
    return rows[0].report if rows else {}


def _check_after(settings: Settings, built: dict, before_files: dict[str, str], before_other: dict) -> None:
    """Nothing of USER anywhere; every version verifies and loads; the rest as it was."""
    assert _user_rows_in_files(settings, USER) == {}
    scan = scan_user(USER, settings)
    assert scan.clean, scan.remaining
    assert scan.erasure and scan.erasure["status"] == "complete"
    registry = DatasetRegistry.from_settings(settings)
    reports = registry.verify_all()
    assert reports and all(r.ok for r in reports), [r.problems for r in reports]
    by_ref = {f"{r.name}@{r.version}": r for r in reports}
    assert by_ref[built["with_user"]].redacted_by == [scan.erasure["erasure_id"]]
    assert by_ref[built["without"]].redacted_by == []
    assert _version_files(settings, built["without"]) == before_files  # byte for byte
    redacted = registry.load(*built["with_user"].split("@"))
    assert not (redacted.joined_train["user_id"] == USER).any() and not (redacted.joined_test["user_id"] == USER).any()
    assert redacted.metadata["redacted_by"] == [scan.erasure["erasure_id"]]
    assert redacted.pipeline is not None
    _assert_same_other_user(before_other, _other_user_snapshot(settings, [built["with_user"], built["without"]]))


def _check_reingest_and_build(settings: Settings, built: dict, erasure_id: str) -> None:
    """The original raw data (a source export holding USER) ingested again: USER's rows rejected as erased."""
    reports, _ = ingest_raw(built["original_raw"], settings)
    for report in reports:
        assert report.reasons.get("user_id: erased", 0) > 0, report
        rejects = read_any_csv(settings, settings.ingested_dir / f"{report.table}.rejects.csv", dtype=str)
        erased = rejects[rejects["_reason"].str.contains("erased")]
        assert len(erased) == report.reasons["user_id: erased"]
        assert erased.drop(columns=["_row", "_reason"]).isna().all().all()  # none of their values
    counts = build_features(built["original_raw"], settings)
    backend = backend_for(settings)  # rows per table right though the erasure deleted rows since the last build
    assert counts == {t: backend.query_feature_tables("SELECT count(*) FROM {0}", t)[0][0] for t in counts}
    store.materialize(settings)
    with pytest.raises(UserNotFoundError):
        store.online_features(settings, USER, feature_service="health_risk_v1")
    # an entity frame that still names USER: the builder drops those rows and counts them
    config = repos.training_config("health_risk", entities=str(built["original_raw"] / "labels.parquet"))
    dataset = build_training_set(config, settings)
    assert dataset.metadata["erased_rows_dropped"] > 0
    assert not (dataset.joined_train["user_id"] == USER).any() and not (dataset.joined_test["user_id"] == USER).any()
    assert scan_user(USER, settings).clean
    second = erase_user(USER, settings)
    assert (second.status, second.removed_total, second.erasure_id) == ("already erased", 0, erasure_id)


def _certificate(settings: Settings, erasure_id: str) -> dict:
    path = settings.erasures_dir / f"{erasure_id}.json"
    text = path.read_text()
    document = json.loads(text)
    assert document["erasure_id"] == erasure_id and document["status"] == "complete"
    assert "user_id" not in text  # neither the id's name nor any health value: counts, places, hashes
    return document


# -- embedded ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("erasure")
    root = repos.copy_repo(tmp / "repo")
    settings = Settings(repo_path=root)
    return settings, _build(settings, tmp)


def test_erasure_on_the_embedded_profile_killed_midway_then_completed(embedded):
    settings, built = embedded
    before_files = _version_files(settings, built["without"])
    before_other = _other_user_snapshot(settings, [built["with_user"], built["without"]])
    with open_sql_store(settings) as sql:
        from healthmate_features.access.keys import ApiKeys

        ApiKeys(sql).create_key("user", user_id=USER, name="user-app")

    # 1. Killed midway: the dataset lock is held here, so the erasure stops before the versions;
    #    it is killed (SIGKILL) once the online store is done.
    log = (settings.repo_path.parent / "erase.log").open("w")
    with log, backend_for(settings).lock("dataset:health_risk"):
        child = subprocess.Popen(
            [str(BIN / "healthmate-features"), "erase", "--user-id", str(USER), "--reason", "request 2026-117"],
            cwd=settings.repo_path,
            env=_env(settings, HM_LOCK_WAIT_S="300"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_for(lambda: "online_store" in (_ledger_report(settings).get("removed") or {}), what="step 5")
        finally:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    pending = scan_user(USER, settings)
    assert pending.erasure and pending.erasure["status"] == "pending"
    assert set(pending.remaining) == {"datasets"}, pending.remaining  # every other store is done
    assert _cli(settings, "erase", "--verify", "--user-id", str(USER), check=False).returncode == 1
    assert DatasetRegistry.from_settings(settings).verify(*built["with_user"].split("@")).ok  # not yet touched

    # 2. Run again: completes it.
    done = _cli(settings, "erase", "--user-id", str(USER))
    assert "resumed an interrupted run" in done.stdout and built["with_user"] in done.stdout, done.stdout
    erasure_id = pending.erasure["erasure_id"]
    verify = _cli(settings, "erase", "--verify", "--user-id", str(USER))
    assert "nothing left in any store: 0 rows, 0 keys" in verify.stdout
    assert "redacted by erasure " + erasure_id in _cli(settings, "datasets", "verify").stdout
    _check_after(settings, built, before_files, before_other)

    certificate = _certificate(settings, erasure_id)
    report = certificate["report"]
    assert len(report["runs"]) == 2 and report["api_keys_revoked"] == 1
    assert set(report["removed"]) >= {"raw_files", "ingested_files", "feature_tables", "online_store", "datasets"}
    assert [v["dataset"] for v in report["versions_redacted"]] == [built["with_user"]]
    with open_sql_store(settings) as sql:
        assert sql.query("SELECT revoked_at FROM api_keys WHERE user_id = ?", (USER,))[0]["revoked_at"]
        assert "user_id" not in json.dumps(sql.query("SELECT * FROM erasures"), default=str)
    assert (settings.erasure_key_path.stat().st_mode & 0o777) == 0o600
    assert _cli(settings, "erase", "--user-id", str(USER)).stdout.startswith(f"user {USER} was already erased")
    _check_reingest_and_build(settings, built, erasure_id)


def test_the_admin_api_erases_and_verifies_and_audits_the_erasure_not_the_user(embedded):
    from fastapi.testclient import TestClient

    from healthmate_features.access.audit import AuditLog
    from healthmate_features.access.keys import ApiKeys
    from healthmate_features.api.app import PREFIX, create_app

    settings, _ = embedded
    with open_sql_store(settings) as sql:
        admin = ApiKeys(sql).create_key("admin", name="test-admin").secret
        user = ApiKeys(sql).create_key("user", user_id=OTHER, name="test-user").secret
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        headers = {"Authorization": f"Bearer {admin}"}
        refused = client.post(f"{PREFIX}/erasures", json={"user_id": 7}, headers={"Authorization": f"Bearer {user}"})
        assert refused.status_code == 403
        bad = client.post(f"{PREFIX}/erasures", json={"user_id": -1}, headers=headers)
        assert bad.status_code == 422
        first = client.post(f"{PREFIX}/erasures", json={"user_id": 7, "reason": "request 2026-118"}, headers=headers)
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["status"] == "erased" and body["removed_total"] > 0
        assert not body["certificate"].startswith("/") and str(settings.repo_path) not in first.text
        again = client.post(f"{PREFIX}/erasures", json={"user_id": 7}, headers=headers).json()
        assert (again["status"], again["removed_total"]) == ("already erased", 0)
        scan = client.get(f"{PREFIX}/erasures/verify", params={"user_id": 7}, headers=headers).json()
        assert scan["clean"] and scan["erasure"]["erasure_id"] == body["erasure_id"]
        audit = AuditLog(client.app.state.ctx.sql).query(limit=100)
    targets = [e.target for e in audit if "erasures" in e.endpoint]
    assert f"erasure:{body['erasure_id']}" in targets and "user:7" not in targets


# -- production -------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
def test_erasure_on_the_production_profile_interrupted_then_completed(prod, tmp_path):
    import psycopg
    import redis

    from healthmate_features._feast import feast_redis_key
    from healthmate_features.backends import postgres

    settings = replace(prod, erasure_key="a-production-erasure-key-0123456789")
    built = _build(settings, tmp_path)
    before_files = _version_files(settings, built["without"])
    before_other = _other_user_snapshot(settings, [built["with_user"], built["without"]])
    project = store.open_feature_store(settings).project
    client = redis.Redis.from_url(settings.redis_url)
    key = feast_redis_key(project, "user_id", USER)
    assert client.exists(key)

    # Interrupted: another process holds the lock of the dataset's builds longer than the erasure waits.
    with backend_for(settings).lock("dataset:health_risk"):
        with pytest.raises(LockTimeoutError):
            erase_user(USER, replace(settings, lock_wait_s=0.5), reason="request 2026-119")
    pending = scan_user(USER, settings)
    assert pending.erasure["status"] == "pending" and set(pending.remaining) == {"datasets"}, pending.remaining
    result = erase_user(USER, settings)
    assert result.status == "erased" and result.resumed

    assert not client.exists(key)
    client.close()
    with postgres.connect(settings) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = %s AND column_name = 'user_id'",
            (settings.pg_schema,),
        ).fetchall()
        counts = {
            t: conn.execute(
                psycopg.sql.SQL("SELECT count(*) FROM {}.{} WHERE user_id = %s").format(
                    psycopg.sql.Identifier(settings.pg_schema), psycopg.sql.Identifier(t)
                ),
                (USER,),
            ).fetchone()[0]
            for (t,) in tables
            if t != "api_keys"
        }
    assert {"health_readings", "health_daily", "profile"} <= set(counts) and not any(counts.values()), counts
    _check_after(settings, built, before_files, before_other)
    _certificate(settings, result.erasure_id)
    _check_reingest_and_build(settings, built, result.erasure_id)
