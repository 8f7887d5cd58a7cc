"""Leakage-safe train/test splits of a joined training frame, with a report of the guards applied.

Three strategies, chosen declaratively with a `SplitConfig`:

- ``time``: train rows end before ``cutoff - embargo``, test rows start at ``cutoff``; rows in
  the gap are excluded from both sides and counted. The embargo must cover the longest feature
  window plus the label horizon (see `required_embargo_days`) unless explicitly overridden.
- ``group``: whole users go to one side (no user on both sides), optionally stratified.
- ``random``: row-level shuffle, optionally stratified; warns (`LeakageWarning`) because rows of
  the same user over time end up on both sides.

`split_frame` returns positional indices and a JSON-serializable `leakage_report`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from healthmate_features.errors import ConfigError, EntityFrameError
from healthmate_features.util.checks import MAX_DAYS, MAX_SEED, Integer, Number, check

STRATEGIES = ("time", "group", "random")
_TIME_ONLY = ("cutoff", "embargo_days", "label_horizon_days", "allow_short_embargo")
#: The numeric fields' ranges (util.checks): day counts up to 100 years, a seed numpy accepts.
LIMITS: dict[str, Number] = {
    "test_size": Number(0.0, 1.0, open_low=True, open_high=True),
    "embargo_days": Number(0, MAX_DAYS),
    "label_horizon_days": Number(0, MAX_DAYS),
    "seed": Integer(0, MAX_SEED),
}
#: Cutoffs a split can move an embargo back from without leaving pandas' timestamp range.
CUTOFF_RANGE = (pd.Timestamp("1900-01-01", tz="UTC"), pd.Timestamp("2200-01-01", tz="UTC"))


class LeakageWarning(UserWarning):
    """A split was made that can leak information between train and test (raised by splits)."""


@dataclass(frozen=True)
class SplitConfig:
    """How to split a joined training frame; build from a dict with `SplitConfig.from_dict`.

    ``cutoff`` (time only) is a timestamp or ISO string; a naive value is read as UTC. ``None``
    means the ``1 - test_size`` quantile of the frame's timestamps. ``embargo_days`` (time only)
    ``None`` means `required_embargo_days`. ``label_horizon_days`` (time only) is how far after
    a row's timestamp its label is observed (30 for a 30-day-ahead label).
    """

    strategy: str = "time"
    test_size: float = 0.2
    cutoff: pd.Timestamp | None = None
    embargo_days: float | None = None
    label_horizon_days: float = 0.0
    allow_short_embargo: bool = False
    stratify: bool = False
    seed: int = 0
    group_column: str = "user_id"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"split.strategy is {self.strategy!r}; allowed values: {', '.join(STRATEGIES)}")
        for name, limit in LIMITS.items():
            if not (name == "embargo_days" and self.embargo_days is None):  # None: the required embargo
                check(f"split.{name}", getattr(self, name), limit)
        for name in ("allow_short_embargo", "stratify"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"split.{name} is {getattr(self, name)!r}; allowed values: true, false")
        if not isinstance(self.group_column, str) or not self.group_column:
            raise ConfigError(f"split.group_column is {self.group_column!r}; name a column")
        if self.cutoff is not None:
            object.__setattr__(self, "cutoff", _parse_cutoff(self.cutoff))
        if self.strategy != "time":
            # A guard that is set but cannot apply would give a false sense of safety.
            defaults = {f.name: f.default for f in fields(self)}
            for name in _TIME_ONLY:
                if getattr(self, name) != defaults[name]:
                    raise ConfigError(
                        f"split.{name} is set ({_show(getattr(self, name))}) but applies to "
                        f"strategy 'time' only, not {self.strategy!r}; remove it or use "
                        "strategy 'time'"
                    )
        elif self.stratify:
            raise ConfigError(
                "split.stratify is true but a time split cannot be stratified without breaking "
                "time order; set stratify: false, or use strategy 'group' or 'random'"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SplitConfig:
        """Build from a plain dict (a YAML section); unknown keys raise ConfigError."""
        data = dict(data or {})
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ConfigError(
                f"split config has unknown key(s) {', '.join(map(repr, unknown))}; allowed keys: {', '.join(allowed)}"
            )
        if data.get("label_horizon_days") is None:
            data.pop("label_horizon_days", None)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-serializable values (cutoff as an ISO string)."""
        out = asdict(self)
        out["cutoff"] = None if self.cutoff is None else self.cutoff.isoformat()
        out["seed"] = int(self.seed)
        return out


