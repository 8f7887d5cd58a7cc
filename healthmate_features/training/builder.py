"""The training-set builder: entity/label frame + feature service -> versioned ProcessedDataset.

Steps: validate the entity frame (`entities`), join point-in-time through Feast's
`get_historical_features` (the embedded profile's offline store is our DuckDB ASOF store),
split with leakage guards (`splits`), fit the preprocessing pipeline on the training split only
(`preprocessing`), and save an immutable, content-hashed version (`versioning`).

A training-set config (YAML or dict; README "Training-set configs"):

    name: health_risk                 # dataset name in the registry
    feature_service: health_risk_v1
    entities: data/ingested/labels.parquet   # Parquet/CSV; relative to the repository root
    label: adverse_event_30d
    task: classification              # or regression
    split: {strategy: time, test_size: 0.2, label_horizon_days: 30}
    preprocessing: {numeric: {impute: median, scale: standard}, categorical: {encode: onehot}}
    bump: null                        # major|minor|patch; default: the registry's rule
    exclude_late_arrivals: false      # skip feature rows created after the prediction time
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import pandas as pd
import yaml
from feast import FeatureService
from pydantic import ConfigDict, Field

from healthmate_features.backends import backend_for
from healthmate_features.config import Settings
from healthmate_features.crypto import content_sha256
from healthmate_features.datasets.dataset import ProcessedDataset, data_hash, frame_hash
from healthmate_features.datasets.registry import Bump, DatasetRegistry, check_name
from healthmate_features.datasets.saved import register_versions
from healthmate_features.errors import ConfigError, DatasetVersionError, FeatureRepoError
from healthmate_features.features.catalog import FEATURE_TABLES
from healthmate_features.stores import feature_store as store
from healthmate_features.training.entities import (
    REQUIRED,
    EntityReport,
    check_entity_file,
    entity_format,
    read_entity_columns,
    read_entity_frame,
    require_columns,
    validate_entity_frame,
)
from healthmate_features.training.preprocessing import (
    TASKS,
    Task,
    build_pipeline,
    fit_transform_splits,
    validate_config,
)
from healthmate_features.training.splits import SplitConfig, split_frame
from healthmate_features.util.text import yaml_problem

RESERVED_PREFIXES = ("_hm_", "__hm_")  # internal columns of a join (e.g. the entity row number)
_EXAMPLE: dict[str, Any] = {
    "name": "health_risk",
    "feature_service": "health_risk_v1",
    "entities": "data/ingested/labels.parquet",
    "label": "adverse_event_30d",
    "task": "classification",
    "split": {"strategy": "time", "test_size": 0.25, "label_horizon_days": 30},
    "preprocessing": {
        "numeric": {"impute": "median", "scale": "standard"},
        "categorical": {"impute": "most_frequent", "encode": "onehot"},
    },
}


@dataclass
class TrainingSetConfig:
    """What to build; `from_dict`/`from_file` validate strictly (unknown keys are errors).

    The one schema of a training-set config: the HTTP API takes this dataclass as its request
    body (pydantic reads the field constraints below), so the two cannot drift.
    """

    __pydantic_config__ = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE]})

    name: Annotated[str, Field(min_length=1, max_length=128, description="Dataset name in the registry.")]
    feature_service: Annotated[str, Field(min_length=1, max_length=200, description="The model contract.")]
    entities: Annotated[
        str,
        Field(min_length=1, max_length=1000, description="Parquet/CSV entity file, relative to the repository root."),
    ]
    label: Annotated[str, Field(min_length=1, max_length=200, description="Label column of the entity file.")]
    task: Task = "classification"
    split: Annotated[dict[str, Any], Field(description="Split config (strategy time|group|random, ...).")] = field(
        default_factory=lambda: {"strategy": "time"}
    )
    preprocessing: Annotated[dict[str, Any], Field(description="Preprocessing config.")] = field(default_factory=dict)
    bump: Annotated[Bump | None, Field(description="Version bump; default: the bump rule.")] = None
    exclude_late_arrivals: Annotated[
        bool, Field(description="Skip feature rows created after the prediction time (late arrivals).")
    ] = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingSetConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a training-set config must be a mapping, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown training-set config key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
            )
        missing = [k for k in ("name", "feature_service", "entities", "label") if not data.get(k)]
        if missing:
            raise ConfigError(f"training-set config is missing {', '.join(missing)}; see README 'Training-set configs'")
        not_text = [k for k in ("name", "feature_service", "entities", "label") if not isinstance(data[k], str)]
        if not_text:
            raise ConfigError(f"training-set config {', '.join(not_text)} must be text, e.g. label: adverse_event_30d")
        if data["label"] in REQUIRED:
            raise ConfigError(
                f"label {data['label']!r} is a key column of the entity frame; "
                "set label to the outcome column, e.g. adverse_event_30d"
            )
        if data["label"].startswith(RESERVED_PREFIXES):
            raise ConfigError(
                f"label {data['label']!r} starts with {' or '.join(map(repr, RESERVED_PREFIXES))}, which is reserved "
                "for the package's internal columns; rename the label column"
            )
        try:
            check_name(data["name"])
        except DatasetVersionError as exc:
            raise ConfigError(f"training-set config name: {exc}") from exc
        config = cls(**dict(data))
        if config.task not in TASKS:
            raise ConfigError(f"task {config.task!r} is not one of {', '.join(TASKS)}")
        if config.bump not in (None, "major", "minor", "patch"):
            raise ConfigError(f"bump {config.bump!r} is not one of major, minor, patch (or leave it out)")
        if not isinstance(config.split, Mapping):
            raise ConfigError(f"split must be a mapping such as {{strategy: time}}, got {type(config.split).__name__}")
        SplitConfig.from_dict(config.split)  # validates
        validate_config(config.preprocessing)
        return config

    @classmethod
    def from_file(cls, path: str | Path, *, name: str | None = None) -> TrainingSetConfig:
        """Read and validate a YAML config file; errors show it as `name` (default: the path) and
        never quote its lines."""
        path = Path(path)
        shown = name or str(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read training-set config {shown}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"training-set config {shown} is not valid YAML: {yaml_problem(exc)}") from exc
        return cls.from_dict(data or {})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def feature_window_days(feature_refs: list[str]) -> int:
    """The longest look-back window over the feature views a list of references uses."""
    views = {ref.split(":", 1)[0] for ref in feature_refs}
    return max((FEATURE_TABLES[v].window_days for v in views if v in FEATURE_TABLES), default=0)


def _feature_refs(fs, feature_service: str) -> list[str]:
    service = store.feature_refs(fs, feature_service)
    if not isinstance(service, FeatureService):  # a list: every feature, for an empty name
        raise ConfigError("a training set needs a feature service; set feature_service, e.g. health_risk_v1")
    return [f"{p.name_to_use()}:{f.name}" for p in service.feature_view_projections for f in p.features]


def _strip_source_meta(message: Any) -> Any:
    """Clear the registry's bookkeeping (`meta`: created/updated times) of every data source in a proto.

    Feast stamps a source's `meta` on every apply, also inside feature-view projections, so
    hashing it made every no-op `feast apply` look like a definition change.
    """
    if message.DESCRIPTOR.full_name == "feast.core.DataSource":
        message.ClearField("meta")
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        if descriptor.is_repeated and not descriptor.message_type.GetOptions().map_entry:
            for item in value:
                _strip_source_meta(item)
        elif not descriptor.is_repeated:
            _strip_source_meta(value)
    return message


def definitions_hash(fs: Any, feature_service: str) -> str:
    """SHA-256 over what defines a feature service's features: its spec and the specs of every view it reads.

    Registry bookkeeping is left out (sources' created/updated times), so a `feast apply` that
    changes nothing keeps the hash. An on-demand view's spec embeds full copies of its source
    views; those are hashed by name (the views themselves are hashed too).
    """
    service = fs.get_feature_service(feature_service)
    digest = hashlib.sha256(_strip_source_meta(service.to_proto().spec).SerializeToString(deterministic=True))
    for projection in sorted(service.feature_view_projections, key=lambda p: p.name):
        try:
            spec = fs.get_feature_view(projection.name).to_proto().spec
        except Exception:
            spec = fs.get_on_demand_feature_view(projection.name).to_proto().spec
            digest.update(",".join(sorted(spec.sources)).encode())
            spec.ClearField("sources")
        digest.update(_strip_source_meta(spec).SerializeToString(deterministic=True))
    return digest.hexdigest()


def _known_users(settings: Settings) -> pd.Series | None:
    """Every user the feature tables know (the profile table has a row per user), or None before a build."""
    try:
        rows = backend_for(settings).query_feature_tables("SELECT DISTINCT user_id FROM {0}", "profile")
    except FeatureRepoError:
        return None
    return pd.Series([row[0] for row in rows], name="user_id", dtype="int64")


def drop_erased(entities: pd.DataFrame, settings: Settings) -> tuple[pd.DataFrame, int]:
    """The entity frame without the rows of people the erasure ledger holds, and how many rows went.

    Which people is not said anywhere (the ledger keeps keyed hashes only); the count goes into
    the version's metadata (`erased_rows_dropped`). A frame without user_id is returned as is
    (validation then names the missing column)."""
    from healthmate_features.backends.ledger import erased_filter

    if "user_id" not in entities.columns:
        return entities, 0
    ids = pd.to_numeric(entities["user_id"], errors="coerce")
    erased = erased_filter(settings)(ids.dropna().unique())
    if not erased:
        return entities, 0
    gone = ids.isin(erased).to_numpy()
    return entities.loc[~gone].reset_index(drop=True), int(gone.sum())


def join_features(
    entities: pd.DataFrame,
    settings: Settings,
    *,
    feature_service: str,
    label: str | None = None,
    exclude_late_arrivals: bool = False,
) -> tuple[pd.DataFrame, EntityReport]:
    """Validate `entities` and join them point-in-time through Feast; same rows, same order.

    With `exclude_late_arrivals`, feature rows created after a row's prediction time are not
    used (Feast's `filter_by_created_timestamp`; views without a created timestamp are unaffected).
    """
    frame, report = validate_entity_frame(entities, label=label, known_users=_known_users(settings))
    keep = ["user_id", "event_timestamp", *([label] if label else [])]
    joined = store.historical_features(
        settings, frame[keep], feature_service=feature_service, filter_by_created_timestamp=exclude_late_arrivals
    )
    return joined, report


def resolve_entities(config: TrainingSetConfig, settings: Settings) -> Path:
    """The entity file of a config: an absolute path, or one relative to the repository root."""
    path = Path(config.entities)
    return path if path.is_absolute() else settings.repo_path / path


_SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")


def package_state(settings: Settings, fs: Any) -> tuple[list[Path], list[Path]]:
    """The package's own state that is never read as an entity frame: (files, directories).

    Files: everything directly in data/ except Parquet and CSV files (the SQL store, the job
    broker, the scheduler's state, ...), and the Feast registry and SQLite online store of `fs`
    wherever they are, each with SQLite's -wal/-shm/-journal companions. Directories: dataset
    versions and feature tables. Nothing is opened (a directory listing only)."""
    files: list[Path] = []
    if settings.data_dir.is_dir():
        files += [p for p in settings.data_dir.iterdir() if p.suffix.lower() not in (".parquet", ".csv")]
    named = [settings.sql_path, settings.broker_path]
    for configured in (getattr(fs.config.registry, "path", None), getattr(fs.config.online_store, "path", None)):
        if isinstance(configured, str) and configured and "://" not in configured:
            named.append(Path(configured) if Path(configured).is_absolute() else settings.repo_path / configured)
    files += [p.with_name(p.name + extra) for p in named for extra in _SQLITE_COMPANIONS]
    return files, [settings.datasets_dir, settings.features_dir]


def check_sources(config: TrainingSetConfig, settings: Settings, *, within: Path | None = None, fs: Any = None) -> Path:
    """Fail fast before a long build: what a config names exists. The HTTP API runs it before
    accepting a build and `build_training_set` runs it first, so both refuse the same configs.

    The entity file exists (inside `within`, when given), is Parquet or CSV and is none of the
    package's own state (`package_state`; checked without opening it: closing a SQLite file
    drops the locks of the whole process), the feature service is registered in `fs` (default:
    the profile's Feast store), and the entity file has the columns user_id, event_timestamp and
    the label (read from its schema or header only). Returns the entity file's path; raises
    ConfigError or EntityFrameError naming the value as given (never an absolute server path),
    what exists and the fix."""
    if "\x00" in config.entities:
        raise ConfigError("entities is a path and cannot contain a NUL character")
    name = config.entities
    path = resolve_entities(config, settings)
    if within is not None and not path.resolve().is_relative_to(Path(within).resolve()):
        raise ConfigError(
            f"entities {name!r} lies outside the repository; use a path relative to the repository root, "
            "e.g. data/ingested/labels.parquet"
        )
    entity_format(path, name=name)
    if not path.is_file():
        raise ConfigError(
            f"entities file {name!r} not found (relative to the repository root); write it first, "
            "e.g. with `healthmate-features ingest`"
        )
    fs = fs if fs is not None else store.open_feature_store(settings)
    state_files, state_dirs = package_state(settings, fs)
    check_entity_file(path, name=name, state_files=state_files, state_dirs=state_dirs)
    names = sorted(s.name for s in fs.list_feature_services())
    if config.feature_service not in names:
        raise ConfigError(
            f"feature service {config.feature_service!r} is not registered (have: {', '.join(names)}); "
            "run `feast apply` if it is new"
        )
    features = {ref.split(":", 1)[1] for ref in _feature_refs(fs, config.feature_service)}
    if config.label in features:
        raise ConfigError(
            f"label {config.label!r} is also a feature of feature service {config.feature_service!r}, so the "
            "joined frame would hold two columns of that name; rename the label column in the entity file"
        )
    require_columns(
        read_entity_columns(path, name=name, keyring=backend_for(settings).keyring),
        label=config.label,
        source=f"entities file {name!r}",
    )
    return path


def build_training_set(config: TrainingSetConfig | Mapping[str, Any], settings: Settings) -> ProcessedDataset:
    """Build (without saving) the ProcessedDataset a config describes."""
    config = config if isinstance(config, TrainingSetConfig) else TrainingSetConfig.from_dict(config)
    fs = store.open_feature_store(settings)
    entities_path = check_sources(config, settings, fs=fs)
    raw, erased = drop_erased(
        read_entity_frame(entities_path, name=config.entities, keyring=backend_for(settings).keyring), settings
    )
    refs = _feature_refs(fs, config.feature_service)
    joined, entity_report = join_features(
        raw,
        settings,
        feature_service=config.feature_service,
        label=config.label,
        exclude_late_arrivals=config.exclude_late_arrivals,
    )
    window = feature_window_days(refs)
    split = split_frame(joined, config.split, label_column=config.label, feature_window_days=window)
    train, test = split.take(joined)
    pipeline = build_pipeline(config.preprocessing, task=config.task)
    X_train, X_test = train.drop(columns=[config.label]), test.drop(columns=[config.label])
    y_train, y_test = train[config.label], test[config.label]
    Xt_train, Xt_test = fit_transform_splits(pipeline, X_train, X_test, y_train=y_train)
    metadata = {
        "feature_service": config.feature_service,
        "feature_refs": refs,
        "label": config.label,
        "task": config.task,
        "entity_frame_hash": frame_hash(raw),
        "entity_report": asdict(entity_report),
        "erased_rows_dropped": erased,
        "feast_definitions_hash": definitions_hash(fs, config.feature_service),
        "feature_window_days": window,
        "time_range": {"start": entity_report.time_range[0], "end": entity_report.time_range[1]},
        "split_config": SplitConfig.from_dict(config.split).to_dict(),
        "preprocessing_config": validate_config(config.preprocessing),
        "leakage_report": split.leakage_report,
        "profile": settings.profile,
        "build_spec": {
            "config": config.to_dict(),
            "entities_path": str(entities_path),
            "entities_sha256": content_sha256(backend_for(settings).keyring, entities_path),
        },
    }
    return ProcessedDataset(
        X_train=Xt_train,
        X_test=Xt_test,
        y_train=y_train,
        y_test=y_test,
        feature_names=list(Xt_train.columns),
        pipeline=pipeline,
        metadata=metadata,
        joined_train=train,
        joined_test=test,
    )


def registry(settings: Settings) -> DatasetRegistry:
    return DatasetRegistry.from_settings(settings)


class Built(NamedTuple):
    """What `build_and_save` returns: the version's `name@version`, the dataset, and whether it is new."""

    ref: str
    dataset: ProcessedDataset
    created: bool


def build_and_save(
    config: TrainingSetConfig | Mapping[str, Any],
    settings: Settings,
    *,
    bump: Bump | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Built:
    """Build a training set and save it as a new version unless nothing changed; return Built.

    With no bump requested (`bump` here, or the config's), a build whose data, Feast
    definitions, entity frame and configs equal the latest version's saves nothing and returns
    that version with `created=False`: a version number then always means a change, and re-runs
    of a schedule or of `make demo` do not pile up copies. A requested bump always saves a new
    version (a deliberate re-save). `bump`, when given, overrides the config's.

    Builds of one dataset name never overlap: the build and the save hold the lock
    `dataset:<name>` (Backend.lock; across processes, freed if the holder dies). `metadata` is
    added to the version's metadata; with a `job_id` in it, a version an earlier attempt of the
    same job already published is returned instead of building again (a redelivered job
    never publishes a second copy). Side effect: the version (and any earlier one Feast does not
    list yet) is registered as a Feast saved dataset `name@version` (`datasets.saved`).
    """
    config = config if isinstance(config, TrainingSetConfig) else TrainingSetConfig.from_dict(config)
    if bump is not None:
        config = TrainingSetConfig.from_dict({**config.to_dict(), "bump": bump})
    datasets = registry(settings)
    with backend_for(settings).lock(f"dataset:{config.name}"):
        earlier = _published_by_job(datasets, config.name, metadata)
        if earlier is not None:
            return earlier
        dataset = build_training_set(config, settings)
        dataset.metadata.update(metadata or {})
        if config.bump is None:
            version, created = datasets.save_if_changed(dataset, config.name)
        else:
            version, created = datasets.save(dataset, config.name, bump=config.bump), True
    register_versions(settings, config.name, registry=datasets)
    return Built(f"{config.name}@{version}", dataset, created)


def _published_by_job(datasets: DatasetRegistry, name: str, metadata: Mapping[str, Any] | None) -> Built | None:
    """The version of `name` an earlier attempt of the job in `metadata` (`job_id`) published, if any."""
    job_id = (metadata or {}).get("job_id")
    version = datasets.find_version(name, "job_id", job_id) if job_id else None
    if version is None:
        return None
    return Built(f"{name}@{version}", datasets.load(name, version, load_pipeline=False), True)


def refit_preprocessing(
    dataset: str,
    settings: Settings,
    *,
    preprocessing: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Built:
    """Re-fit a version's preprocessing on its stored joined frames and save the result as a new version.

    `dataset` is `name@version`; its `joined_train`/`joined_test` (the point-in-time-joined rows
    before preprocessing) are fitted and transformed again with `preprocessing` (default: the
    version's own preprocessing config), without joining through Feast again: e.g. to refresh a
    pipeline pickled by an older scikit-learn, or to try another preprocessing. The bump rule
    decides the new version against the latest one: a patch unless the processed columns change
    (major). Holds the lock `dataset:<name>`; `metadata` as in `build_and_save`.
    Raises DatasetVersionError when the version has no joined frames.
    """
    from healthmate_features.datasets.ref import DatasetRef

    ref = DatasetRef.parse(dataset)
    datasets = registry(settings)
    with backend_for(settings).lock(f"dataset:{ref.name}"):
        earlier = _published_by_job(datasets, ref.name, metadata)
        if earlier is not None:
            return earlier
        source = datasets.load(ref.name, ref.version, load_pipeline=False)
        if source.joined_train is None or source.joined_test is None:
            raise DatasetVersionError(
                f"{ref} has no joined frames (joined_train/joined_test), so its preprocessing cannot be re-fitted; "
                "rebuild it with `healthmate-features training-set build`"
            )
        label, task = source.metadata.get("label"), source.metadata.get("task", "classification")
        if not isinstance(label, str) or label not in source.joined_train.columns:
            raise DatasetVersionError(f"{ref} does not name its label column in its metadata; rebuild it")
        config = validate_config(
            preprocessing if preprocessing is not None else source.metadata.get("preprocessing_config")
        )
        pipeline = build_pipeline(config, task=task)
        train, test = source.joined_train, source.joined_test
        Xt_train, Xt_test = fit_transform_splits(
            pipeline, train.drop(columns=[label]), test.drop(columns=[label]), y_train=train[label]
        )
        refitted = ProcessedDataset(
            X_train=Xt_train,
            X_test=Xt_test,
            y_train=train[label],
            y_test=test[label],
            feature_names=list(Xt_train.columns),
            pipeline=pipeline,
            metadata={
                **{k: v for k, v in source.metadata.items() if k != "job_id"},  # the job that made the source
                "preprocessing_config": config,
                "refit_from": str(ref),
                **(metadata or {}),
            },
            joined_train=train,
            joined_test=test,
        )
        version = datasets.save(refitted, ref.name)
    register_versions(settings, ref.name, registry=datasets)
    return Built(f"{ref.name}@{version}", refitted, True)


def rebuild(name: str, version: str, settings: Settings) -> dict[str, Any]:
    """Rebuild a version from its manifest; report whether the data hash is identical.

    Does not save anything. When the entity file changed since, the report says so (a
    different hash is then expected). A redacted version is compared with its data after the
    redaction (`manifest_data_hash` is then the redaction record's); the rebuild leaves erased
    people out (the builder drops them: `erased_rows_dropped`), but other rows may still differ,
    as the split and the preprocessing were fitted with the erased rows.
    """
    datasets = registry(settings)
    manifest = datasets.show(name, version)
    state = datasets.state(name, version)
    spec = manifest.get("build_spec") or manifest.get("metadata", {}).get("build_spec")
    if not spec:
        raise ConfigError(
            f"{name}@{version} has no build_spec in its manifest; it was not built by the training-set builder"
        )
    dataset = build_training_set(spec["config"], settings)
    entities_path = Path(spec["entities_path"])
    expected = state.data_hash or manifest.get("hashes", {}).get("data")
    got = data_hash(dataset)
    return {
        "dataset": f"{name}@{version}",
        "identical": got == expected,
        "data_hash": got,
        "manifest_data_hash": expected,
        "redacted_by": state.redacted_by,
        "erased_rows_dropped": dataset.metadata.get("erased_rows_dropped", 0),
        "entities_changed": (not entities_path.exists())
        or content_sha256(backend_for(settings).keyring, entities_path) != spec["entities_sha256"],
    }


def summary(dataset: ProcessedDataset) -> dict[str, Any]:
    """Rows, features and label balance of a dataset, for the CLI and the API."""
    y = pd.concat([dataset.y_train, dataset.y_test])
    out = {
        "train_rows": len(dataset.X_train),
        "test_rows": len(dataset.X_test),
        "features": len(dataset.feature_names),
        "strategy": dataset.metadata.get("leakage_report", {}).get("strategy"),
        "excluded_rows": dataset.metadata.get("leakage_report", {}).get("excluded_rows_total", 0),
    }
    if dataset.metadata.get("task") == "classification":
        out["label_positive_rate"] = {
            "train": round(float(dataset.y_train.mean()), 4),
            "test": round(float(dataset.y_test.mean()), 4),
        }
    else:
        out["label_mean"] = round(float(y.mean()), 4)
    return out
