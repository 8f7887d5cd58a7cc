"""Erase one person from every place the package writes; scan that nothing is left; keep a certificate.

`erase_user(user_id, settings)` runs these steps, on either profile (the Backend does what differs):

1. ledger     the erasure is recorded first, as pending, under a keyed hash of the id
              (`backends.ledger`): from here on `ingest` rejects the person's rows ("erased")
              and the training-set builder drops them from entity frames;
2. files      the raw files the ingest manifest lists (and `data/raw`), the ingested tables
              `data/ingested/<table>.parquet` and the rejects files, each rewritten without the
              person's rows (atomically); the ingest manifest records the erasure and the raw
              files' new hashes (so `build-features` still accepts the raw directory);
3. raw tables the profile's raw tables (production: DELETE in Postgres; embedded: step 2);
4. features   every feature table (embedded: Parquet rewritten; production: DELETE);
5. online     the online store (SQLite rows through Feast's connection; the Redis hash);
6. datasets   every dataset version holding the person is redacted (`DatasetRegistry.redact`:
              new files, a lifecycle record); versions without them are not touched;
7. api keys   the person's user keys are revoked (kept, like the audit log: see README);
8. complete   the report (certificate) is stored in the ledger and as data/erasures/<id>.json.

Steps 3-5 hold the `materialize:<view>` locks and step 6 each `dataset:<name>` lock, so no
materialization or build runs on a snapshot from before the erasure. Every step is idempotent
and its counts are saved in the ledger when it ends: a run that is killed leaves the erasure
pending, and running it again completes it; a second run of a complete erasure removes nothing
and says so. The report holds counts, places, versions, times, the actor and the key
fingerprint: never the user id or a health value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from healthmate_features.backends import backend_for, open_sql_store
from healthmate_features.backends.base import INGEST_MANIFEST
from healthmate_features.backends.ledger import Erasure, ErasureLedger
from healthmate_features.backends.sqlstore import utcnow
from healthmate_features.config import Settings
from healthmate_features.datasets.registry import DatasetRegistry
from healthmate_features.errors import ConfigError, DatasetVersionError, ErasureError, NotIngestedError
from healthmate_features.features.catalog import FEATURE_TABLES
from healthmate_features.features.pushed import PUSHED_TABLE
from healthmate_features.governance.rows import count_user_rows, remove_user_rows
from healthmate_features.raw.ingest import find_raw_file, sha256_file
from healthmate_features.raw.schemas import RAW_TABLES
from healthmate_features.util.files import atomic_write_text

FEATURE_LOGS_DIR = "feature_logs"  # under data/: where the feature services' LoggingConfig writes
REPORT_FORMAT = "healthmate-erasure-report/1"
PIPELINE_NOTE = (
    "pipeline.joblib kept as it was: it was fitted on the training split with the erased rows "
    "(aggregate statistics only, e.g. medians, means, category lists); refit it without them with "
    '`healthmate-features jobs submit preprocess_ml_data --params \'{"dataset": "NAME@VERSION"}\'`'
)
MAX_REASON = 500


@dataclass
class ErasureResult:
    """What one run of `erase_user` did: the erasure, this run's removals, and the certificate."""

    erasure_id: str
    status: str  # "erased" (this run completed it) or "already erased" (nothing was left)
    removed: dict[str, dict[str, int]]  # this run: step -> place -> rows or keys removed
    report: dict[str, Any]
    certificate: str  # the JSON file, relative to the repository root
    resumed: bool = False

    @property
    def removed_total(self) -> int:
        """Rows and keys this run removed, over every store."""
        return sum(sum(v.values()) for v in self.removed.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "erasure_id": self.erasure_id,
            "status": self.status,
            "resumed": self.resumed,
            "removed_total": self.removed_total,
            "removed": self.removed,
            "certificate": self.certificate,
            "report": self.report,
        }


@dataclass
class ScanResult:
    """What `scan_user` found: per store and place, rows or keys of the user still there."""

    remaining: dict[str, dict[str, int]] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)  # records kept by design (audit log, revoked keys)
    sources: dict[str, int] = field(default_factory=dict)  # source exports outside the repository still holding rows
    erasure: dict[str, Any] | None = None  # the ledger's entry (id, status), when there is one

    @property
    def total(self) -> int:
        """Rows and keys of the user left anywhere."""
        return sum(sum(v.values()) for v in self.remaining.values())

    @property
    def clean(self) -> bool:
        """True when nothing of the user remains (what `erase --verify` exits 0 on)."""
        return self.total == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "clean": self.clean,
            "remaining_total": self.total,
            "remaining": self.remaining,
            "kept": self.kept,
            "source_files": self.sources,
            "erasure": self.erasure,
        }