@dataclass(frozen=True)
class SplitResult:
    """Positional train/test row indices (ascending) and the leakage report of the split."""

    train_index: np.ndarray
    test_index: np.ndarray
    leakage_report: dict[str, Any]

    def take(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The (train, test) rows of `frame`, the frame the split was computed on."""
        return frame.iloc[self.train_index], frame.iloc[self.test_index]


def required_embargo_days(feature_window_days: float, label_horizon_days: float = 0.0) -> float:
    """The shortest safe embargo: the longest feature window plus the label horizon.

    A training row at time s has a label observed over (s, s + horizon]; a test row at t >= cutoff
    has features computed over [t - window, t]. For no training label to overlap any test row's
    feature window (or its label period), s + horizon < cutoff - window, so the gap between the
    last training row and the cutoff must be at least window + horizon.
    """
    return float(feature_window_days) + float(label_horizon_days)


def split_frame(
    frame: pd.DataFrame,
    config: SplitConfig | Mapping[str, Any],
    *,
    label_column: str | None = None,
    feature_window_days: float | None = None,
    time_column: str = "event_timestamp",
) -> SplitResult:
    """Split `frame` into train/test positional indices according to `config`.

    `feature_window_days` is the longest feature window of the feature service (the caller knows
    it from the definitions); a time split needs it or an explicit ``embargo_days``.
    `label_column` is required for stratification. Warns with `LeakageWarning` for a random split.
    """
    if not isinstance(config, SplitConfig):
        config = SplitConfig.from_dict(config)
    if feature_window_days is not None:
        check("feature_window_days", feature_window_days, Number(0, MAX_DAYS))
    _require_columns(frame, [c for c in (label_column,) if c is not None])
    report: dict[str, Any] = {
        "strategy": config.strategy,
        "rows": int(len(frame)),
        "test_size": float(config.test_size),
        "seed": int(config.seed),
        "stratify": config.stratify,
        "group_column": config.group_column,
        "guards": [],
        "warnings": [],
    }
    if len(frame) < 2:
        raise ConfigError(f"cannot split a frame of {len(frame)} row(s); at least 2 are needed")
    labels = _stratify_labels(frame, label_column) if config.stratify else None
    if config.strategy == "time":
        train, test = _time_split(frame, config, time_column, feature_window_days, report)
    elif config.strategy == "group":
        train, test = _group_split(frame, config, labels, report)
    else:
        train, test = _random_split(frame, config, labels, report)
    _finish_report(frame, config, train, test, labels, report)
    return SplitResult(train_index=train, test_index=test, leakage_report=report)


def _time_split(frame, config, time_column, window, report) -> tuple[np.ndarray, np.ndarray]:
    _require_columns(frame, [time_column])
    ts = frame[time_column]
    if not isinstance(ts.dtype, pd.DatetimeTZDtype):
        raise EntityFrameError(
            f"column {time_column!r} has dtype {ts.dtype}, not a timezone-aware datetime; "
            "convert it with pd.to_datetime(..., utc=True) before splitting"
        )
    n_null = int(ts.isna().sum())
    if n_null:
        raise EntityFrameError(
            f"column {time_column!r} has {n_null} null timestamp(s); a time split cannot place "
            "them; drop or fill those rows first"
        )
    ts = ts.dt.tz_convert("UTC")
    horizon = float(config.label_horizon_days)
    if config.cutoff is None:
        cutoff = ts.quantile(1.0 - config.test_size)
        report["cutoff_source"] = f"quantile {1.0 - config.test_size:g} of {time_column}"
    else:
        cutoff = config.cutoff
        report["cutoff_source"] = "config"
    required = None if window is None else required_embargo_days(window, horizon)
    if config.embargo_days is not None:
        embargo = float(config.embargo_days)
    elif required is not None:
        embargo = required
    else:
        raise ConfigError(
            "a time split needs an embargo: pass feature_window_days (the longest feature "
            "window of the feature service) or set split.embargo_days"
        )
    if required is None:
        report["warnings"].append("longest feature window unknown: the embargo was not checked against it")
    if required is not None and embargo < required:
        message = (
            f"embargo_days={embargo:g} is shorter than the longest feature window "
            f"({float(window):g} days) plus the label horizon ({horizon:g} days) = {required:g} "
            "days, so test rows' feature windows would overlap training labels"
        )
        if not config.allow_short_embargo:
            raise ConfigError(
                f"{message}; set embargo_days >= {required:g} (or leave it unset), or set "
                "allow_short_embargo: true to accept the leak"
            )
        report["warnings"].append(f"{message}; accepted because allow_short_embargo is true")
        warnings.warn(report["warnings"][-1], LeakageWarning, stacklevel=3)
    embargo_start = cutoff - pd.Timedelta(days=embargo)
    train_mask = (ts < embargo_start).to_numpy()
    test_mask = (ts >= cutoff).to_numpy()
    span = f"timestamps span {ts.min().isoformat()} to {ts.max().isoformat()}"
    if not test_mask.any():
        raise ConfigError(
            f"time split leaves the test set empty: no row at or after cutoff "
            f"{cutoff.isoformat()} ({span}); move the cutoff earlier or leave it unset to use "
            f"the test_size={config.test_size:g} quantile"
        )
    if not train_mask.any():
        raise ConfigError(
            f"time split leaves the training set empty: no row before cutoff - embargo = "
            f"{embargo_start.isoformat()} (cutoff {cutoff.isoformat()}, embargo {embargo:g} days; "
            f"{span}); "
            + ("move the cutoff later" if config.cutoff is not None else f"lower test_size={config.test_size:g}")
            + " or use more history"
        )
    report.update(
        cutoff=cutoff.isoformat(),
        embargo_days=embargo,
        embargo_start=embargo_start.isoformat(),
        feature_window_days=None if window is None else float(window),
        label_horizon_days=horizon,
        required_embargo_days=required,
        short_embargo_allowed=bool(config.allow_short_embargo and required is not None and embargo < required),
        excluded_rows={"embargo": int((~train_mask & ~test_mask).sum())},
        train_time_range=[ts[train_mask].min().isoformat(), ts[train_mask].max().isoformat()],
        test_time_range=[ts[test_mask].min().isoformat(), ts[test_mask].max().isoformat()],
    )
    report["guards"].append(
        f"train rows are before cutoff - embargo ({embargo_start.isoformat()}), test rows at or "
        f"after cutoff ({cutoff.isoformat()})"
    )
    if required is not None and embargo >= required:
        report["guards"].append(
            f"embargo {embargo:g} days >= feature window {float(window):g} + label horizon {horizon:g} days"
        )
    return np.flatnonzero(train_mask), np.flatnonzero(test_mask)


def _group_split(frame, config, labels, report) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    groups = _groups(frame, config.group_column)
    n_groups = int(groups.nunique())
    if n_groups < 2:
        raise ConfigError(
            f"a group split needs at least 2 distinct values in {config.group_column!r}, found "
            f"{n_groups}; use more users or strategy 'time'"
        )
    positions = np.arange(len(frame))
    if labels is None:
        splitter = GroupShuffleSplit(n_splits=1, test_size=config.test_size, random_state=config.seed)
        train, test = next(splitter.split(positions, groups=groups.to_numpy()))
    else:
        n_folds = max(2, round(1.0 / config.test_size))
        if n_folds > n_groups:
            raise ConfigError(
                f"a stratified group split with test_size={config.test_size:g} needs "
                f"{n_folds} folds but {config.group_column!r} has only {n_groups} distinct "
                "values; raise test_size or use more users"
            )
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=config.seed)
        train, test = next(splitter.split(positions, labels, groups=groups.to_numpy()))
        report["stratified_folds"] = n_folds
    overlap = set(groups.iloc[train]) & set(groups.iloc[test])
    if overlap:  # pragma: no cover - scikit-learn guarantees this; the report must not lie
        raise AssertionError(f"group split put {len(overlap)} users on both sides")
    report["guards"].append(f"no {config.group_column} on both sides")
    return np.sort(train), np.sort(test)


def _random_split(frame, config, labels, report) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    try:
        train, test = train_test_split(
            np.arange(len(frame)),
            test_size=config.test_size,
            random_state=config.seed,
            shuffle=True,
            stratify=labels,
        )
    except ValueError as exc:
        raise ConfigError(
            f"random split with test_size={config.test_size:g} failed on {len(frame)} rows: {exc}; change test_size"
        ) from exc
    train, test = np.sort(train), np.sort(test)
    message = (
        "random split: rows of the same user at different times can land on both sides, so "
        "time-dependent features and labels leak between train and test"
    )
    if config.group_column in frame.columns:
        groups = frame[config.group_column]
        both = len(set(groups.iloc[train].dropna()) & set(groups.iloc[test].dropna()))
        message += f" ({both} of {int(groups.nunique())} {config.group_column} values are on both sides)"
    message += "; use strategy 'time' or 'group' unless rows are independent"
    report["warnings"].append(message)
    warnings.warn(message, LeakageWarning, stacklevel=3)
    return train, test


def _finish_report(frame, config, train, test, labels, report) -> None:
    report["train_rows"] = int(len(train))
    report["test_rows"] = int(len(test))
    report.setdefault("excluded_rows", {})
    report["excluded_rows_total"] = int(sum(report["excluded_rows"].values()))
    report["test_fraction"] = round(len(test) / len(frame), 6)
    if config.group_column in frame.columns:
        groups = frame[config.group_column]
        train_users, test_users = set(groups.iloc[train]), set(groups.iloc[test])
        report.update(
            users_train=len(train_users), users_test=len(test_users), users_overlapping=len(train_users & test_users)
        )
    else:
        report.update(users_train=None, users_test=None, users_overlapping=None)
    if labels is not None:
        report["guards"].append("label classes stratified across train and test")
        report["label_balance"] = {"train": _balance(labels[train]), "test": _balance(labels[test])}


def _balance(values: np.ndarray) -> dict[str, float]:
    classes, counts = np.unique(values, return_counts=True)
    return {str(c): round(int(n) / len(values), 6) for c, n in zip(classes, counts, strict=True)}


def _stratify_labels(frame: pd.DataFrame, label_column: str | None) -> np.ndarray:
    if label_column is None:
        raise ConfigError("split.stratify is true but no label_column was given to split_frame")
    labels = frame[label_column]
    n_null = int(labels.isna().sum())
    if n_null:
        raise EntityFrameError(
            f"label column {label_column!r} has {n_null} null value(s); stratification needs a "
            "label on every row; drop those rows or set stratify: false"
        )
    counts = labels.value_counts()
    if counts.min() < 2 or len(counts) > len(labels) / 2:
        raise ConfigError(
            f"split.stratify is true but label column {label_column!r} has {len(counts)} distinct "
            f"values and its smallest class has {int(counts.min())} row(s); stratify needs a "
            "classification label with at least 2 rows per class; set stratify: false"
        )
    return labels.to_numpy()


def _groups(frame: pd.DataFrame, column: str) -> pd.Series:
    _require_columns(frame, [column])
    n_null = int(frame[column].isna().sum())
    if n_null:
        raise EntityFrameError(
            f"group column {column!r} has {n_null} null value(s); every row needs a user to be "
            "split by group; drop those rows first"
        )
    return frame[column]


def _require_columns(frame: pd.DataFrame, columns: list[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise EntityFrameError(
            f"training frame is missing column(s) {', '.join(map(repr, missing))} "
            f"(columns: {', '.join(map(str, frame.columns))}); pass the joined frame or name "
            "the right column"
        )


def _parse_cutoff(value: Any) -> pd.Timestamp:
    if not isinstance(value, (str, datetime, pd.Timestamp, np.datetime64)):
        raise ConfigError(f"split.cutoff is {value!r}; give an ISO timestamp such as '2025-10-01T00:00:00Z'")
    try:
        cutoff = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"split.cutoff {value!r} is not a timestamp; give an ISO timestamp such as '2025-10-01T00:00:00Z'"
        ) from exc
    if pd.isna(cutoff):
        raise ConfigError(f"split.cutoff is {value!r}; give an ISO timestamp")
    cutoff = cutoff.tz_localize("UTC") if cutoff.tzinfo is None else cutoff.tz_convert("UTC")
    low, high = CUTOFF_RANGE
    if not low <= cutoff < high:
        raise ConfigError(
            f"split.cutoff is {value!r}; it must be from {low:%Y-%m-%d} to before {high:%Y-%m-%d}, "
            "e.g. '2025-10-01T00:00:00Z'"
        )
    return cutoff


def _show(value: Any) -> str:
    return value.isoformat() if isinstance(value, pd.Timestamp) else repr(value)
