"""Retention: remove what is older than the policy allows, on either profile; what a schedule runs.

The policy (`configs/retention.yaml`, `load_policy`) gives a maximum age in days per kind of data
(null keeps that kind forever):

    raw_events        raw and ingested rows, by their event time (`TableSchema.event_time`:
                      health_readings.recorded_at, app_events.at, labels.event_timestamp; users
                      hold no events and stay until erased): the raw files in the repository and
                      data/ingested/<table>.parquet (embedded), the raw tables (production)
    feature_rows      feature-table rows by event_timestamp (data/features or Postgres)
    rejects_files     data/ingested/<table>.rejects.csv, by the file's age (its modification time)
    dataset_versions  versions by their manifest's created_at become tombstones
                      (`DatasetRegistry.tombstone`: data files removed, manifest kept, a lifecycle
                      record); a version some model run in `production` was logged on is kept and
                      reported

`apply_retention(settings, policy, now=..., dry_run=...)` takes the clock as an argument (tests
freeze it); with `dry_run` it only counts (changes nothing, byte for byte). Rewrites reuse the
erasure's machinery (`governance.rows`, the ingest manifest's hashes, the `materialize:<view>`
and `dataset:<name>` locks); a second run finds nothing left to remove.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml

from healthmate_features.backends import backend_for, open_sql_store
from healthmate_features.backends.base import INGEST_MANIFEST
from healthmate_features.backends.sqlstore import utcnow
from healthmate_features.config import Settings
from healthmate_features.datasets.registry import DatasetRegistry
from healthmate_features.errors import ConfigError, DatasetVersionError
from healthmate_features.features.catalog import FEATURE_TABLES
from healthmate_features.features.pushed import PUSHED_TABLE
from healthmate_features.governance.erasure import data_files, record_in_manifests, refresh_hashes, shown_path
from healthmate_features.governance.rows import remove_rows_before
from healthmate_features.raw.ingest import find_raw_file
from healthmate_features.raw.schemas import RAW_TABLES
from healthmate_features.tracking import Tracker
from healthmate_features.util.checks import MAX_DAYS, Integer, check

LOG_TIMESTAMP_FIELD = "__log_timestamp"  # feast.feature_logging.LOG_TIMESTAMP_FIELD
DEFAULT_POLICY = "configs/retention.yaml"
KINDS = ("raw_events", "feature_rows", "rejects_files", "dataset_versions")
_AGE = Integer(1, MAX_DAYS)


@dataclass(frozen=True)
class RetentionPolicy:
    """Maximum ages in days per kind of data; None keeps that kind forever."""

    raw_events: int | None = None
    feature_rows: int | None = None
    rejects_files: int | None = None
    dataset_versions: int | None = None

    @classmethod
    def from_dict(cls, doc: Any, *, where: str = "retention policy") -> RetentionPolicy:
        """The policy of a parsed YAML document `{max_age_days: {kind: days or null}}`; ConfigError if invalid."""
        if not isinstance(doc, Mapping) or set(doc) != {"max_age_days"}:
            keys = ", ".join(map(str, doc)) if isinstance(doc, Mapping) else type(doc).__name__
            raise ConfigError(f"{where} must hold exactly one key, max_age_days (found: {keys or 'nothing'})")
        ages = doc["max_age_days"]
        if not isinstance(ages, Mapping):
            raise ConfigError(f"{where}: max_age_days must be a mapping of {', '.join(KINDS)} to days or null")
        unknown = sorted(map(str, set(ages) - set(KINDS)))
        if unknown:
            raise ConfigError(f"{where}: unknown kind(s) {', '.join(unknown)} in max_age_days; use {', '.join(KINDS)}")
        values = {}
        for kind in KINDS:
            value = ages.get(kind)
            if value is not None:
                check(f"{where}: max_age_days.{kind}", value, _AGE, hint=" (days), or null to keep forever")
            values[kind] = value
        return cls(**values)

    def cutoff(self, kind: str, now: datetime) -> datetime | None:
        """The oldest time kept for `kind` at `now` (None: kept forever)."""
        days = getattr(self, kind)
        return None if days is None else now - timedelta(days=days)

    def to_dict(self) -> dict[str, int | None]:
        """The ages as the file gives them."""
        return asdict(self)


def load_policy(path: str | Path) -> RetentionPolicy:
    """Read and validate a retention policy file; ConfigError naming the file and the problem."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"no retention policy file {path.name}; create it (see {DEFAULT_POLICY})") from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the retention policy {path.name}: {exc}") from exc
    return RetentionPolicy.from_dict(doc, where=path.name)