def _user_id(user_id: Any) -> int:
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id < 0:
        raise ConfigError(f"user id {user_id!r} is not a non-negative integer; pass the HealthMate user id, e.g. 5")
    return user_id


def shown_path(path: Path, settings: Settings) -> str:
    """A path for reports and API answers: relative to the repository, else only its name (no server paths)."""
    try:
        return path.resolve().relative_to(settings.repo_path.resolve()).as_posix()
    except ValueError:
        return f"{path.name} (outside the repository)"


def data_files(settings: Settings) -> dict[str, list[Path]]:
    """Every file of the package's own that may hold a user's rows, per step (files that exist).

    Raw files are the package's when they lie in the repository (`generate` writes data/raw);
    raw files an ingest read from elsewhere ("source_files") are the source system's export:
    they are counted and reported, never rewritten (erase the person at the source)."""
    raw: list[Path] = []
    manifest_path = settings.ingested_dir / INGEST_MANIFEST
    if manifest_path.exists():
        for info in (json.loads(manifest_path.read_text()).get("files") or {}).values():
            raw.append(Path(info["path"]))
    for table in RAW_TABLES:
        found = find_raw_file(settings.raw_dir, table)
        if found is not None:
            raw.append(found)
    unique_raw = list(dict.fromkeys(p.resolve() for p in raw if p.exists()))
    inside = [p for p in unique_raw if p.is_relative_to(settings.repo_path.resolve())]
    ingested = [settings.ingested_dir / f"{t}.parquet" for t in RAW_TABLES]
    rejects = [settings.ingested_dir / f"{t}.rejects.csv" for t in RAW_TABLES]
    return {
        "raw_files": inside,
        "source_files": [p for p in unique_raw if p not in inside],
        "ingested_files": [p for p in ingested if p.exists()],
        "rejects_files": [p for p in rejects if p.exists()],
        "feature_log_files": feature_log_files(settings),
    }


def feature_log_files(settings: Settings) -> list[Path]:
    """The served-feature log files under data/feature_logs/ (monitoring.served_log; Feast's
    feature logging to FileLoggingDestination paths there): each row is one user's served values."""
    root = settings.data_dir / FEATURE_LOGS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*.parquet") if p.is_file() and not p.name.startswith("."))


def refresh_hashes(manifest: dict[str, Any]) -> None:
    """Set an ingest manifest's raw-file hashes to the files' current ones (after rows were removed from them)."""
    for info in (manifest.get("files") or {}).values():
        path = Path(info.get("path", ""))
        if path.exists():
            info["sha256"] = sha256_file(path)


def _update_manifest(manifest: dict[str, Any], erasure_id: str, removed: Mapping[str, Mapping[str, int]]) -> None:
    """Record an erasure in an ingest manifest: the raw files' new hashes and the rows removed (added up on re-runs)."""
    refresh_hashes(manifest)
    entries = manifest.setdefault("erasures", [])
    entry = next((e for e in entries if e.get("erasure_id") == erasure_id), None)
    if entry is None:
        entry = {"erasure_id": erasure_id, "at": datetime.now(timezone.utc).isoformat(), "removed": {}}
        entries.append(entry)
    for step, places in removed.items():
        for place, n in places.items():
            entry["removed"].setdefault(step, {})
            entry["removed"][step][place] = entry["removed"][step].get(place, 0) + int(n)


def _add(total: dict[str, dict[str, int]], step: str, counts: Mapping[str, int]) -> None:
    into = total.setdefault(step, {})
    for place, n in counts.items():
        into[place] = into.get(place, 0) + int(n)


