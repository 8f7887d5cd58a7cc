"""The kinds of background job: each a thin wrapper over one library call, with its parameters checked.

    extract_features_for_ml  ingest raw files that changed, build the feature tables (only the rows
                             the changes reach; full: all), materialize incrementally
                             params: {raw: data/raw, full: false}
    prepare_ml_datasets      build and version training sets (training.builder.build_and_save)
                             params: {configs: [configs/health_risk.yaml, ...]} or {config: {...}}
    preprocess_ml_data       re-fit a version's preprocessing on its stored joined frames into a
                             new version (training.builder.refit_preprocessing)
                             params: {dataset: name@version, preprocessing: {...} (optional)}
    version_ml_data          verify every dataset version (DatasetRegistry.verify_all) and record
                             the result; the job fails when one is damaged       params: {}
    apply_retention          remove what is older than the retention policy allows
                             (governance.retention.apply_retention)
                             params: {policy: configs/retention.yaml (default), dry_run: false}

`check_params(kind, params)` validates at submission (a bad job is refused before it is queued,
by the API with 422 and by the scheduler when it loads its file); `run(kind, settings, params,
job_id=...)` does the work on a worker and returns the JSON-ready result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from healthmate_features.config import Settings
from healthmate_features.errors import ConfigError, HealthmateError, NotIngestedError


class JobFailed(HealthmateError):
    """A job ran to its end and found a problem it must report as a failure, with a result."""

    def __init__(self, message: str, result: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.result = dict(result)


@dataclass(frozen=True)
class Kind:
    """A kind of job: its parameters' check (returns them normalized), its work, its audit target."""

    name: str
    check: Callable[[Mapping[str, Any], Settings], dict[str, Any]]
    run: Callable[[Settings, dict[str, Any], str | None], dict[str, Any]]
    target: Callable[[dict[str, Any]], str | None]


def _known(kind: str, params: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    if not isinstance(params, Mapping):
        raise ConfigError(f"{kind} parameters must be a mapping, got {type(params).__name__}")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown {kind} parameter(s) {', '.join(map(str, unknown))}; allowed: {', '.join(allowed) or 'none'}"
        )


