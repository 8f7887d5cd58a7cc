"""Drift of recent feature values against the training split of a dataset version.

The reference is the version's training split before preprocessing (`joined_train`), as the
distribution sketches its manifest holds (`datasets.sketches`); a version saved before manifests
had sketches is sketched from its stored `joined_train` split instead. The recent sample is
what the offline feature tables hold over a window (`recent_offline`), or what the online
server logged (`served`: Feast's feature logging, when a feature service has it).

Per feature, on the present (non-null) values, two measures:
- PSI (population stability index) over about ten bins of equal training mass (the sketch's
  percentile bins merged); categories bin as they are. Counts are
  smoothed by +0.5 per bin. A fixed PSI cut-off fires on unchanged data when samples are small,
  so the threshold is calibrated per feature and sample size: `resamples` pairs of samples of
  the reference's and the recent sample's sizes are drawn from the training split's own bin
  frequencies (a multinomial bootstrap of the split), and the threshold is the (1 - alpha)
  quantile of their PSI, never below PSI_FLOOR (0.1, the usual "moderate shift" mark, so that
  huge samples do not flag shifts too small to matter).
- a two-sample test: Kolmogorov-Smirnov for numeric features (the largest CDF difference on
  the sketch's percentile edges, a lower bound of the exact statistic, with SciPy's asymptotic
  Kolmogorov distribution at the effective size n*m/(n+m)); chi-square of homogeneity for
  categorical ones (scipy.stats.chi2_contingency). Its level is alpha / features (Bonferroni).

A feature has "drift" when both measures pass their thresholds, "warn" when one does or when
its null fraction moved (`null_shift`: a chi-square test at the same level, and by more than
NULL_SHIFT_MIN: missing values are a data-quality signal more than a shift of the population),
else "ok"; severity is PSI over its threshold. Features are sorted by status, then severity.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sstats

from healthmate_features.datasets import sketches
from healthmate_features.datasets.ref import DatasetRef
from healthmate_features.datasets.registry import DatasetRegistry
from healthmate_features.errors import DatasetVersionError, DriftError

PSI_FLOOR = 0.1
PSI_BINS = 10
ALPHA = 0.01
RESAMPLES = 400
NULL_SHIFT_MIN = 0.05
SOURCES = ("offline", "served")
LOG_TIMESTAMP = "__log_timestamp"  # feast.feature_logging.LOG_TIMESTAMP_FIELD
STATUSES = ("drift", "warn", "ok", "no_data")
_DURATION_RE = re.compile(r"([1-9][0-9]{0,5})([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass
class FeatureDrift:
    """One feature's comparison: sizes, PSI against its calibrated threshold, the test, the verdict."""

    feature: str
    kind: str  # numeric | categorical
    reference_rows: int
    recent_rows: int
    psi: float | None
    psi_threshold: float | None
    test: str  # ks | chi2
    statistic: float | None
    p_value: float | None
    p_threshold: float | None
    status: str  # drift | warn | ok | no_data
    severity: float
    null_fraction: tuple[float | None, float | None] = (None, None)  # training, recent
    null_shift: bool = False  # the null fraction changed (chi-square at the test's level, and by > NULL_SHIFT_MIN)
    view: str | None = None