class _Run:
    """One run of an erasure: the ledger row, the counts so far, saved after every step."""

    def __init__(self, ledger: ErasureLedger, erasure: Erasure, settings: Settings, actor: str | None) -> None:
        self.ledger = ledger
        self.erasure = erasure
        self.settings = settings
        self.removed: dict[str, dict[str, int]] = {}
        self.report = dict(erasure.report) or {
            "format": REPORT_FORMAT,
            "erasure_id": erasure.erasure_id,
            "subject": "user id, as HMAC-SHA256 under the key below (the id itself is not kept)",
            "key_id": erasure.key_id,
            "profile": settings.profile,
            "requested_at": erasure.requested_at.isoformat(),
            "reason": erasure.reason,
            "actor": erasure.actor,
            "removed": {},
            "versions_redacted": [],
            "pipelines": PIPELINE_NOTE,
            "kept": {},
            "runs": [],
        }
        self.report["runs"] = [*self.report.get("runs", []), {"started_at": utcnow().isoformat(), "actor": actor}]

    def done(self, step: str, counts: Mapping[str, int]) -> None:
        counts = {k: int(v) for k, v in counts.items() if v}
        _add(self.removed, step, counts)
        _add(self.report.setdefault("removed", {}), step, counts)
        self.report["runs"][-1]["removed"] = self.removed
        self.ledger.save_report(self.erasure.erasure_id, self.report)


def erase_user(
    user_id: int,
    settings: Settings,
    *,
    reason: str | None = None,
    actor: str | None = None,
) -> ErasureResult:
    """Erase a user from every store of the profile (module docstring); return what this run did.

    Side effects: the ledger row (pending first, complete at the end), rewritten files, deleted
    rows and keys, redacted dataset versions, revoked API keys, the certificate
    data/erasures/<erasure id>.json. Safe to interrupt and to run again. Raises ConfigError for a
    bad id or reason, ErasureError when a step cannot finish (the erasure then stays pending:
    fix the cause and run it again), ServiceUnavailableError when a server does not answer.
    """
    user_id = _user_id(user_id)
    if reason is not None and (len(reason) > MAX_REASON or any(ord(c) < 32 for c in reason)):
        raise ConfigError(
            f"reason has {len(reason)} characters or a control character; give one line of at most {MAX_REASON} "
            "(and no health details: it is kept in the certificate)"
        )
    backend = backend_for(settings)
    with open_sql_store(settings) as sql:
        ledger = ErasureLedger(sql, settings)
        erasure, created = ledger.begin(user_id, reason=reason, actor=actor)
        run = _Run(ledger, erasure, settings, actor)
        ledger.save_report(erasure.erasure_id, run.report)

        files = data_files(settings)
        raw_removed = {
            shown_path(p, settings): remove_user_rows(p, user_id, keyring=backend.keyring) for p in files["raw_files"]
        }
        run.done("raw_files", raw_removed)
        run.done(
            "ingested_files",
            {
                shown_path(p, settings): remove_user_rows(p, user_id, keyring=backend.keyring)
                for p in files["ingested_files"]
            },
        )
        run.done(
            "rejects_files",
            {
                shown_path(p, settings): remove_user_rows(p, user_id, keyring=backend.keyring)
                for p in files["rejects_files"]
            },
        )
        run.done(
            "feature_log_files",
            {
                shown_path(p, settings): remove_user_rows(p, user_id, keyring=backend.keyring)
                for p in files["feature_log_files"]
            },
        )
        db_manifest = record_in_manifests(settings, lambda m: _update_manifest(m, erasure.erasure_id, run.removed))

        tables = [*FEATURE_TABLES, PUSHED_TABLE]  # pushed readings are health data too
        with ExitStack() as locks:
            for view in tables:  # no materialization reads a feature table from before the erasure
                locks.enter_context(backend.lock(f"materialize:{view}"))
            run.done("raw_tables", backend.erase_raw_rows(list(RAW_TABLES), user_id, manifest=db_manifest))
            run.done("feature_tables", backend.erase_feature_rows(tables, user_id))
            run.done("online_store", _online(settings, user_id, count_only=False))

        redacted = _redact_versions(settings, user_id, erasure.erasure_id)
        run.done("datasets", {r["dataset"]: _x_rows(r["rows_removed"]) for r in redacted})
        known = {v["dataset"] for v in run.report.get("versions_redacted", [])}
        run.report["versions_redacted"] = [
            *run.report.get("versions_redacted", []),
            *(r for r in redacted if r["dataset"] not in known),
        ]
        run.report["api_keys_revoked"] = run.report.get("api_keys_revoked", 0) + _revoke_keys(sql, user_id)
        run.report["kept"] = _kept(sql, user_id)
        run.report["source_files_not_erased"] = {
            k: v for k, v in _source_rows(files["source_files"], user_id, settings).items() if v
        }
        run.report["runs"][-1]["finished_at"] = utcnow().isoformat()
        already = not created and erasure.status == "complete"
        if already and not sum(sum(v.values()) for v in run.removed.values()):
            run.report["runs"].pop()  # a no-op second run changes nothing in the certificate
            ledger.save_report(erasure.erasure_id, run.report)
            return _result(settings, ledger.get(erasure.erasure_id), run, "already erased", resumed=False)
        final = ledger.complete(erasure.erasure_id, run.report)
        run.report["completed_at"] = final.completed_at.isoformat() if final.completed_at else None
        ledger.save_report(erasure.erasure_id, run.report)
        final = ledger.get(erasure.erasure_id)
        _write_certificate(settings, final)
        return _result(settings, final, run, "erased", resumed=not created and erasure.status == "pending")


