"""Declarative preprocessing: fitted on train only, causal ffill, names kept, strict configs."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from healthmate_features.errors import ConfigError, PreprocessingError
from healthmate_features.training.preprocessing import (
    CausalForwardFill,
    CorrelationFilter,
    build_pipeline,
    fit_transform_splits,
    validate_config,
)

START = pd.Timestamp("2025-01-01", tz="UTC")

FULL = {
    "numeric": {"impute": "median", "scale": "standard"},
    "categorical": {"impute": "most_frequent", "encode": "onehot"},
    "select": [
        {"method": "variance", "threshold": 0.0},
        {"method": "correlation", "threshold": 0.95},
        {"method": "mutual_info", "k": 6},
    ],
}
FFILL = {**FULL, "numeric": {"impute": "ffill", "scale": "robust"}}
PCA = {**FULL, "reduce": {"method": "pca", "n_components": 0.9}}


def make_frame(n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """A joined frame (keys + numeric/categorical/bool features, gaps) and a label."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(0, 25, n),
            "event_timestamp": START + pd.to_timedelta(rng.integers(0, 300 * 24, n), unit="h"),
            "steps_mean_7d": rng.normal(8000, 1500, n),
            "resting_hr": rng.normal(62, 6, n),
            "sleep_hours": rng.normal(7, 1, n),
            "plan": pd.Categorical(rng.choice(["free", "plus", "pro"], n)),
            "sex": rng.choice(["F", "M"], n).astype(object),
            "smoker": rng.random(n) < 0.2,
        }
    )
    frame["steps_sum_7d"] = frame["steps_mean_7d"] * 7 + rng.normal(0, 1, n)  # correlated twin
    frame.loc[rng.random(n) < 0.15, "steps_mean_7d"] = np.nan
    frame.loc[rng.random(n) < 0.10, "resting_hr"] = np.nan
    frame.loc[rng.random(n) < 0.05, "sex"] = np.nan
    label = pd.Series((frame["resting_hr"].fillna(62) > 64).astype(int), name="label")
    return frame, label


def learned_state(estimator, prefix: str = "") -> dict:
    """Every fitted attribute (public, ending in `_`) of a pipeline and its nested estimators."""
    state = {}
    for key, value in vars(estimator).items():
        if key.endswith("_") and not key.startswith("_") and key not in ("transformers_", "named_transformers_"):
            state[prefix + key] = value
    if isinstance(estimator, Pipeline):
        for name, step in estimator.steps:
            if step != "passthrough":
                state |= learned_state(step, f"{prefix}{name}.")
    for name, transformer, _ in getattr(estimator, "transformers_", []):
        if hasattr(transformer, "fit"):
            state |= learned_state(transformer, f"{prefix}{name}.")
    return state