def _repo_path(settings: Settings, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else settings.repo_path / path


# -- extract_features_for_ml -------------------------------------------------------------------


def _check_extract(params: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    _known("extract_features_for_ml", params, ("raw", "full"))
    raw = params.get("raw", "data/raw")
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"extract_features_for_ml raw must be a directory path, got {raw!r}")
    full = params.get("full", False)
    if not isinstance(full, bool):
        raise ConfigError(f"extract_features_for_ml full must be true or false, got {full!r}")
    return {"raw": raw, "full": full}


def extract_features_for_ml(settings: Settings, params: dict[str, Any], job_id: str | None = None) -> dict[str, Any]:
    """Ingest the raw files if they changed since the last ingest, build the feature tables (the rows
    the changes reach, or all with `full`), and materialize incrementally (each view from where
    its last run ended)."""
    from healthmate_features.features.build import build_features
    from healthmate_features.raw.ingest import check_raw_store, ingest_raw
    from healthmate_features.stores import feature_store as store

    raw = _repo_path(settings, params["raw"])
    try:
        check_raw_store(raw, settings)
        ingested: dict[str, Any] | None = None  # unchanged since the last ingest
    except NotIngestedError:
        reports, _ = ingest_raw(raw, settings)
        ingested = {r.table: {"accepted": r.accepted, "rejected": r.rejected} for r in reports}
    tables = build_features(raw, settings, full=params.get("full", False))
    from healthmate_features.monitoring import metrics

    done = store.materialize(settings, incremental=True, written=metrics.record_materialized_rows)
    return {
        "ingested": ingested,
        "feature_tables": dict(tables),
        "incremental_build": tables.incremental,
        "materialized_until": done.end.isoformat(),
    }


# -- prepare_ml_datasets -------------------------------------------------------------------------


def _check_prepare(params: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    from healthmate_features.training.builder import TrainingSetConfig

    _known("prepare_ml_datasets", params, ("configs", "config"))
    if ("configs" in params) == ("config" in params):
        raise ConfigError(
            "prepare_ml_datasets needs either configs (a list of training-set config files) or config "
            "(one training-set config), not both or neither"
        )
    if "config" in params:
        return {"config": TrainingSetConfig.from_dict(params["config"]).to_dict()}
    files = params["configs"]
    if not isinstance(files, list) or not files or not all(isinstance(f, str) and f for f in files):
        raise ConfigError(
            f"prepare_ml_datasets configs must be a non-empty list of config files, got {files!r}; "
            "e.g. [configs/health_risk.yaml]"
        )
    for file in files:
        TrainingSetConfig.from_file(_repo_path(settings, file), name=file)  # readable and valid now
    return {"configs": list(files)}


def prepare_ml_datasets(settings: Settings, params: dict[str, Any], job_id: str | None = None) -> dict[str, Any]:
    """Build and version each training set (build_and_save: no version when nothing changed)."""
    from healthmate_features.training.builder import TrainingSetConfig, build_and_save, summary
    from healthmate_features.util.jsonable import to_jsonable

    configs = (
        [TrainingSetConfig.from_dict(params["config"])]
        if "config" in params
        else [TrainingSetConfig.from_file(_repo_path(settings, f), name=f) for f in params["configs"]]
    )
    built = []
    for config in configs:
        ref, dataset, created = build_and_save(config, settings, metadata={"job_id": job_id} if job_id else None)
        built.append({"dataset": ref, "created": created, "summary": to_jsonable(summary(dataset), strict=False)})
    return {"datasets": built}


# -- preprocess_ml_data --------------------------------------------------------------------------


def _check_preprocess(params: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    from healthmate_features.datasets.ref import DatasetRef
    from healthmate_features.training.preprocessing import validate_config

    _known("preprocess_ml_data", params, ("dataset", "preprocessing"))
    if "dataset" not in params:
        raise ConfigError("preprocess_ml_data needs dataset: NAME@VERSION, e.g. health_risk@1.0.0")
    out: dict[str, Any] = {"dataset": str(DatasetRef.parse(params["dataset"]))}
    if params.get("preprocessing") is not None:
        out["preprocessing"] = validate_config(params["preprocessing"])
    return out


def preprocess_ml_data(settings: Settings, params: dict[str, Any], job_id: str | None = None) -> dict[str, Any]:
    """Re-fit a version's preprocessing on its joined frames into a new version (refit_preprocessing)."""
    from healthmate_features.training.builder import refit_preprocessing, summary
    from healthmate_features.util.jsonable import to_jsonable

    ref, dataset, created = refit_preprocessing(
        params["dataset"],
        settings,
        preprocessing=params.get("preprocessing"),
        metadata={"job_id": job_id} if job_id else None,
    )
    return {
        "datasets": [{"dataset": ref, "created": created, "summary": to_jsonable(summary(dataset), strict=False)}],
        "refit_from": params["dataset"],
    }


# -- version_ml_data -----------------------------------------------------------------------------


def _check_version(params: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    _known("version_ml_data", params, ())
    return {}


def version_ml_data(settings: Settings, params: dict[str, Any], job_id: str | None = None) -> dict[str, Any]:
    """Verify every dataset version; the result lists each damaged one with its problems."""
    from healthmate_features.datasets.registry import DatasetRegistry

    reports = DatasetRegistry.from_settings(settings).verify_all()
    damaged = {f"{r.name}@{r.version}": r.problems for r in reports if not r.ok}
    result = {"checked": len(reports), "ok": len(reports) - len(damaged), "damaged": damaged}
    if damaged:
        first = next(iter(damaged.items()))
        raise JobFailed(
            f"{len(damaged)} of {len(reports)} dataset version(s) failed verification, e.g. {first[0]}: "
            f"{first[1][0]}; see the job's result, and `healthmate-features datasets verify NAME VERSION`",
            result,
        )
    return result


# -- apply_retention -----------------------------------------------------------------------------


def _check_retention(params: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    from healthmate_features.governance.retention import DEFAULT_POLICY, load_policy

    _known("apply_retention", params, ("policy", "dry_run"))
    policy = params.get("policy", DEFAULT_POLICY)
    dry_run = params.get("dry_run", False)
    if not isinstance(policy, str) or not policy:
        raise ConfigError(f"apply_retention policy must be a file path, got {policy!r}")
    if not isinstance(dry_run, bool):
        raise ConfigError(f"apply_retention dry_run must be true or false, got {dry_run!r}")
    load_policy(_repo_path(settings, policy))  # a bad policy is refused when the job is submitted
    return {"policy": policy, "dry_run": dry_run}


def apply_retention(settings: Settings, params: dict[str, Any], job_id: str | None = None) -> dict[str, Any]:
    """Apply the retention policy now; the result is what was removed (RetentionResult.to_dict)."""
    from healthmate_features.governance import retention

    policy = retention.load_policy(_repo_path(settings, params["policy"]))
    return retention.apply_retention(settings, policy, dry_run=params["dry_run"]).to_dict()


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("extract_features_for_ml", _check_extract, extract_features_for_ml, lambda p: "features:all"),
        Kind(
            "prepare_ml_datasets",
            _check_prepare,
            prepare_ml_datasets,
            lambda p: f"dataset:{p['config']['name']}" if "config" in p else None,
        ),
        Kind("preprocess_ml_data", _check_preprocess, preprocess_ml_data, lambda p: f"dataset:{p['dataset']}"),
        Kind("version_ml_data", _check_version, version_ml_data, lambda p: None),
        Kind("apply_retention", _check_retention, apply_retention, lambda p: None),
    )
}


def kind_of(name: str) -> Kind:
    """The Kind named `name`; ConfigError naming the known kinds otherwise."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown job kind {name!r}; use one of {', '.join(KINDS)}") from None


def check_params(kind: str, params: Mapping[str, Any] | None, settings: Settings) -> dict[str, Any]:
    """The parameters of a job of `kind`, checked and normalized; ConfigError naming what is wrong."""
    spec = kind_of(kind)
    try:
        return spec.check(params or {}, settings)
    except ConfigError:
        raise
    except HealthmateError as exc:  # a dataset reference or a preprocessing config that does not parse
        raise ConfigError(f"{kind}: {exc}") from exc
