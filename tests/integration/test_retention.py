"""Retention on the production profile (README "Erasure, retention and exports"), with a frozen clock:
raw and feature rows in Postgres by event time, rejects files by age, dataset versions tombstoned
unless a production model run uses them; a dry run changes no row and no file, a second run
removes nothing. The embedded profile's run is tests/unit/test_retention.py."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from healthmate_features.backends import open_sql_store, postgres
from healthmate_features.cli import main
from healthmate_features.datasets.registry import DatasetRegistry
from healthmate_features.features.build import build_features
from healthmate_features.features.catalog import FEATURE_TABLES
from healthmate_features.governance.retention import RetentionPolicy, apply_retention
from healthmate_features.raw.generate import generate
from healthmate_features.raw.ingest import check_raw_store, ingest_raw
from healthmate_features.raw.schemas import RAW_TABLES
from healthmate_features.tracking import Tracker

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)
CUT = datetime(2025, 2, 15, tzinfo=timezone.utc)  # generated data runs 2025-01-01 .. 2025-03-31
DAYS = (NOW - CUT).days
TIMES = {
    **{t: s.event_time for t, s in RAW_TABLES.items() if s.event_time},
    **dict.fromkeys(FEATURE_TABLES, "event_timestamp"),
}


def _tables(settings) -> dict[str, tuple[int, int, str]]:
    """Per raw and feature table: rows before CUT, rows in all, and an md5 of every row (byte-for-byte content)."""
    out = {}
    ident = psycopg.sql.Identifier
    with postgres.connect(settings) as conn:
        for table, column in TIMES.items():
            name = psycopg.sql.SQL("{}.{}").format(ident(settings.pg_schema), ident(table))
            query = psycopg.sql.SQL(
                "SELECT count(*) FILTER (WHERE {c} < %s), count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) "
                "FROM {n} t"
            ).format(c=ident(column), n=name)
            out[table] = conn.execute(query, (CUT,)).fetchone()
    return out


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): f"{hashlib.sha256(p.read_bytes()).hexdigest()} {p.stat().st_mtime_ns}"
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_retention_on_the_production_profile(prod, make_dataset, monkeypatch):
    settings = prod
    generate(settings.raw_dir, users=15, days=90, seed=4, progress=False)
    ingest_raw(settings.raw_dir, settings)
    build_features(settings.raw_dir, settings)
    registry = DatasetRegistry.from_settings(settings)
    registry.save(make_dataset(seed=1), "risk")
    registry.save(make_dataset(seed=2), "risk")
    with open_sql_store(settings) as sql:
        Tracker(sql, datasets=registry).log_metrics(
            "risk-model", version="1", dataset="risk@1.0.0", environment="production", metrics={"auc": 0.8}
        )
    rejects = settings.ingested_dir / "app_events.rejects.csv"
    rejects.write_text("user_id,at,reason\n3,2025-01-02T00:00:00Z,at: not a time\n")
    stamp = (NOW - timedelta(days=100)).timestamp()
    os.utime(rejects, (stamp, stamp))
    policy = RetentionPolicy(raw_events=DAYS, feature_rows=DAYS, rejects_files=90, dataset_versions=365)
    before = _tables(settings)
    assert all(old > 0 for old, _, _ in before.values()), before

    files = _files(settings.data_dir)
    planned = apply_retention(settings, policy, now=NOW, dry_run=True)
    assert _tables(settings) == before and _files(settings.data_dir) == files  # nothing changed
    assert planned.removed["raw_tables"] == {t: before[t][0] for t in RAW_TABLES if RAW_TABLES[t].event_time}
    assert planned.removed["feature_tables"] == {t: before[t][0] for t in FEATURE_TABLES}

    result = apply_retention(settings, policy, now=NOW)
    assert result.removed == planned.removed and result.tombstoned == planned.tombstoned
    after = _tables(settings)
    for table, (old, total, _) in before.items():
        assert after[table][:2] == (0, total - old), table
    assert not rejects.exists() and result.removed["rejects_files"] == {"data/ingested/app_events.rejects.csv": 1}
    stored = check_raw_store(settings.raw_dir, settings)  # the stored manifest follows the rewritten raw files
    assert stored["retention"][-1]["at"] == NOW.isoformat()
    assert [k["dataset"] for k in result.kept] == ["risk@1.0.0"]
    assert [t["dataset"] for t in result.tombstoned] == ["risk@1.0.1"]
    report = registry.verify("risk", "1.0.1")
    assert report.ok and "tombstoned by retention on 2030-01-01" in report.notes[0]

    # the second run (as the CLI runs it, on the production profile): nothing left to remove
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    policy_file = settings.repo_path / "retention.yaml"
    policy_file.write_text(
        f"max_age_days: {{raw_events: {DAYS}, feature_rows: {DAYS}, rejects_files: 90, dataset_versions: 365}}\n"
    )
    files = _files(settings.data_dir)
    again = CliRunner().invoke(
        main,
        [
            "retention",
            "apply",
            "--profile",
            "production",
            "--policy",
            str(policy_file),
            "--now",
            NOW.isoformat(),
            "--json",
        ],
    )
    assert again.exit_code == 0, again.output
    doc = json.loads(again.output)
    assert doc["removed_total"] == 0 and [k["dataset"] for k in doc["kept"]] == ["risk@1.0.0"]
    assert _tables(settings) == after and _files(settings.data_dir) == files