def wildly_mutated(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    numeric = ["steps_mean_7d", "resting_hr", "sleep_hours", "steps_sum_7d"]
    out[numeric] = out[numeric] * 1e6 - 3e9
    out.loc[out.index[::3], "resting_hr"] = np.nan
    out["sex"] = "X"
    out["plan"] = pd.Categorical(["enterprise"] * len(out))
    out["smoker"] = True
    return out


# --------------------------------------------------------------------------- fit on train only


@pytest.mark.parametrize("config", [FULL, FFILL, PCA], ids=["median", "ffill", "pca"])
def test_statistics_are_unaffected_by_test_rows(config):
    frame, label = make_frame()
    X_train, X_test, y_train = frame.iloc[:300], frame.iloc[300:], label.iloc[:300]
    a, b, alone = (build_pipeline(config) for _ in range(3))
    train_a, test_a = fit_transform_splits(a, X_train, X_test, y_train=y_train)
    train_b, test_b = fit_transform_splits(b, X_train, wildly_mutated(X_test), y_train=y_train)
    alone.fit(X_train, y_train)
    pd.testing.assert_frame_equal(train_a, train_b)
    state_a, state_b, state_alone = learned_state(a), learned_state(b), learned_state(alone)
    assert state_a.keys() == state_b.keys() == state_alone.keys()
    np.testing.assert_equal(state_a, state_b)
    np.testing.assert_equal(state_a, state_alone)
    assert not test_a.equals(test_b)


def test_scaler_statistics_come_from_the_training_rows():
    frame, label = make_frame()
    pipeline = build_pipeline({"numeric": {"impute": "median", "scale": "standard"}})
    fit_transform_splits(pipeline, frame.iloc[:300], wildly_mutated(frame.iloc[300:]))
    numeric = pipeline.named_steps["columns"].named_transformers_["numeric"]
    names = list(numeric.get_feature_names_out())
    i = names.index("sleep_hours")
    assert numeric.named_steps["scale"].mean_[i] == pytest.approx(frame.sleep_hours[:300].mean())
    j = names.index("resting_hr")
    assert numeric.named_steps["impute"].statistics_[j] == pytest.approx(frame.resting_hr[:300].median())


# --------------------------------------------------------------------------- causal ffill


def ffill_fixture() -> pd.DataFrame:
    """User 1: null, then a later value. User 2: a value, then a null. Given out of time order."""
    return pd.DataFrame(
        {
            "user_id": [1, 2, 1, 2],
            "event_timestamp": [START + pd.Timedelta(days=d) for d in (5, 2, 1, 1)],
            "hr": [70.0, np.nan, np.nan, 50.0],
        }
    )


def test_ffill_never_looks_forward():
    frame = ffill_fixture()
    train = pd.DataFrame({"user_id": [9, 9, 9], "event_timestamp": [START] * 3, "hr": [60.0, 61.0, 100.0]})
    fill = CausalForwardFill().fit(train)
    assert fill.medians_.tolist() == [61.0]
    out = fill.transform(frame)
    # user 1's day-1 null stays the train median, not user 1's later day-5 value (70)
    # user 2's day-2 null takes user 2's earlier day-1 value (50), not user 1's
    assert out[:, 0].tolist() == [70.0, 50.0, 61.0, 50.0]
    assert list(fill.get_feature_names_out()) == ["hr"]


def test_ffill_output_of_a_row_never_depends_on_later_rows():
    rng = np.random.default_rng(1)
    frame, _ = make_frame(n=500, seed=3)
    features = frame[["user_id", "event_timestamp", "steps_mean_7d", "resting_hr"]]
    fill = CausalForwardFill().fit(features)
    before = fill.transform(features)
    cut = START + pd.Timedelta(days=150)
    later = features.event_timestamp > cut
    changed = features.copy()
    changed.loc[later, ["steps_mean_7d", "resting_hr"]] = rng.normal(0, 1e6, (later.sum(), 2))
    changed.loc[later & (rng.random(len(features)) < 0.5), "resting_hr"] = np.nan
    after = fill.transform(changed)
    np.testing.assert_array_equal(before[~later.to_numpy()], after[~later.to_numpy()])


def test_ffill_pipeline_uses_and_drops_the_key_columns():
    frame, label = make_frame()
    pipeline = build_pipeline({"numeric": {"impute": "ffill"}})
    train, test = fit_transform_splits(pipeline, frame.iloc[:300], frame.iloc[300:])
    assert "user_id" not in train.columns and "event_timestamp" not in train.columns
    numeric = ["steps_mean_7d", "resting_hr", "sleep_hours", "steps_sum_7d"]
    assert not train[numeric].isna().any().any() and not test[numeric].isna().any().any()
    with pytest.raises(ValueError, match="columns are missing: {'user_id'}"):
        pipeline.transform(frame.drop(columns=["user_id"]))
    with pytest.raises(PreprocessingError, match=r"branch\) needs column\(s\) \['user_id'\]"):
        build_pipeline({"numeric": {"impute": "ffill"}}).fit(frame.drop(columns=["user_id"]))


def test_keyed_ffill_refuses_unusable_input_clearly():
    with pytest.raises(PreprocessingError, match="needs a pandas DataFrame"):
        CausalForwardFill().fit(np.zeros((3, 2)))
    with pytest.raises(PreprocessingError, match=r"needs column\(s\) \['event_timestamp'\]"):
        CausalForwardFill().fit(pd.DataFrame({"user_id": [1], "hr": [1.0]}))
    frame = ffill_fixture()
    frame.loc[0, "user_id"] = None
    with pytest.raises(PreprocessingError, match="1 row\\(s\\) have a null user_id"):
        CausalForwardFill().fit(frame)


def test_keyed_ffill_follows_the_estimator_contract():
    est = CausalForwardFill(group_column="uid", time_column="ts")
    assert est.get_params() == {"group_column": "uid", "time_column": "ts"}
    assert not [k for k in vars(est) if k.endswith("_")]
    frame = ffill_fixture().rename(columns={"user_id": "uid", "event_timestamp": "ts"})
    snapshot = frame.copy()
    assert est.fit(frame) is est
    pd.testing.assert_frame_equal(frame, snapshot)
    assert list(est.feature_names_in_) == ["uid", "ts", "hr"] and est.n_features_in_ == 3
    fresh = clone(est)
    assert fresh.get_params() == est.get_params() and not hasattr(fresh, "medians_")
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(est)).transform(frame), est.transform(frame))