@dataclass
class DriftReport:
    """The drift of every compared feature of a dataset version, most severe first."""

    dataset: str
    source: str
    reference: str  # "manifest sketches" | "stored joined_train split"
    window: dict[str, datetime | None]
    alpha: float
    features: list[FeatureDrift] = field(default_factory=list)
    not_compared: list[dict[str, str]] = field(default_factory=list)

    @property
    def drifted(self) -> list[FeatureDrift]:
        """The features whose status is "drift"."""
        return [f for f in self.features if f.status == "drift"]

    def counts(self) -> dict[str, int]:
        """Features per status."""
        return {status: sum(f.status == status for f in self.features) for status in STATUSES}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (datetimes stay datetimes)."""
        return {
            "dataset": self.dataset,
            "source": self.source,
            "reference": self.reference,
            "window": dict(self.window),
            "alpha": self.alpha,
            "psi_floor": PSI_FLOOR,
            "counts": self.counts(),
            "features": [asdict(f) for f in self.features],
            "not_compared": list(self.not_compared),
        }


# --------------------------------------------------------------------------------------------
# The comparison (no I/O)
# --------------------------------------------------------------------------------------------


def compare(
    reference: Mapping[str, Mapping[str, Any]],
    recent: Mapping[str, pd.Series] | pd.DataFrame,
    *,
    alpha: float = ALPHA,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> list[FeatureDrift]:
    """Compare the columns of `recent` (a frame, or feature -> values when the features have
    different row counts) with the sketches in `reference` (feature -> sketch), most severe first.

    Features in `reference` but not in `recent` are left out (the caller says why). Deterministic
    for a given `seed` (the calibration's resampling)."""
    names = [name for name in reference if name in recent]
    rng = np.random.default_rng(seed)
    p_threshold = alpha / max(len(names), 1)
    found = [
        compare_feature(
            name, reference[name], recent[name], alpha=alpha, p_threshold=p_threshold, resamples=resamples, rng=rng
        )
        for name in names
    ]
    return sort_by_severity(found)


def sort_by_severity(features: Sequence[FeatureDrift]) -> list[FeatureDrift]:
    """Drift first, then warn, ok and no data; within a status, higher severity first, then by name."""
    rank = {status: i for i, status in enumerate(STATUSES)}
    return sorted(features, key=lambda f: (rank[f.status], -f.severity, f.feature))


def compare_feature(
    name: str,
    reference: Mapping[str, Any],
    recent: pd.Series,
    *,
    alpha: float = ALPHA,
    p_threshold: float = ALPHA,
    resamples: int = RESAMPLES,
    rng: np.random.Generator | None = None,
) -> FeatureDrift:
    """One feature's PSI (with its calibrated threshold) and two-sample test; see the module docstring."""
    rng = rng if rng is not None else np.random.default_rng(0)
    placed = sketches.place(reference, recent)
    if reference["kind"] == "categorical" and len(placed["counts"]) > len(reference["counts"]):
        # a category never seen in training: the reference gets an empty OTHER to compare it with
        reference = {**reference, "counts": {**reference["counts"], sketches.OTHER: 0}}
    ref_all = np.asarray(sketches.bin_counts(reference), dtype="float64")
    new_all = np.asarray(sketches.bin_counts(placed), dtype="float64")
    ref_counts, new_counts = ref_all[:-1], new_all[:-1]  # present values; nulls are the last entry
    test = "ks" if reference["kind"] == "numeric" else "chi2"
    n, m = int(ref_counts.sum()), int(new_counts.sum())
    nulls = (_fraction(ref_all[-1], ref_all.sum()), _fraction(new_all[-1], new_all.sum()))
    null_p = chi2_from_bins(np.array([n, ref_all[-1]]), np.array([m, new_all[-1]]))[1] if new_all.sum() else None
    moved = nulls[0] is not None and nulls[1] is not None and abs(nulls[1] - nulls[0]) > NULL_SHIFT_MIN
    null_shift = bool(moved and null_p is not None and null_p < p_threshold)
    if n == 0 or m == 0:
        return FeatureDrift(
            feature=name,
            kind=reference["kind"],
            reference_rows=n,
            recent_rows=m,
            psi=None,
            psi_threshold=None,
            test=test,
            statistic=None,
            p_value=None,
            p_threshold=p_threshold,
            status="no_data",
            severity=0.0,
            null_fraction=nulls,
            null_shift=null_shift,
        )
    groups = psi_groups(reference)
    ref_psi = np.bincount(groups, weights=ref_counts)
    new_psi = np.bincount(groups, weights=new_counts, minlength=len(ref_psi))
    psi_value = float(psi(ref_psi, new_psi))
    threshold = psi_threshold(ref_psi, m, alpha=alpha, resamples=resamples, rng=rng)
    if test == "ks":
        statistic, p_value = ks_from_bins(ref_counts, new_counts)
    else:
        statistic, p_value = chi2_from_bins(ref_counts, new_counts)
    psi_over = psi_value > threshold
    test_over = p_value is not None and p_value < p_threshold
    status = "drift" if psi_over and test_over else "warn" if psi_over or test_over or null_shift else "ok"
    return FeatureDrift(
        feature=name,
        kind=reference["kind"],
        reference_rows=n,
        recent_rows=m,
        psi=psi_value,
        psi_threshold=threshold,
        test=test,
        statistic=statistic,
        p_value=p_value,
        p_threshold=p_threshold,
        status=status,
        severity=psi_value / threshold if threshold > 0 else 0.0,
        null_fraction=nulls,
        null_shift=null_shift,
    )


def _fraction(part: float, whole: float) -> float | None:
    return float(part / whole) if whole else None


def psi_groups(sketch: Mapping[str, Any]) -> np.ndarray:
    """For each bin of a sketch's present values (`bin_counts` without the nulls), the PSI bin it counts in.

    Numeric: the percentile bins merged into about PSI_BINS bins of equal training mass.
    Categorical: one bin per category."""
    counts = np.asarray(sketches.bin_counts(sketch)[:-1], dtype="float64")
    if sketch["kind"] == "categorical" or counts.sum() == 0:
        return np.arange(len(counts))
    before = np.concatenate([[0.0], np.cumsum(counts)[:-1]]) / counts.sum()
    coarse = np.minimum((before * PSI_BINS + 1e-9).astype(int), PSI_BINS - 1)
    _, dense = np.unique(coarse, return_inverse=True)  # drop empty coarse bins
    return np.asarray(dense)


def psi(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """PSI of count vectors (last axis: bins), each smoothed by +0.5 per bin: sum((a - e) * ln(a / e))."""
    e = (expected + 0.5) / (expected.sum(axis=-1, keepdims=True) + 0.5 * expected.shape[-1])
    a = (actual + 0.5) / (actual.sum(axis=-1, keepdims=True) + 0.5 * actual.shape[-1])
    return np.sum((a - e) * np.log(a / e), axis=-1)


def psi_threshold(
    reference: np.ndarray, recent_rows: int, *, alpha: float, resamples: int, rng: np.random.Generator
) -> float:
    """The (1 - alpha) quantile of PSI between samples of the reference's and `recent_rows` sizes
    drawn from the reference's bin frequencies (the null of no change), at least PSI_FLOOR."""
    n = int(reference.sum())
    p = reference / n
    a = rng.multinomial(n, p, size=resamples).astype("float64")
    b = rng.multinomial(recent_rows, p, size=resamples).astype("float64")
    return max(PSI_FLOOR, float(np.quantile(psi(a, b), 1.0 - alpha)))


def ks_from_bins(reference: np.ndarray, recent: np.ndarray) -> tuple[float | None, float | None]:
    """Two-sample KS from counts over the same bins: the largest CDF difference at the bin edges
    and its asymptotic p-value (SciPy's Kolmogorov distribution at n*m/(n+m)); Nones without values."""
    n, m = reference.sum(), recent.sum()
    if n == 0 or m == 0:
        return None, None
    d = float(np.max(np.abs(np.cumsum(reference) / n - np.cumsum(recent) / m)))
    effective = n * m / (n + m)
    return d, float(sstats.kstwobign.sf(math.sqrt(effective) * d))


def chi2_from_bins(reference: np.ndarray, recent: np.ndarray) -> tuple[float | None, float | None]:
    """Chi-square test of homogeneity of two count vectors over the same categories (empty ones dropped)."""
    table = np.vstack([reference, recent])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 0.0, 1.0
    statistic, p_value, _, _ = sstats.chi2_contingency(table, correction=False)
    return float(statistic), float(p_value)


# --------------------------------------------------------------------------------------------
# The reference and the recent sample
# --------------------------------------------------------------------------------------------


def reference_sketches(registry: DatasetRegistry, ref: DatasetRef) -> tuple[dict[str, Any], str]:
    """The training split's sketches of a dataset version, and where they came from.

    From the manifest when it has them; else (a version saved before manifests held sketches)
    sketched now from the stored `joined_train` split. Raises DatasetVersionError when the
    version has neither."""
    manifest = registry.show(ref.name, ref.version)
    stored = ((manifest.get("splits") or {}).get("joined_train") or {}).get("sketches")
    if stored:
        return dict(stored), "manifest sketches"
    if "joined_train" not in (manifest.get("splits") or {}):
        raise DatasetVersionError(
            f"{ref} has no distribution sketches and no joined_train split (the raw features before "
            "preprocessing), so there is nothing to compare recent values with; build a new version "
            "with `healthmate-features datasets build` and compare against that"
        )
    dataset = registry.load(ref.name, ref.version, load_pipeline=False)
    refs = manifest.get("feature_refs") or []
    columns = [str(r).split(":", 1)[-1] for r in refs] or None
    frame = dataset.joined_train
    assert frame is not None  # the manifest lists the split
    if columns is None:
        columns = [c for c in frame.columns if c != dataset.y_train.name]
    return sketches.sketch_frame(frame, columns), "stored joined_train split"


def parse_duration(text: str) -> timedelta:
    """`30m`, `12h`, `7d` or `2w` as a timedelta; DriftError otherwise."""
    match = _DURATION_RE.fullmatch(str(text).strip())
    if not match:
        raise DriftError(f"window {text!r} is not a duration; use a number and a unit: 30m, 12h, 7d or 2w")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def feature_views(refs: Sequence[str]) -> dict[str, list[str]]:
    """Feature refs (`view:feature`) grouped by view, in order."""
    views: dict[str, list[str]] = {}
    for ref in refs:
        view, _, feature = str(ref).rpartition(":")
        views.setdefault(view, []).append(feature)
    return views


def recent_offline(
    backend: Any, refs: Sequence[str], *, since: timedelta, until: datetime | None = None
) -> tuple[dict[str, pd.Series], dict[str, datetime | None], list[dict[str, str]]]:
    """What the feature service would serve at the window's end to the users seen in the window.

    The window is (end - since, end], `end` being `until`, else the newest event_timestamp of the
    tables read (so the window is the latest data, however old). The users seen are those with a
    row in the window in any of the views; for each view, each such user's latest row as of
    `end` within the view's TTL (or the window, when longer): one row per user, as an online
    lookup at `end` returns, so that rows are independent (a table holds a row per user and day,
    and seven days of one user's rolling averages are one observation, not seven).
    Returns (feature -> values), the window, and the features not read with why (on-demand
    views are computed at request time and have no table). `backend`: the profile's Backend."""
    from healthmate_features.features.catalog import FEATURE_TABLES

    views = feature_views(refs)
    skipped = [
        {"feature": f, "view": v, "reason": "on-demand or unknown view: no offline feature table to read"}
        for v, features in views.items()
        if v not in FEATURE_TABLES
        for f in features
    ]
    known = {v: {f.name for f in FEATURE_TABLES[v].features} for v in views if v in FEATURE_TABLES}
    skipped += [
        {"feature": f, "view": v, "reason": "not a column of the view's feature table"}
        for v in known
        for f in views[v]
        if f not in known[v]
    ]
    views = {v: [f for f in views[v] if f in known[v]] for v in known}  # catalog names only: safe in SQL
    tables = [v for v in views if views[v]]
    if not tables:
        return {}, {"start": None, "end": until}, skipped
    end = until if until is not None else backend.feature_time_range(tables)[1]
    end = end.astimezone(timezone.utc) if end.tzinfo else end.replace(tzinfo=timezone.utc)
    start = end - since
    seen: set[Any] = set()
    latest: dict[str, pd.DataFrame] = {}
    for table in tables:
        names = views[table]
        lookback = end - max(since, timedelta(days=FEATURE_TABLES[table].ttl_days))
        selected = ", ".join(f'"{name}"' for name in names)
        rows = backend.query_feature_tables(
            f"SELECT user_id, event_timestamp > {_timestamp(start)} AS in_window, {selected} FROM ("
            "SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY event_timestamp DESC) AS newest "
            f"FROM {{0}} WHERE event_timestamp > {_timestamp(lookback)} AND event_timestamp <= {_timestamp(end)}"
            ") AS latest WHERE newest = 1",
            table,
        )
        frame = pd.DataFrame.from_records(rows, columns=["user_id", "in_window", *names])
        seen.update(frame.loc[frame["in_window"].astype(bool), "user_id"])
        latest[table] = frame
    columns: dict[str, pd.Series] = {}
    for table, frame in latest.items():
        users = frame[frame["user_id"].isin(seen)]
        for name in views[table]:
            columns[name] = users[name].reset_index(drop=True)
    return columns, {"start": start, "end": end}, skipped


def _timestamp(moment: datetime) -> str:
    """A UTC timestamp literal that DuckDB and Postgres both read."""
    return f"TIMESTAMPTZ '{moment.astimezone(timezone.utc).isoformat()}'"


def recent_served(
    fs: Any,
    feature_service: str | None,
    refs: Sequence[str],
    *,
    since: timedelta,
    until: datetime | None = None,
    repo_path: Path | None = None,
) -> tuple[dict[str, pd.Series], dict[str, datetime | None], list[dict[str, str]]]:
    """What the feature server logged for `feature_service` over (end - since, end] (Feast feature logging).

    Reads a FileLoggingDestination's Parquet files (a relative path is under `repo_path`): one
    row per served request, a column `<view>__<feature>` per feature; `end` is `until`, else the
    newest `__log_timestamp`. Raises DriftError naming the feature service when it logs nothing
    (no logging_config: the default here), logs elsewhere, or has no log files yet."""
    from healthmate_features.errors import FeatureServiceNotFoundError

    if not feature_service:
        raise DriftError("the dataset version names no feature service, so there is no served-feature log to read")
    try:
        service = fs.get_feature_service(feature_service)
    except Exception as exc:
        raise FeatureServiceNotFoundError(
            f"feature service {feature_service!r} is not in the Feast registry; run `healthmate-features apply`"
        ) from exc
    config = getattr(service, "logging_config", None)
    if config is None:
        raise DriftError(
            f"served-feature logging is not configured for feature service {feature_service!r}: "
            "--source served reads Feast's feature log, which needs logging_config=LoggingConfig(...) "
            "on the feature service; use --source offline meanwhile"
        )
    path = getattr(config.destination, "path", None)
    if type(config.destination).__name__ != "FileLoggingDestination" or not path:
        raise DriftError(
            f"feature service {feature_service!r} logs served features to "
            f"{type(config.destination).__name__}, which drift cannot read yet (only Parquet files: "
            "FileLoggingDestination); use --source offline"
        )
    root = repo_path or Path.cwd()

    def keyring() -> Any:
        from healthmate_features.backends import repo_keyring

        return repo_keyring(str(root))

    return served_log_values(
        Path(path) if Path(path).is_absolute() else root / path, refs, since=since, until=until, keyring=keyring
    )


def served_log_values(
    path: Path,
    refs: Sequence[str],
    *,
    since: timedelta,
    until: datetime | None = None,
    keyring: Any = None,
) -> tuple[dict[str, pd.Series], dict[str, datetime | None], list[dict[str, str]]]:
    """The logged values of feature refs `refs` in a Feast feature-log directory (Parquet, possibly
    partitioned) over (end - since, end]; see `recent_served`. Log files our offline store wrote
    are encrypted: `keyring` (crypto.KeyringSource) opens them."""
    import pyarrow.dataset as pads

    from healthmate_features.crypto import file_key_id, parquet_dataset

    if not path.exists():
        raise DriftError(f"no served-feature log at {path} yet: nothing was logged; use --source offline")
    files = sorted(p for p in path.rglob("*.parquet") if not any(s.startswith(".") for s in p.relative_to(path).parts))
    if any(file_key_id(f) for f in files):
        table = parquet_dataset(keyring, files).to_table()  # ours: not partitioned, every column in the files
    else:
        # Feast partitions by `__log_date=...`: pyarrow skips "_"-prefixed names unless told otherwise
        table = pads.dataset(str(path), format="parquet", partitioning="hive", ignore_prefixes=["."]).to_table()
    frame = table.to_pandas()
    if LOG_TIMESTAMP not in frame.columns or frame.empty:
        raise DriftError(f"the served-feature log at {path} has no rows with {LOG_TIMESTAMP}; use --source offline")
    stamps = pd.to_datetime(frame[LOG_TIMESTAMP], utc=True)
    end = until if until is not None else stamps.max().to_pydatetime()
    end = end.astimezone(timezone.utc) if end.tzinfo else end.replace(tzinfo=timezone.utc)
    start = end - since
    rows = frame[(stamps > start) & (stamps <= end)]
    columns: dict[str, pd.Series] = {}
    skipped: list[dict[str, str]] = []
    for view, features in feature_views(refs).items():
        for feature in features:
            logged = f"{view}__{feature}"
            if logged in rows.columns:
                columns[feature] = rows[logged].reset_index(drop=True)
            else:
                skipped.append({"feature": feature, "view": view, "reason": "not in the served-feature log"})
    return columns, {"start": start, "end": end}, skipped


def drift(
    settings: Any,
    dataset: str | DatasetRef,
    *,
    since: str | timedelta = "7d",
    source: str = "offline",
    until: datetime | None = None,
    alpha: float = ALPHA,
    resamples: int = RESAMPLES,
    registry: DatasetRegistry | None = None,
) -> DriftReport:
    """Compare recent feature values with the training split of dataset version `dataset`.

    Reads the dataset registry, then the offline feature tables (or Feast's served-feature log);
    changes nothing. Raises DriftError on a bad source or window, or when there are no recent
    values at all; DatasetNotFoundError for an unknown version."""
    from healthmate_features.backends import backend_for

    ref = DatasetRef.parse(dataset)
    if source not in SOURCES:
        raise DriftError(f"drift source {source!r} is not one of {', '.join(SOURCES)}")
    if not 0 < alpha < 1:
        raise DriftError(f"alpha {alpha!r} must be between 0 and 1 (exclusive), e.g. 0.01")
    window = parse_duration(since) if isinstance(since, str) else since
    registry = registry or DatasetRegistry.from_settings(settings)
    manifest = registry.show(ref.name, ref.version)
    reference, origin = reference_sketches(registry, ref)
    refs = list(manifest.get("feature_refs") or [])
    if not refs:
        raise DriftError(f"{ref} records no feature refs, so there are no feature tables to read recent values from")
    if source == "served":
        from healthmate_features.stores import feature_store

        recent, span, skipped = recent_served(
            feature_store.open_feature_store(settings),
            manifest.get("feature_service"),
            refs,
            since=window,
            until=until,
            repo_path=settings.repo_path,
        )
    else:
        recent, span, skipped = recent_offline(backend_for(settings), refs, since=window, until=until)
    if not any(len(values) for values in recent.values()):
        raise DriftError(
            f"no recent feature values for {ref} in the window {span['start']} .. {span['end']} "
            f"({len(refs)} features); widen --since or check that the feature tables are built"
        )
    view_of = {feature: view for view, features in feature_views(refs).items() for feature in features}
    missing = [
        {"feature": name, "view": view_of.get(name, ""), "reason": "no sketch in the dataset version"}
        for name in recent
        if name not in reference
    ]
    features = compare(reference, recent, alpha=alpha, resamples=resamples)
    for feature in features:
        feature.view = view_of.get(feature.feature)
    return DriftReport(
        dataset=str(ref),
        source=source,
        reference=origin,
        window=span,
        alpha=alpha,
        features=features,
        not_compared=skipped + missing,
    )