@dataclass
class RetentionResult:
    """What one retention run removed (or, with `dry_run`, would remove), and what it kept on purpose."""

    now: str
    dry_run: bool
    policy: dict[str, int | None]
    cutoffs: dict[str, str | None]
    removed: dict[str, dict[str, int]] = field(default_factory=dict)  # step -> place -> rows or files
    tombstoned: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)  # versions past age kept (production runs)

    @property
    def removed_total(self) -> int:
        """Rows and files removed over every step, plus the versions tombstoned."""
        return sum(sum(v.values()) for v in self.removed.values()) + len(self.tombstoned)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**asdict(self), "removed_total": self.removed_total}


def _raw_files_by_table(settings: Settings) -> dict[Path, str]:
    """The package's raw and ingested files (those the erasure rewrites too), each with its table."""
    owned = data_files(settings)
    mine = {p.resolve() for p in (*owned["raw_files"], *owned["ingested_files"])}
    candidates = [(settings.ingested_dir / f"{t}.parquet", t) for t in RAW_TABLES]
    candidates += [(found, t) for t in RAW_TABLES if (found := find_raw_file(settings.raw_dir, t)) is not None]
    manifest = settings.ingested_dir / INGEST_MANIFEST
    if manifest.exists():
        listed = json.loads(manifest.read_text()).get("files") or {}
        candidates += [(Path(info.get("path", "")), t) for t, info in listed.items() if t in RAW_TABLES]
    return {path.resolve(): table for path, table in candidates if path.resolve() in mine}


def _production_versions(settings: Settings) -> set[str]:
    with open_sql_store(settings) as sql:
        return set(Tracker(sql).datasets_used_in("production"))


