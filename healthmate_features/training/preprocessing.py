"""Declarative scikit-learn preprocessing: a config (dict or YAML) becomes a sklearn Pipeline.

The pipeline receives the joined feature frame *with* its key columns (``user_id``,
``event_timestamp``) and without the label. Its first step, a ColumnTransformer named
``columns``, routes numeric and categorical features to their branches and drops everything
else, the keys included; with ``numeric.impute: ffill`` the keys are routed into the numeric
branch, where `CausalForwardFill` uses them to order rows and then drops them. Later steps
(``select_<i>_<method>``, ``reduce_pca``) see only features. Output is a pandas DataFrame whose
columns are ``pipeline.get_feature_names_out()``.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import yaml
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.feature_selection import (
    SelectKBest,
    SelectorMixin,
    VarianceThreshold,
    mutual_info_classif,
    mutual_info_regression,
)
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, OrdinalEncoder, RobustScaler, StandardScaler
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from healthmate_features.errors import ConfigError, HealthmateError, PreprocessingError
from healthmate_features.util.checks import MAX_SEED, Integer, Number, check
from healthmate_features.util.text import yaml_problem

Task = Literal["classification", "regression"]  # the learning task a training set is for, defined once
TASKS: tuple[Task, ...] = get_args(Task)
SECTION_KEYS: dict[str, tuple[str, ...] | None] = {
    "numeric": ("columns", "impute", "fill_value", "scale"),
    "categorical": ("columns", "impute", "fill_value", "encode"),
    "select": None,  # a list of {"method": ...} mappings
    "reduce": ("method", "n_components"),
}
ALLOWED = {
    ("numeric", "impute"): ("median", "mean", "most_frequent", "constant", "ffill", "none"),
    ("numeric", "scale"): ("standard", "minmax", "robust", "none"),
    ("categorical", "impute"): ("most_frequent", "constant", "none"),
    ("categorical", "encode"): ("onehot", "ordinal"),
    ("reduce", "method"): ("pca",),
}
SELECT_KEYS = {"variance": ("threshold",), "correlation": ("threshold",), "mutual_info": ("k", "random_state")}
_DEFAULTS: dict[str, dict[str, str | None]] = {
    "numeric": {"impute": "none", "scale": "none"},
    "categorical": {"impute": "none", "encode": "onehot"},
    "reduce": {"method": None},
}
_SCALERS = {"standard": StandardScaler, "minmax": MinMaxScaler, "robust": RobustScaler}
MAX_COUNT = 1_000_000  # feature counts (k, n_components): far above any feature service's width
#: The numeric options' ranges (util.checks), by (section or select method, key).
LIMITS: dict[tuple[str, str], Number] = {
    ("numeric", "fill_value"): Number(),
    ("mutual_info", "k"): Integer(1, MAX_COUNT),
    ("mutual_info", "random_state"): Integer(0, MAX_SEED),
    ("variance", "threshold"): Number(0, None),
    ("correlation", "threshold"): Number(0, 1),
    ("reduce", "n_components"): Integer(1, MAX_COUNT),
    ("reduce", "variance_fraction"): Number(0.0, 1.0, open_low=True, open_high=True),
}


# --------------------------------------------------------------------------- config


def load_config(config: Mapping[str, Any] | str | Path | None) -> dict[str, Any]:
    """Read a preprocessing config given as a dict, YAML text or a YAML file path (not validated).

    A `Path`, or a string naming an existing file, is read as a file; any other string is YAML
    text. ``None`` and empty YAML mean the empty config.
    """
    if config is None or isinstance(config, Mapping):
        return dict(config or {})
    source = "preprocessing config"
    text = config
    if isinstance(config, Path) or ("\n" not in config and Path(config).is_file()):
        path = Path(config)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read preprocessing config {str(path)!r}: {exc}") from exc
        source = f"preprocessing config file {str(path)!r}"
    if not isinstance(text, str):
        raise ConfigError(f"{source} is a {type(config).__name__}; give a dict, YAML text or a path")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {yaml_problem(exc)}") from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        hint = "; if that was meant as a file path, it does not exist" if isinstance(data, str) else ""
        raise ConfigError(
            f"{source} must be a mapping with sections {', '.join(SECTION_KEYS)}, "
            f"got {type(data).__name__} {data!r}{hint}"
        )
    return dict(data)


def validate_config(config: Mapping[str, Any] | str | Path | None) -> dict[str, Any]:
    """Check a preprocessing config strictly and return it normalized, every key present.

    Raises ConfigError naming the key, the bad value and the allowed values.
    """
    data = load_config(config)
    _unknown("preprocessing config", data, SECTION_KEYS)
    out: dict[str, Any] = {}
    for name, keys in SECTION_KEYS.items():
        if keys is None:  # "select", a list of steps: checked below
            continue
        section = data.get(name)
        if section is None:
            out[name] = None
            continue
        if not isinstance(section, Mapping):
            raise ConfigError(f"preprocessing.{name} is {section!r}; it must be a mapping")
        _unknown(f"preprocessing.{name}", section, keys)
        out[name] = _section_choices(name, {key: section.get(key) for key in keys}, **_DEFAULTS[name])
        if name == "reduce":
            out[name]["n_components"] = _check_n_components(out[name]["n_components"])
        else:
            _check_columns(name, out[name])
            _check_fill_value(name, out[name])
    both = set((out["numeric"] or {}).get("columns") or []) & set((out["categorical"] or {}).get("columns") or [])
    if both:
        raise ConfigError(
            f"column(s) {sorted(both)} are listed both as numeric and categorical; list each column in one section"
        )
    out["select"] = [_check_select(i, step) for i, step in enumerate(_as_list(data.get("select")))]
    return out


def _unknown(where: str, data: Mapping[str, Any], allowed) -> None:
    unknown = [key for key in data if key not in allowed]
    if unknown:
        raise ConfigError(
            f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; allowed keys: {', '.join(allowed)}"
        )


def _section_choices(name: str, section: dict[str, Any], **defaults) -> dict[str, Any]:
    for key, default in defaults.items():
        value = section[key] if section[key] is not None else default
        allowed = ALLOWED[(name, key)]
        if value not in allowed:
            raise ConfigError(f"preprocessing.{name}.{key} is {value!r}; allowed values: {', '.join(allowed)}")
        section[key] = value
    return section


def _check_columns(name: str, section: dict[str, Any]) -> None:
    columns = section["columns"]
    if columns is not None and (
        isinstance(columns, str)
        or not isinstance(columns, list)
        or not columns
        or not all(isinstance(c, str) for c in columns)
    ):
        raise ConfigError(
            f"preprocessing.{name}.columns is {columns!r}; give a non-empty list of "
            "column names, or leave it out to select columns by dtype"
        )


def _check_fill_value(name: str, section: dict[str, Any]) -> None:
    value = section["fill_value"]
    if section["impute"] != "constant":
        if value is not None:
            raise ConfigError(
                f"preprocessing.{name}.fill_value is set ({value!r}) but "
                f"{name}.impute is {section['impute']!r}; fill_value applies to "
                "impute: constant only"
            )
        return
    if value is None:
        section["fill_value"] = 0 if name == "numeric" else "missing"
    elif name == "numeric":
        check("preprocessing.numeric.fill_value", value, LIMITS[("numeric", "fill_value")])
    elif name == "categorical" and not isinstance(value, (str, int, float)):
        raise ConfigError(f"preprocessing.categorical.fill_value is {value!r}; give a string")


def _check_n_components(value: Any) -> int | float:
    if LIMITS[("reduce", "n_components")].accepts(value):
        return value
    if isinstance(value, float) and LIMITS[("reduce", "variance_fraction")].accepts(value):
        return value
    raise ConfigError(
        f"preprocessing.reduce.n_components is {value!r}; give a component count "
        f"({LIMITS[('reduce', 'n_components')].describe()}) or a fraction of explained variance in (0, 1)"
    )


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(
            f"preprocessing.select is {value!r}; it must be a list of steps such as "
            "[{method: variance, threshold: 0.0}]"
        )
    return value


def _check_select(index: int, step: Any) -> dict[str, Any]:
    where = f"preprocessing.select[{index}]"
    if not isinstance(step, Mapping) or "method" not in step:
        raise ConfigError(f"{where} is {step!r}; each step is a mapping with a 'method' ({', '.join(SELECT_KEYS)})")
    method = step["method"]
    if method not in SELECT_KEYS:
        raise ConfigError(f"{where}.method is {method!r}; allowed values: {', '.join(SELECT_KEYS)}")
    _unknown(f"{where} ({method})", step, ("method", *SELECT_KEYS[method]))
    if method == "mutual_info":
        k = step.get("k", 10)
        if k != "all":
            check(f"{where}.k", k, LIMITS[(method, "k")], hint=", or 'all'")
        seed = check(f"{where}.random_state", step.get("random_state", 0), LIMITS[(method, "random_state")])
        return {"method": method, "k": k, "random_state": seed}
    threshold = check(
        f"{where}.threshold",
        step.get("threshold", 0.0 if method == "variance" else 0.95),
        LIMITS[(method, "threshold")],
    )
    return {"method": method, "threshold": float(threshold)}


# --------------------------------------------------------------------------- transformers


class CausalForwardFill(TransformerMixin, BaseEstimator):
    """Per-user forward fill in time order that only looks back; leftovers get the train median.

    X is a DataFrame holding `group_column` and `time_column` plus numeric feature columns. Within
    each group, rows are ordered by time (ties keep input order) and a missing value takes the
    latest earlier non-missing value of that user in the same X; a row never receives a value
    from a later row. Values still missing (a user's first rows) get the column median learned in
    `fit`. The key columns are used for ordering only and are not in the output. With both set to
    None, X may be any 2-D array and its rows are one series in their given order.

    Only rows passed together are filled from each other: at serving time pass the user's recent
    rows along with the new one, or the median fallback applies.
    """

    def __init__(self, group_column: str | None = "user_id", time_column: str | None = "event_timestamp"):
        self.group_column = group_column
        self.time_column = time_column

    def fit(self, X, y=None):
        """Learn each feature's training median (the fallback); returns self."""
        values, _ = self._validate(X, reset=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            medians = np.nanmedian(values, axis=0)
        empty = np.isnan(medians)
        if empty.any():
            names = self._feature_names()[empty]
            warnings.warn(
                f"CausalForwardFill: column(s) {list(names)} have no value in the "
                "training data; their fallback fill is 0.0",
                UserWarning,
                stacklevel=2,
            )
        self.medians_ = np.where(empty, 0.0, medians)
        return self

    def transform(self, X):
        """Forward-fill within each user in time order, then fill leftovers with the medians."""
        check_is_fitted(self)
        values, keys = self._validate(X, reset=False)
        filled = self._forward_fill(values, keys)
        rows, cols = np.nonzero(np.isnan(filled))
        filled[rows, cols] = self.medians_[cols]
        return filled

    def get_feature_names_out(self, input_features=None):
        """The input feature names without the group and time columns."""
        check_is_fitted(self, "n_features_in_")
        names = self._feature_names()
        if input_features is not None:
            given = np.asarray(input_features, dtype=object)
            expected = getattr(self, "feature_names_in_", None)
            if len(given) != self.n_features_in_ or (expected is not None and not np.array_equal(given, expected)):
                raise ValueError("input_features is not equal to feature_names_in_")
            names = np.array([n for n in given if n not in self._keys()], dtype=object)
        return names

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def _keys(self) -> list[str]:
        return [c for c in (self.group_column, self.time_column) if c is not None]

    def _feature_names(self) -> np.ndarray:
        names = getattr(self, "feature_names_in_", None)
        if names is None:
            return np.array([f"x{i}" for i in range(self.n_features_in_)], dtype=object)
        return np.array([n for n in names if n not in self._keys()], dtype=object)

    def _validate(self, X, *, reset: bool):
        keys = self._keys()
        if not keys:
            values = validate_data(self, X, reset=reset, dtype=np.float64, ensure_all_finite="allow-nan", copy=True)
            return values, None
        if not isinstance(X, pd.DataFrame):
            raise PreprocessingError(
                f"CausalForwardFill(group_column={self.group_column!r}, time_column="
                f"{self.time_column!r}) needs a pandas DataFrame holding those columns, got "
                f"{type(X).__name__}; pass the joined frame, or set both to None to fill in row "
                "order"
            )
        missing = [k for k in keys if k not in X.columns]
        if missing:
            raise PreprocessingError(
                f"CausalForwardFill needs column(s) {missing} in X (columns: "
                f"{', '.join(map(str, X.columns))}); pass the frame with its user and time "
                "columns"
            )
        n_null = int(X[keys].isna().any(axis=1).sum())
        if n_null:
            raise PreprocessingError(
                f"CausalForwardFill: {n_null} row(s) have a null {' or '.join(keys)}; a row "
                "without a user or time cannot be ordered; drop those rows first"
            )
        validate_data(self, X, reset=reset, skip_check_array=True)
        values = check_array(X.drop(columns=keys), dtype=np.float64, ensure_all_finite="allow-nan", copy=True)
        return values, X[keys]

    def _forward_fill(self, values: np.ndarray, keys: pd.DataFrame | None) -> np.ndarray:
        if keys is None:
            return pd.DataFrame(values).ffill().to_numpy(dtype=np.float64)
        # Stable sort by time, then stably by group: rows grouped by user, in time order.
        order: np.ndarray[tuple[int, ...], np.dtype[np.signedinteger[Any]]] = np.arange(len(values))
        group_codes = None
        if self.time_column is not None:
            time_codes = pd.factorize(keys[self.time_column], sort=True)[0]
            order = order[np.argsort(time_codes[order], kind="stable")]
        if self.group_column is not None:
            group_codes = pd.factorize(keys[self.group_column])[0]
            order = order[np.argsort(group_codes[order], kind="stable")]
        ordered = pd.DataFrame(values[order])
        if group_codes is None:
            ordered = ordered.ffill()
        else:
            ordered = ordered.groupby(group_codes[order]).ffill()
        out = np.empty_like(values)
        out[order] = ordered.to_numpy(dtype=np.float64)
        return out


class CorrelationFilter(SelectorMixin, BaseEstimator):
    """Drops one feature of each pair whose absolute Pearson correlation exceeds `threshold`.

    Deterministic: columns are visited in input order and a column is dropped when it is
    correlated above the threshold with an earlier column that was kept. Correlations are
    pairwise over non-missing values of the training data; constant columns correlate with
    nothing.
    """

    def __init__(self, threshold: float = 0.95):
        self.threshold = threshold

    def fit(self, X, y=None):
        """Learn which columns to keep (`support_`) from the training data; returns self."""
        threshold = self.threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise PreprocessingError(f"CorrelationFilter.threshold is {threshold!r}; it must be a number in [0, 1]")
        values = validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan")
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = pd.DataFrame(values).corr().abs().to_numpy()
        keep = np.ones(values.shape[1], dtype=bool)
        for j in range(1, values.shape[1]):
            keep[j] = not np.any((corr[:j, j] > threshold) & keep[:j])
        self.support_ = keep
        return self

    def _get_support_mask(self):
        check_is_fitted(self)
        return self.support_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags


# --------------------------------------------------------------------------- pipeline


class ColumnSelector:
    """Picks one branch's columns from the frame at fit time (picklable, for ColumnTransformer).

    `kind` is "numeric" (number dtypes but bool) or "categorical" (object, string, category,
    bool); `columns` overrides dtype selection; `exclude` is never picked; `keys` are prepended
    when the branch has any feature column (the ffill branch needs them).
    """

    def __init__(self, kind: str, *, columns=None, exclude=(), keys=()):
        self.kind, self.columns = kind, columns
        self.exclude, self.keys = tuple(exclude), tuple(keys)

    def __repr__(self) -> str:
        return f"ColumnSelector({self.kind!r}, columns={self.columns!r}, exclude={self.exclude!r}, keys={self.keys!r})"

    def __call__(self, X: pd.DataFrame) -> list[str]:
        """The column names this branch takes from X."""
        wanted = [*self.keys, *(self.columns or [])]
        missing = [c for c in wanted if c not in X.columns]
        if missing:
            raise PreprocessingError(
                f"preprocessing ({self.kind} branch) needs column(s) {missing} that the frame "
                f"lacks (columns: {', '.join(map(str, X.columns))}); fix "
                f"preprocessing.{self.kind}.columns or pass the joined frame with its keys"
            )
        if self.columns is not None:
            chosen = list(self.columns)
        else:
            chosen = [c for c in X.columns if c not in self.exclude and self._matches(X[c].dtype)]
        return [*self.keys, *chosen] if chosen else []

    def _matches(self, dtype) -> bool:
        api = pd.api.types
        if self.kind == "numeric":
            return api.is_numeric_dtype(dtype) and not api.is_bool_dtype(dtype)
        return (
            api.is_bool_dtype(dtype)
            or api.is_object_dtype(dtype)
            or isinstance(dtype, pd.CategoricalDtype)
            or api.is_string_dtype(dtype)
        )


def build_pipeline(
    config: Mapping[str, Any] | str | Path | None,
    *,
    task: str = "classification",
    group_column: str = "user_id",
    time_column: str = "event_timestamp",
) -> Pipeline:
    """Build an unfitted preprocessing Pipeline with pandas output from a validated config.

    `task` picks the mutual-information scorer; the key columns are excluded from the features
    (and fed to `CausalForwardFill` when ``numeric.impute`` is ``ffill``).
    """
    if task not in TASKS:
        raise ConfigError(f"task is {task!r}; allowed values: {', '.join(TASKS)}")
    cfg = validate_config(config)
    keys = (group_column, time_column)
    numeric = cfg["numeric"] or {"columns": None, "impute": "none", "fill_value": None, "scale": "none"}
    categorical = cfg["categorical"]
    cat_columns = (categorical or {}).get("columns") or []
    num_steps: list[tuple[str, Any]] = []
    if numeric["impute"] == "ffill":
        num_steps.append(("impute", CausalForwardFill(group_column, time_column)))
    elif numeric["impute"] != "none":
        num_steps.append(
            (
                "impute",
                SimpleImputer(strategy=numeric["impute"], fill_value=numeric["fill_value"], keep_empty_features=True),
            )
        )
    if numeric["scale"] != "none":
        num_steps.append(("scale", _SCALERS[numeric["scale"]]()))
    num_select = ColumnSelector(
        "numeric",
        columns=numeric["columns"],
        exclude=(*keys, *cat_columns),
        keys=keys if numeric["impute"] == "ffill" else (),
    )
    branches: list[tuple[str, Any, Any]] = [
        ("numeric", Pipeline(num_steps) if num_steps else "passthrough", num_select)
    ]
    cat_select = ColumnSelector(
        "categorical", columns=cat_columns or None, exclude=(*keys, *(numeric["columns"] or []))
    )
    if categorical is None:
        branches.append(("categorical", "passthrough", cat_select))
    else:
        cat_steps: list[tuple[str, Any]] = []
        if categorical["impute"] != "none":
            cat_steps.append(
                ("impute", SimpleImputer(strategy=categorical["impute"], fill_value=categorical["fill_value"]))
            )
        if categorical["encode"] == "onehot":
            cat_steps.append(("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)))
        else:
            cat_steps.append(("encode", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)))
        branches.append(("categorical", Pipeline(cat_steps), cat_select))
    steps: list[tuple[str, Any]] = [
        ("columns", ColumnTransformer(branches, remainder="drop", verbose_feature_names_out=False))
    ]
    for i, step in enumerate(cfg["select"]):
        steps.append((f"select_{i}_{step['method']}", _selector(step, task)))
    if cfg["reduce"] is not None:
        steps.append(("reduce_pca", PCA(n_components=cfg["reduce"]["n_components"], random_state=0)))
    return Pipeline(steps).set_output(transform="pandas")


def _selector(step: dict[str, Any], task: str):
    if step["method"] == "variance":
        return VarianceThreshold(threshold=step["threshold"])
    if step["method"] == "correlation":
        return CorrelationFilter(threshold=step["threshold"])
    score = mutual_info_classif if task == "classification" else mutual_info_regression
    return SelectKBest(functools.partial(score, random_state=step["random_state"]), k=step["k"])


def fit_transform_splits(
    pipeline: Pipeline,
    X_train: pd.DataFrame,
    X_test: pd.DataFrame,
    *,
    y_train: pd.Series | np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit `pipeline` on the training rows only, then transform train and test with it.

    Side effect: `pipeline` is fitted in place. `y_train` is needed by mutual-information
    selection. Returns (X_train transformed, X_test transformed) as DataFrames.
    """
    if y_train is None and any(isinstance(s, SelectKBest) for _, s in pipeline.steps):
        raise PreprocessingError(
            "preprocessing selects features by mutual information, which needs the training labels; pass y_train"
        )
    try:
        pipeline.fit(X_train, y_train)
        return pipeline.transform(X_train), pipeline.transform(X_test)
    except HealthmateError:
        raise
    except (ValueError, TypeError) as exc:
        raise PreprocessingError(
            f"preprocessing failed on {len(X_train)} training / {len(X_test)} test rows "
            f"({X_train.shape[1]} columns): {_without_values(exc)}"
        ) from exc


def _without_values(exc: Exception) -> str:
    """scikit-learn's message without the data values it may quote ("could not convert string to
    float: 'female'"): its first line, every quoted literal replaced by '...'."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return re.sub(r"'[^']*'|\"[^\"]*\"", "'...'", first)[:300]
