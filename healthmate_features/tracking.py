"""Model performance tracking: metrics per model version, dataset version and environment.

Each `log_metrics` call is one *run*: a model version evaluated on one dataset version
(`name@version`) in one environment, at one time, with free-form JSON parameters and any
number of named float metrics. Runs live in the SQL store (`sqlstore`): SQLite in the embedded
profile, Postgres in production. `compare` lines versions up metric by metric and refuses to
compare values measured on different dataset versions unless asked to.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from numbers import Real
from typing import TYPE_CHECKING, Any, Literal, get_args

from healthmate_features.backends.sqlstore import SqlStore, read_json, read_ts, utcnow
from healthmate_features.datasets.ref import NAME_PATTERN, VERSION_PATTERN, DatasetRef
from healthmate_features.errors import DatasetNotFoundError, MixedDatasetsError, ModelNotFoundError, TrackingError

if TYPE_CHECKING:
    from healthmate_features.datasets.registry import DatasetRegistry

Environment = Literal["development", "staging", "production"]  # where a model runs, defined once
ENVIRONMENTS: tuple[Environment, ...] = get_args(Environment)
Direction = Literal["higher", "lower", "unknown"]  # which way a metric improves
HIGHER_IS_BETTER = frozenset(
    {
        "accuracy",
        "balanced_accuracy",
        "auc",
        "roc_auc",
        "pr_auc",
        "average_precision",
        "f1",
        "precision",
        "recall",
        "r2",
    }
)
LOWER_IS_BETTER = frozenset({"rmse", "mae", "mse", "mape", "log_loss", "brier"})

_NAME = re.compile(rf"^{NAME_PATTERN}$")
_VERSION = re.compile(rf"^{VERSION_PATTERN}$")
_METRIC = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class MetricRecord:
    """One metric value of one run (a row of `history`)."""

    run_id: int
    model_name: str
    model_version: str
    dataset: str
    environment: Environment
    metric: str
    value: float
    logged_at: datetime
    params: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (timestamp as ISO 8601)."""
        return {**asdict(self), "logged_at": self.logged_at.isoformat()}