def apply_retention(
    settings: Settings,
    policy: RetentionPolicy,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
) -> RetentionResult:
    """Remove what is older than `policy` allows at `now` (module docstring); return what was removed.

    Side effects (none with `dry_run`): raw, ingested and feature files rewritten without old
    rows, rows deleted from the raw and feature tables, old rejects files deleted, the ingest
    manifest's hashes updated with a "retention" entry, old dataset versions tombstoned.
    Raises ConfigError for a naive `now`, ServiceUnavailableError when a server does not answer."""
    now = now or utcnow()
    if now.tzinfo is None:
        raise ConfigError(f"now={now.isoformat()} has no time zone; pass an aware time, e.g. 2026-01-01T00:00:00+00:00")
    now = now.astimezone(timezone.utc)
    cutoffs = {kind: policy.cutoff(kind, now) for kind in KINDS}
    result = RetentionResult(
        now=now.isoformat(),
        dry_run=dry_run,
        policy=policy.to_dict(),
        cutoffs={k: v.isoformat() if v else None for k, v in cutoffs.items()},
    )

    def done(step: str, counts: Mapping[str, int]) -> None:
        hits = {k: int(v) for k, v in counts.items() if v}
        if hits:
            result.removed[step] = hits

    backend = backend_for(settings)
    events = {t: s.event_time for t, s in RAW_TABLES.items() if s.event_time}
    with ExitStack() as locks:
        if not dry_run:
            for view in FEATURE_TABLES:  # no materialization reads a feature table mid-way
                locks.enter_context(backend.lock(f"materialize:{view}"))
        raw_cut, feature_cut = cutoffs["raw_events"], cutoffs["feature_rows"]
        if raw_cut is not None:
            counts: dict[str, int] = {}
            for path, table in _raw_files_by_table(settings).items():
                if table in events:
                    counts[shown_path(path, settings)] = remove_rows_before(
                        path, events[table], raw_cut, count_only=dry_run, keyring=backend.keyring
                    )
            done("raw_files", counts)
            db_manifest = None
            if not dry_run and any(counts.values()):  # a run that rewrote no file leaves the manifests alone
                entry = {"at": now.isoformat(), "cutoff": raw_cut.isoformat(), "removed": dict(counts)}

                def update(manifest: dict[str, Any]) -> None:
                    refresh_hashes(manifest)
                    manifest.setdefault("retention", []).append(entry)

                db_manifest = record_in_manifests(settings, update)
            done("raw_tables", backend.expire_raw_rows(events, raw_cut, manifest=db_manifest, count_only=dry_run))
        if feature_cut is not None:
            tables = [*FEATURE_TABLES, PUSHED_TABLE]  # pushed readings expire as feature rows do
            done("feature_tables", backend.expire_feature_rows(tables, feature_cut, count_only=dry_run))
            # what was served expires as the feature rows do, by the time it was served
            done(
                "feature_log_files",
                {
                    shown_path(path, settings): remove_rows_before(
                        path, LOG_TIMESTAMP_FIELD, feature_cut, count_only=dry_run, keyring=backend.keyring
                    )
                    for path in data_files(settings)["feature_log_files"]
                },
            )
    if cutoffs["rejects_files"] is not None:
        oldest = cutoffs["rejects_files"].timestamp()
        gone: dict[str, int] = {}
        for path in data_files(settings)["rejects_files"]:
            if path.stat().st_mtime < oldest:
                gone[shown_path(path, settings)] = 1
                if not dry_run:
                    path.unlink(missing_ok=True)
        done("rejects_files", gone)
    if cutoffs["dataset_versions"] is not None:
        _expire_versions(settings, policy, cutoffs["dataset_versions"], now, result, dry_run=dry_run)
    return result


def _expire_versions(
    settings: Settings,
    policy: RetentionPolicy,
    cutoff: datetime,
    now: datetime,
    result: RetentionResult,
    *,
    dry_run: bool,
) -> None:
    """Tombstone every version created before `cutoff`, except those a production model run uses (kept, reported)."""
    registry = DatasetRegistry.from_settings(settings)
    names = registry.names()
    if not names:
        return
    in_production = _production_versions(settings)
    backend = backend_for(settings)
    for name in names:
        with ExitStack() as lock:
            if not dry_run:
                lock.enter_context(backend.lock(f"dataset:{name}"))
            for version in registry.versions(name):
                ref = f"{name}@{version}"
                created = _created(registry.show(name, version).get("created_at"))
                if created is None or created >= cutoff or registry.state(name, version).tombstone is not None:
                    continue
                why = (
                    f"created {created.date().isoformat()}, older than dataset_versions={policy.dataset_versions} days"
                )
                if ref in in_production:
                    result.kept.append(
                        {"dataset": ref, "created_at": created.isoformat(), "why": "used by a model run in production"}
                    )
                    continue
                if not dry_run:
                    try:
                        registry.tombstone(name, version, at=now, why=why)
                    except DatasetVersionError as exc:
                        raise ConfigError(f"retention cannot tombstone {ref}: {exc}") from exc
                result.tombstoned.append({"dataset": ref, "created_at": created.isoformat(), "why": why})


def _created(value: Any) -> datetime | None:
    try:
        stamp = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


__all__ = ["DEFAULT_POLICY", "RetentionPolicy", "RetentionResult", "apply_retention", "load_policy"]