# --------------------------------------------------------------------------- other transformers


def test_correlation_filter_drops_the_later_column_of_a_correlated_pair():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    X = pd.DataFrame({"a": a, "b": rng.normal(size=200), "a2": 3 * a + 0.01, "const": 1.0})
    filt = CorrelationFilter(threshold=0.95).fit(X)
    assert list(filt.get_feature_names_out()) == ["a", "b", "const"]
    assert list(CorrelationFilter(threshold=1.0).fit(X).get_feature_names_out()) == list(X)
    with pytest.raises(PreprocessingError, match="threshold is 2"):
        CorrelationFilter(threshold=2).fit(X)


@parametrize_with_checks([CausalForwardFill(group_column=None, time_column=None), CorrelationFilter()])
def test_custom_transformers_pass_sklearn_estimator_checks(estimator, check):
    """scikit-learn's own checks. They feed plain arrays, so CausalForwardFill is checked with
    both key columns unset (rows form one series); its keyed path is covered above."""
    check(estimator)


# --------------------------------------------------------------------------- names, pickling


def test_column_names_survive():
    frame, label = make_frame()
    pipeline = build_pipeline(FULL | {"select": []})
    train, test = fit_transform_splits(pipeline, frame.iloc[:300], frame.iloc[300:])
    names = list(pipeline.get_feature_names_out())
    assert list(train.columns) == names == list(test.columns)
    assert {"steps_mean_7d", "resting_hr", "plan_pro", "sex_F", "smoker_True"} <= set(names)
    assert train.index.equals(frame.index[:300])


def test_empty_config_only_drops_the_keys():
    frame, _ = make_frame()
    train, _ = fit_transform_splits(build_pipeline({}), frame.iloc[:300], frame.iloc[300:])
    pd.testing.assert_frame_equal(train, frame.iloc[:300].drop(columns=["user_id", "event_timestamp"]), check_like=True)


def test_pca_names_and_selection_are_deterministic():
    frame, label = make_frame()
    outs = [
        fit_transform_splits(build_pipeline(PCA), frame.iloc[:300], frame.iloc[300:], y_train=label.iloc[:300])[0]
        for _ in range(2)
    ]
    pd.testing.assert_frame_equal(*outs)
    assert list(outs[0].columns) == [f"pca{i}" for i in range(outs[0].shape[1])]


@pytest.mark.parametrize("config", [FULL, FFILL, PCA], ids=["median", "ffill", "pca"])
def test_pipeline_pickles_and_transforms_new_rows_identically(config):
    frame, label = make_frame()
    pipeline = build_pipeline(config)
    fit_transform_splits(pipeline, frame.iloc[:300], frame.iloc[300:], y_train=label.iloc[:300])
    loaded = pickle.loads(pickle.dumps(pipeline))
    new_rows, _ = make_frame(n=50, seed=99)
    new_rows.loc[0, "sex"] = "unseen-category"
    pd.testing.assert_frame_equal(loaded.transform(new_rows), pipeline.transform(new_rows))


def test_yaml_text_and_file_build_the_same_pipeline_as_a_dict(tmp_path):
    text = """
numeric: {impute: constant, fill_value: -1, scale: minmax}
categorical: {encode: ordinal}
select:
  - {method: variance, threshold: 0.01}
"""
    path = tmp_path / "prep.yaml"
    path.write_text(text)
    frame, _ = make_frame()
    outs = [
        fit_transform_splits(build_pipeline(cfg), frame.iloc[:300], frame.iloc[300:])[0]
        for cfg in (text, path, str(path), validate_config(text))
    ]
    for out in outs[1:]:
        pd.testing.assert_frame_equal(outs[0], out)


def test_mutual_info_needs_labels():
    frame, _ = make_frame()
    with pytest.raises(PreprocessingError, match="pass y_train"):
        fit_transform_splits(build_pipeline(FULL), frame.iloc[:300], frame.iloc[300:])


def test_fit_failures_become_preprocessing_errors():
    frame, _ = make_frame()
    pipeline = build_pipeline({"numeric": {"impute": "median"}, "select": [{"method": "variance", "threshold": 1e12}]})
    with pytest.raises(PreprocessingError, match="preprocessing failed on 300 training"):
        fit_transform_splits(pipeline, frame.iloc[:300], frame.iloc[300:])