@dataclass(frozen=True)
class Run:
    """One logged evaluation: a model version on a dataset version in an environment."""

    run_id: int
    model_name: str
    model_version: str
    dataset: str
    environment: Environment
    logged_at: datetime
    metrics: dict[str, float]
    params: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (timestamp as ISO 8601)."""
        return {**asdict(self), "logged_at": self.logged_at.isoformat()}


@dataclass(frozen=True)
class VersionValue:
    """The value a version scored on one metric: its latest record matching the filters."""

    value: float
    dataset: str
    environment: str
    logged_at: datetime
    run_id: int


@dataclass(frozen=True)
class MetricComparison:
    """One metric across the compared versions.

    `direction` is "higher", "lower" or "unknown" (then `best` is empty); `values` and
    `deltas` (value minus the baseline's) are None for a version without this metric."""

    metric: str
    direction: Direction
    values: dict[str, VersionValue | None]
    deltas: dict[str, float | None]
    best: list[str]


@dataclass(frozen=True)
class Comparison:
    """The result of `Tracker.compare`: versions in the order given, the first is the baseline."""

    model_name: str
    versions: list[str]
    baseline: str
    datasets: dict[str, list[str]]
    mixed_datasets: bool
    metrics: list[MetricComparison]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (timestamps as ISO 8601)."""
        out = asdict(self)
        for metric in out["metrics"]:
            for value in metric["values"].values():
                if value is not None:
                    value["logged_at"] = value["logged_at"].isoformat()
        return out


def metric_direction(metric: str, higher_is_better: Mapping[str, bool] | None = None) -> Direction:
    """ "higher" or "lower" (which values are better) for `metric`, or "unknown".

    `higher_is_better` overrides the built-in table, e.g. {"ndcg": True}."""
    metric = metric.lower()
    overrides = {k.lower(): v for k, v in (higher_is_better or {}).items()}
    if metric in overrides:
        return "higher" if overrides[metric] else "lower"
    if metric in HIGHER_IS_BETTER:
        return "higher"
    if metric in LOWER_IS_BETTER:
        return "lower"
    return "unknown"


class Tracker:
    """Logs and queries model metrics in a SQL store (see `backends.open_sql_store`).

    With `datasets` (the dataset registry), `log_metrics` refuses a dataset version the registry
    does not hold, unless the run says the dataset is external (kept in another registry).
    """

    def __init__(self, store: SqlStore, *, datasets: DatasetRegistry | None = None) -> None:
        self.store = store
        self.datasets = datasets

    def log_metrics(
        self,
        model_name: str,
        *,
        version: str,
        dataset: str | DatasetRef,
        environment: str,
        metrics: Mapping[str, float],
        params: Mapping[str, Any] | None = None,
        at: datetime | None = None,
        external_dataset: bool = False,
    ) -> Run:
        """Record one run's metrics (names lowercased) and JSON parameters; return the run.

        Side effect: one row in model_runs and one per metric in model_metrics, atomically.
        Raises TrackingError for an unknown environment, a malformed name, version or
        dataset reference, a non-finite value or parameters that are not JSON; and, when the
        tracker has a dataset registry, DatasetNotFoundError for a dataset version it does not
        hold, unless `external_dataset` (the version lives in another registry)."""
        _check_name(model_name, "model name")
        _check_version(version, "model version")
        ref = DatasetRef.parse(dataset)
        checked = _check_environment(environment)
        values = _check_metrics(metrics)
        params = _check_params(params)
        if self.datasets is not None and not external_dataset:
            _check_registered(ref, self.datasets)
        if at is None:
            at = utcnow()
        elif at.tzinfo is None:
            raise TrackingError(f"timestamp {at.isoformat()} has no time zone; pass an aware datetime")
        with self.store.transaction():
            run_id = self.store.insert(
                "INSERT INTO model_runs (model_name, model_version, dataset_name, dataset_version,"
                " environment, logged_at, params) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (model_name, version, ref.name, ref.version, environment, at, params),
            )
            for metric, value in values.items():
                self.store.execute(
                    "INSERT INTO model_metrics (run_id, metric, value) VALUES (?, ?, ?)",
                    (run_id, metric, value),
                )
        return Run(run_id, model_name, version, str(ref), checked, read_ts(at), values, params)

    def models(self) -> list[str]:
        """Names of the models with at least one run, sorted."""
        rows = self.store.query("SELECT DISTINCT model_name FROM model_runs ORDER BY model_name")
        return [r["model_name"] for r in rows]

    def versions(self, model_name: str) -> list[str]:
        """A model's versions in the order they were first logged."""
        rows = self.store.query(
            "SELECT model_version, MIN(logged_at) AS first_at FROM model_runs WHERE model_name = ?"
            " GROUP BY model_version ORDER BY first_at, model_version",
            (model_name,),
        )
        return [r["model_version"] for r in rows]

    def history(
        self,
        model_name: str,
        *,
        metric: str | None = None,
        environment: str | None = None,
        version: str | None = None,
    ) -> list[MetricRecord]:
        """A model's metric records over time (oldest first), optionally filtered.

        Raises TrackingError when the model has never been logged (naming the known models);
        filters that match nothing give an empty list."""
        self._require_model(model_name)
        if environment is not None:
            _check_environment(environment)
        return self._records(
            model_name,
            metric=metric.lower() if metric else None,
            environment=environment,
            versions=[version] if version else None,
        )

    def compare(
        self,
        model_name: str,
        versions: Sequence[str],
        *,
        allow_mixed_datasets: bool = False,
        environment: str | None = None,
        dataset: str | DatasetRef | None = None,
        higher_is_better: Mapping[str, bool] | None = None,
    ) -> Comparison:
        """Compare two or more versions metric by metric; the first version is the baseline.

        Each version's value is its latest record (optionally only in `environment` or on
        `dataset`). Raises TrackingError when a version has no records, or when the values
        come from different dataset versions and `allow_mixed_datasets` is False."""
        versions = [str(v).strip() for v in versions]
        if len(versions) < 2 or len(set(versions)) != len(versions):
            raise TrackingError(
                f"compare needs two or more distinct versions of model {model_name!r}, "
                f"got {versions}; pass e.g. ['1.0', '1.1']"
            )
        self._require_model(model_name)
        if environment is not None:
            _check_environment(environment)
        ref = DatasetRef.parse(dataset) if dataset is not None else None
        records = self._records(model_name, environment=environment, versions=versions, dataset=ref)

        latest: dict[tuple[str, str], MetricRecord] = {}
        for rec in records:  # oldest first: later records overwrite earlier ones
            latest[(rec.model_version, rec.metric)] = rec
        missing = [v for v in versions if not any(k[0] == v for k in latest)]
        if missing:
            where = "".join(
                f" {label} {value}" for label, value in (("in", environment), ("on", ref)) if value is not None
            )
            raise ModelNotFoundError(
                f"model {model_name!r} has no metrics{where} for version(s) {', '.join(missing)} "
                f"(logged versions: {', '.join(self.versions(model_name))}); "
                "log them with `healthmate-features models log` or fix the version list"
            )

        datasets = {v: sorted({rec.dataset for (ver, _), rec in latest.items() if ver == v}) for v in versions}
        mixed = len({d for ds in datasets.values() for d in ds}) > 1
        if mixed and not allow_mixed_datasets:
            per_version = "; ".join(f"{v}: {', '.join(ds)}" for v, ds in datasets.items())
            raise MixedDatasetsError(
                f"refusing to compare versions of model {model_name!r} evaluated on different "
                f"dataset versions ({per_version}); evaluate them on the same dataset version, "
                "pick one with dataset=NAME@VERSION (--dataset), or pass "
                "allow_mixed_datasets=True (--allow-mixed-datasets) to compare anyway"
            )

        metrics = sorted({m for (_, m) in latest})
        return Comparison(
            model_name=model_name,
            versions=versions,
            baseline=versions[0],
            datasets=datasets,
            mixed_datasets=mixed,
            metrics=[_compare_metric(m, versions, latest, higher_is_better) for m in metrics],
        )

    def performance(
        self,
        model_name: str,
        *,
        versions: Sequence[str] = (),
        metric: str | None = None,
        environment: str | None = None,
        dataset: str | None = None,
        allow_mixed_datasets: bool = False,
    ) -> dict[str, Any]:
        """A model's metric history (oldest first) or, for two or more `versions`, their comparison.

        Returns `{"model", "history": [MetricRecord]}` or `{"model", "comparison": Comparison}` (what
        the API's models/performance answers); `metric` keeps only that metric in either.
        """
        wanted = [v.strip() for v in versions if v.strip()]
        if len(wanted) >= 2:
            result = self.compare(
                model_name, wanted, allow_mixed_datasets=allow_mixed_datasets, environment=environment, dataset=dataset
            )
            if metric:
                result = replace(result, metrics=[m for m in result.metrics if m.metric == metric.lower()])
            return {"model": model_name, "comparison": result}
        records = self.history(
            model_name, metric=metric, environment=environment, version=wanted[0] if wanted else None
        )
        return {"model": model_name, "history": records}

    def datasets_used_in(self, environment: str) -> list[str]:
        """The dataset versions (`name@version`) some model run in `environment` was logged on, sorted.

        Retention keeps these (README "Erasure, retention and exports")."""
        checked = _check_environment(environment)
        rows = self.store.query(
            "SELECT DISTINCT dataset_name, dataset_version FROM model_runs WHERE environment = ?", (checked,)
        )
        return sorted(f"{r['dataset_name']}@{r['dataset_version']}" for r in rows)

    def latest_per_environment(self, *, model_name: str | None = None) -> list[Run]:
        """The latest run of every model in every environment (for a dashboard).

        Sorted by environment (development, staging, production), then model name."""
        where, params = ("WHERE model_name = ?", [model_name]) if model_name else ("", [])
        rows = self.store.query(
            "SELECT * FROM (SELECT r.*, ROW_NUMBER() OVER (PARTITION BY environment, model_name"
            f" ORDER BY logged_at DESC, id DESC) AS rn FROM model_runs r {where}) latest"
            " WHERE rn = 1",
            params,
        )
        metrics: dict[int, dict[str, float]] = {int(r["id"]): {} for r in rows}
        if metrics:
            marks = ", ".join("?" for _ in metrics)
            for m in self.store.query(
                f"SELECT run_id, metric, value FROM model_metrics WHERE run_id IN ({marks}) ORDER BY metric",
                list(metrics),
            ):
                metrics[int(m["run_id"])][m["metric"]] = float(m["value"])
        runs = [
            Run(
                run_id=int(r["id"]),
                model_name=r["model_name"],
                model_version=r["model_version"],
                dataset=f"{r['dataset_name']}@{r['dataset_version']}",
                environment=r["environment"],
                logged_at=read_ts(r["logged_at"]),
                metrics=metrics[int(r["id"])],
                params=read_json(r["params"]),
            )
            for r in rows
        ]
        return sorted(runs, key=lambda r: (ENVIRONMENTS.index(r.environment), r.model_name))

    # -- helpers ----------------------------------------------------------------------------

    def _require_model(self, model_name: str) -> None:
        if not self.store.query("SELECT 1 FROM model_runs WHERE model_name = ? LIMIT 1", (model_name,)):
            known = self.models()
            listing = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "") if known else "none"
            raise ModelNotFoundError(
                f"no metrics logged for model {model_name!r} (models with metrics: {listing}); "
                "check the name or log a run with `healthmate-features models log`"
            )

    def _records(
        self,
        model_name: str,
        *,
        metric: str | None = None,
        environment: str | None = None,
        versions: Sequence[str] | None = None,
        dataset: DatasetRef | None = None,
    ) -> list[MetricRecord]:
        clauses, params = ["r.model_name = ?"], [model_name]
        if metric:
            clauses.append("m.metric = ?")
            params.append(metric)
        if environment:
            clauses.append("r.environment = ?")
            params.append(environment)
        if versions:
            clauses.append(f"r.model_version IN ({', '.join('?' for _ in versions)})")
            params.extend(versions)
        if dataset:
            clauses.append("r.dataset_name = ? AND r.dataset_version = ?")
            params.extend([dataset.name, dataset.version])
        rows = self.store.query(
            "SELECT r.id, r.model_name, r.model_version, r.dataset_name, r.dataset_version,"
            " r.environment, r.logged_at, r.params, m.metric, m.value"
            " FROM model_runs r JOIN model_metrics m ON m.run_id = r.id"
            f" WHERE {' AND '.join(clauses)} ORDER BY r.logged_at, r.id, m.metric",
            params,
        )
        return [
            MetricRecord(
                run_id=int(r["id"]),
                model_name=r["model_name"],
                model_version=r["model_version"],
                dataset=f"{r['dataset_name']}@{r['dataset_version']}",
                environment=r["environment"],
                metric=r["metric"],
                value=float(r["value"]),
                logged_at=read_ts(r["logged_at"]),
                params=read_json(r["params"]),
            )
            for r in rows
        ]