def _result(settings: Settings, erasure: Erasure, run: _Run, status: str, *, resumed: bool) -> ErasureResult:
    return ErasureResult(
        erasure_id=erasure.erasure_id,
        status=status,
        removed={k: v for k, v in run.removed.items() if v},
        report=erasure.report,
        certificate=shown_path(certificate_path(settings, erasure.erasure_id), settings),
        resumed=resumed,
    )


def certificate_path(settings: Settings, erasure_id: str) -> Path:
    """Where an erasure's certificate (its report as JSON) is written."""
    return settings.erasures_dir / f"{erasure_id}.json"


def _write_certificate(settings: Settings, erasure: Erasure) -> None:
    document = {**erasure.to_dict(), "subject": erasure.subject}
    document["report"] = erasure.report
    settings.erasures_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(certificate_path(settings, erasure.erasure_id), json.dumps(document, indent=2, sort_keys=True))


def record_in_manifests(settings: Settings, update: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
    """Apply `update` to the ingest manifest file (rewritten); return the raw store's copy, updated alike (or None)."""
    path = settings.ingested_dir / INGEST_MANIFEST
    if path.exists():
        manifest = json.loads(path.read_text())
        update(manifest)
        atomic_write_text(path, json.dumps(manifest, indent=2))
    try:
        stored, _, _ = backend_for(settings).loaded_ingest(settings.raw_dir)
    except NotIngestedError:
        return None
    update(stored)
    return stored


def _online(settings: Settings, user_id: int, *, count_only: bool) -> dict[str, int]:
    """The online store's rows or keys of the user (deleted unless `count_only`); {} before `feast apply`."""
    backend = backend_for(settings)
    with backend.service_errors():
        store = backend.open_feature_store()
        return backend.erase_online_rows(store, user_id, count_only=count_only)


def _redact_versions(settings: Settings, user_id: int, erasure_id: str) -> list[dict[str, Any]]:
    """Redact every dataset version that holds the user; one summary per version rewritten."""
    registry = DatasetRegistry.from_settings(settings)
    backend = backend_for(settings)
    done = []
    for name in registry.names():
        with backend.lock(f"dataset:{name}"):
            for version in registry.versions(name):
                try:
                    record = registry.redact(
                        name, version, lambda f: f["user_id"] == user_id, erasure_id=erasure_id, note=PIPELINE_NOTE
                    )
                except DatasetVersionError as exc:
                    raise ErasureError(
                        f"erasure {erasure_id} cannot redact {name}@{version}: {exc}. The erasure stays pending; "
                        "run it again when the version is fixed (or deleted)"
                    ) from exc
                if record is not None:
                    done.append(
                        {
                            "dataset": f"{name}@{version}",
                            "at": record["at"],
                            "rows_removed": record["removed_rows"],
                            "data_hash_before": record["previous"]["data_hash"],
                            "data_hash_after": record["data_hash"],
                            "files": {f: e["sha256"] for f, e in record["files"].items()},
                        }
                    )
    return done


def _source_rows(paths: list[Path], user_id: int, settings: Settings) -> dict[str, int]:
    """Rows of the user in raw files outside the repository (read, never rewritten; an encrypted
    one, e.g. data/raw of the checkout this one was copied from, with this repository's keyring)."""
    keyring = backend_for(settings).keyring
    return {shown_path(p, settings): count_user_rows(p, user_id, keyring=keyring) for p in paths}


def _x_rows(removed: Mapping[str, int]) -> int:
    """Rows of a version removed (X_train + X_test; y and joined frames lose the same rows)."""
    return sum(int(n) for split, n in removed.items() if split.startswith("X_"))


def _revoke_keys(sql: Any, user_id: int) -> int:
    """Revoke the user's API keys (kept for the audit log, which names them); how many were active."""
    return sql.execute(
        "UPDATE api_keys SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL", (utcnow(), user_id)
    )


def _kept(sql: Any, user_id: int) -> dict[str, int]:
    """Records kept by design that name the user: audit entries (`user:N`) and API keys (revoked)."""
    audit = sql.query("SELECT count(*) AS n FROM audit_log WHERE target = ?", (f"user:{user_id}",))[0]["n"]
    keys = sql.query("SELECT count(*) AS n FROM api_keys WHERE user_id = ?", (user_id,))[0]["n"]
    return {"audit_log entries (target user:N)": int(audit), "api_keys (revoked)": int(keys)}


def scan_user(user_id: int, settings: Settings) -> ScanResult:
    """Look for the user in every store of the profile, changing nothing; what `erase --verify` prints.

    Counts rows in the raw, ingested and rejects files, the raw and feature tables, the online
    store and every dataset version's joined frames (or X, when it has user_id). The audit log
    and the user's (revoked) API keys are reported as kept, not as remaining (README)."""
    user_id = _user_id(user_id)
    backend = backend_for(settings)
    result = ScanResult()

    def found(step: str, counts: Mapping[str, int]) -> None:
        hits = {k: int(v) for k, v in counts.items() if v}
        if hits:
            result.remaining[step] = hits

    files = data_files(settings)
    for step in ("raw_files", "ingested_files", "rejects_files", "feature_log_files"):
        found(
            step, {shown_path(p, settings): count_user_rows(p, user_id, keyring=backend.keyring) for p in files[step]}
        )
    result.sources = {k: v for k, v in _source_rows(files["source_files"], user_id, settings).items() if v}
    found("raw_tables", backend.erase_raw_rows(list(RAW_TABLES), user_id, count_only=True))
    found("feature_tables", backend.erase_feature_rows([*FEATURE_TABLES, PUSHED_TABLE], user_id, count_only=True))
    found("online_store", _online(settings, user_id, count_only=True))
    registry = DatasetRegistry.from_settings(settings)
    versions: dict[str, int] = {}
    for name in registry.names():
        for version in registry.versions(name):
            if registry.state(name, version).tombstone is not None:
                continue  # retention removed its data files: nobody's rows are left in it
            dataset = registry.load(name, version, verify=False, load_pipeline=False)
            rows = 0
            for side in ("train", "test"):
                frame = getattr(dataset, f"joined_{side}")
                if frame is None:
                    frame = getattr(dataset, f"X_{side}")
                if "user_id" in frame.columns:
                    rows += int((frame["user_id"] == user_id).sum())
            versions[f"{name}@{version}"] = rows
    found("datasets", versions)
    with open_sql_store(settings) as sql:
        result.kept = _kept(sql, user_id)
        erasure = ErasureLedger(sql, settings).find(user_id)
    if erasure is not None:
        result.erasure = {"erasure_id": erasure.erasure_id, "status": erasure.status}
    return result


def list_erasures(settings: Settings) -> list[dict[str, Any]]:
    """Every erasure in the ledger (id, status, times, actor, reason, rows removed), oldest first."""
    with open_sql_store(settings) as sql:
        rows = ErasureLedger(sql, settings).list()
    return [
        {
            "erasure_id": e.erasure_id,
            "status": e.status,
            "requested_at": e.requested_at.isoformat(),
            "completed_at": e.completed_at.isoformat() if e.completed_at else None,
            "actor": e.actor,
            "reason": e.reason,
            "removed_total": sum(sum(v.values()) for v in (e.report.get("removed") or {}).values()),
            "versions_redacted": len(e.report.get("versions_redacted") or []),
            "certificate": shown_path(certificate_path(settings, e.erasure_id), settings),
        }
        for e in rows
    ]