def test_a_failed_fit_quotes_no_data_value():
    frame, _ = make_frame()
    frame["plan"] = frame["plan"].astype(object)
    pipeline = build_pipeline({"numeric": {"columns": ["plan"], "impute": "median"}})
    with pytest.raises(PreprocessingError) as info:
        fit_transform_splits(pipeline, frame.iloc[:300], frame.iloc[300:])
    values = {str(v) for v in frame["plan"].dropna().unique()}
    assert "preprocessing failed on 300 training" in str(info.value)
    assert not any(f"'{v}'" in str(info.value) for v in values), str(info.value)


# --------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"numerics": {}},
            "preprocessing config has unknown key(s) 'numerics'; allowed keys: numeric, categorical, select, reduce",
        ),
        (
            {"numeric": {"impute": "medain"}},
            "preprocessing.numeric.impute is 'medain'; allowed values: median, mean, most_frequent, constant, ffill",
        ),
        ({"numeric": {"scale": "zscore"}}, "numeric.scale is 'zscore'; allowed values: standard, minmax, robust, none"),
        ({"numeric": {"imputer": "mean"}}, "numeric has unknown key(s) 'imputer'"),
        ({"numeric": {"impute": "mean", "fill_value": 0}}, "fill_value applies to impute: constant"),
        ({"numeric": {"impute": "constant", "fill_value": "zero"}}, "fill_value is 'zero'"),
        (
            {"categorical": {"impute": "ffill"}},
            "categorical.impute is 'ffill'; allowed values: most_frequent, constant, none",
        ),
        ({"categorical": {"encode": "target"}}, "categorical.encode is 'target'; allowed values: onehot, ordinal"),
        ({"categorical": {"columns": "plan"}}, "categorical.columns is 'plan'; give a non-empty list"),
        (
            {"numeric": {"columns": ["plan"]}, "categorical": {"columns": ["plan"]}},
            "listed both as numeric and categorical",
        ),
        (
            {"select": [{"method": "lasso"}]},
            "select[0].method is 'lasso'; allowed values: variance, correlation, mutual_info",
        ),
        (
            {"select": [{"method": "correlation", "threshold": 1.5}]},
            "select[0].threshold is 1.5; it must be a number in [0, 1]",
        ),
        ({"select": [{"method": "variance", "k": 3}]}, "select[0] (variance) has unknown key(s) 'k'"),
        ({"select": [{"method": "mutual_info", "k": -2}]}, "select[0].k is -2"),
        ({"select": {"method": "variance"}}, "preprocessing.select is {'method': 'variance'}; it must be a list"),
        ({"reduce": {"method": "umap"}}, "reduce.method is 'umap'; allowed values: pca"),
        ({"reduce": {"method": "pca", "n_components": 0}}, "reduce.n_components is 0"),
        ({"reduce": {"method": "pca", "n_components": 1.0}}, "n_components is 1.0"),
        # ranges: nothing that passes overflows or fails inside scikit-learn later
        (
            {"numeric": {"impute": "constant", "fill_value": 10**400}},
            "numeric.fill_value is 1000000000000000000000000000000000000...; it must be a number (finite)",
        ),
        ({"numeric": {"impute": "constant", "fill_value": float("inf")}}, "fill_value is inf; it must be"),
        (
            {"select": [{"method": "mutual_info", "random_state": 2**40}]},
            "select[0].random_state is 1099511627776; it must be an integer in [0, 4294967295]",
        ),
        (
            {"select": [{"method": "mutual_info", "k": 10**30}]},
            "select[0].k is 1000000000000000000000000000000; it must be an integer in [1, 1000000], or 'all'",
        ),
        ({"select": [{"method": "variance", "threshold": float("nan")}]}, "threshold is nan; it must be a number >= 0"),
        ({"reduce": {"method": "pca", "n_components": 10**30}}, "component count (an integer in [1, 1000000])"),
        ("numeric: [", "preprocessing config is not valid YAML"),
        ("no-such-file.yaml", "got str 'no-such-file.yaml'; if that was meant as a file path, it does not exist"),
    ],
)
def test_bad_configs_name_the_key_the_value_and_the_allowed_values(config, message):
    with pytest.raises(ConfigError) as info:
        build_pipeline(config)
    assert message in str(info.value)


def test_bad_task_is_a_config_error():
    with pytest.raises(ConfigError, match="task is 'ranking'; allowed values: classification"):
        build_pipeline({}, task="ranking")