def _compare_metric(
    metric: str,
    versions: list[str],
    latest: dict[tuple[str, str], MetricRecord],
    higher_is_better: Mapping[str, bool] | None,
) -> MetricComparison:
    values: dict[str, VersionValue | None] = {}
    for v in versions:
        rec = latest.get((v, metric))
        values[v] = VersionValue(rec.value, rec.dataset, rec.environment, rec.logged_at, rec.run_id) if rec else None
    base = values[versions[0]]
    deltas = {
        v: (val.value - base.value) if (val is not None and base is not None) else None for v, val in values.items()
    }
    direction = metric_direction(metric, higher_is_better)
    present = {v: val.value for v, val in values.items() if val is not None}
    best: list[str] = []
    if direction != "unknown" and present:
        target = max(present.values()) if direction == "higher" else min(present.values())
        best = [v for v, value in present.items() if value == target]
    return MetricComparison(metric, direction, values, deltas, best)


def _check_registered(ref: DatasetRef, registry: DatasetRegistry) -> None:
    """DatasetNotFoundError unless the registry holds dataset version `ref`, naming what it holds and the fix."""
    from healthmate_features.datasets.manifest import VERSION_RE  # pandas: only when checking

    versions = registry.versions(ref.name)
    if ref.version in versions:
        return
    external = "or pass external_dataset=True (--external-dataset) if the dataset is kept in another registry"
    if not versions:
        names = registry.names()
        listing = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") if names else "none"
        raise DatasetNotFoundError(
            f"dataset {ref} is not in the dataset registry at {registry.uri}: it has no dataset {ref.name!r} "
            f"(datasets: {listing}); log the run on a saved version (`healthmate-features datasets list`), " + external
        )
    form = "" if VERSION_RE.fullmatch(ref.version) else "; registry versions are MAJOR.MINOR.PATCH"
    raise DatasetNotFoundError(
        f"dataset {ref} is not in the dataset registry at {registry.uri}: {ref.name!r} has no version "
        f"{ref.version!r} (its versions: {', '.join(versions)}{form}); pass one of them, "
        f"e.g. {ref.name}@{versions[-1]}, " + external
    )


def _check_name(value: str, what: str) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        raise TrackingError(f"{what} {value!r} is not a plain name; use letters, digits, '_', '.', '-' (max 128)")


def _check_version(value: str, what: str) -> None:
    if not isinstance(value, str) or not _VERSION.match(value):
        raise TrackingError(
            f"{what} {value!r} is not a plain version; use letters, digits, '_', '.', '+', '-' (max 64), e.g. 1.2.0"
        )


def _check_environment(value: str) -> Environment:
    """`value` as an Environment; TrackingError naming the allowed ones otherwise."""
    for environment in ENVIRONMENTS:
        if value == environment:
            return environment
    raise TrackingError(f"environment {value!r} is unknown; use one of {', '.join(ENVIRONMENTS)}")


def _check_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(metrics, Mapping) or not metrics:
        raise TrackingError("a run needs at least one metric, e.g. {'auc': 0.81}")
    out: dict[str, float] = {}
    for name, value in metrics.items():
        key = str(name).lower()
        if not _METRIC.match(key):
            raise TrackingError(f"metric name {name!r} is not a plain name; use a letter then letters, digits, '_'")
        if key in out:
            raise TrackingError(f"metric {key!r} is given twice (names are case-insensitive)")
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise TrackingError(f"metric {key!r} has value {value!r}; pass a finite number")
        out[key] = float(value)
    return out


def _check_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise TrackingError(f"params must be a mapping of names to JSON values, got {type(params).__name__}")
    try:  # a round trip: exactly what the store will hold, no NaN, string keys only
        return json.loads(json.dumps(dict(params), allow_nan=False, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise TrackingError(f"params are not JSON-serializable ({exc}); pass numbers, strings, lists, dicts") from exc
