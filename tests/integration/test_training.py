"""The training-set builder end to end on generated data: real Feast, real splits, real versions."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from healthmate_features.cli import main
from healthmate_features.errors import EntityFrameError
from healthmate_features.stores import feature_store as store
from healthmate_features.training.builder import (
    build_and_save,
    build_training_set,
    join_features,
    rebuild,
    registry,
)
from tests.helpers.files import read_frame


@pytest.fixture(scope="module")
def repo(generated_repo, clone_repo, tmp_path_factory):
    """This module's copy of the generated repository (conftest `generated_repo`): its tests save datasets."""
    return clone_repo(generated_repo, tmp_path_factory.mktemp("train") / "repo")


def test_time_split_training_set_is_versioned_with_its_leakage_report(repo, training_config):
    ref, dataset, _ = build_and_save(training_config("health_risk"), repo)
    assert ref == "health_risk@1.0.0"
    report = dataset.metadata["leakage_report"]
    assert report["strategy"] == "time" and report["embargo_days"] >= 30 + 30  # window + label horizon
    assert report["embargo_days"] == report["required_embargo_days"]  # the default: exactly what is required
    cutoff = pd.Timestamp(report["cutoff"])
    embargo = pd.Timedelta(days=report["embargo_days"])
    assert dataset.joined_train.event_timestamp.max() < cutoff - embargo
    assert dataset.joined_test.event_timestamp.min() >= cutoff
    labels = read_frame(repo, repo.ingested_dir / "labels.parquet")
    assert len(dataset.X_train) + len(dataset.X_test) + report["excluded_rows_total"] == len(
        labels
    )  # nothing lost silently
    manifest = registry(repo).show("health_risk", "1.0.0")
    assert manifest["feature_service"] == "health_risk_v1" and manifest["feast_definitions_hash"]
    assert registry(repo).verify("health_risk", "1.0.0").ok


def test_preprocessing_is_fitted_on_the_training_split_only(repo, training_config):
    dataset = build_training_set(training_config("health_risk"), repo)
    label = "adverse_event_30d"
    X_train = dataset.joined_train.drop(columns=[label])
    pd.testing.assert_frame_equal(dataset.pipeline.transform(X_train), dataset.X_train)
    # the numeric imputer's medians are the training rows' medians, whatever the test rows hold
    imputer = dataset.pipeline.named_steps["columns"].named_transformers_["numeric"].named_steps["impute"]
    numeric = dataset.pipeline.named_steps["columns"].transformers_[0][2]
    assert np.allclose(imputer.statistics_, X_train[numeric].median().to_numpy(), equal_nan=True)


def test_group_split_keeps_every_user_on_one_side(repo, training_config):
    dataset = build_training_set(training_config("engagement_churn"), repo)
    train_users, test_users = set(dataset.joined_train.user_id), set(dataset.joined_test.user_id)
    assert train_users and test_users and not train_users & test_users
    assert dataset.metadata["leakage_report"]["users_overlapping"] == 0
    assert len(dataset.feature_names) == 20  # the config's mutual-information top k=20
    assert dataset.feature_names == list(dataset.X_train.columns) == list(dataset.X_test.columns)
    assert all(isinstance(n, str) for n in dataset.feature_names)


def test_rebuild_gives_the_identical_data_hash_and_versions_bump_by_rule(repo, training_config):
    ref, _, _ = build_and_save(training_config("engagement_churn", name="churn_rebuild"), repo)
    name, version = ref.split("@")
    report = rebuild(name, version, repo)
    assert report["identical"] and not report["entities_changed"], report
    store.apply(repo)  # a `feast apply` that changes no definition (Feast re-stamps its sources' times)
    again = build_and_save(training_config("engagement_churn", name="churn_rebuild"), repo)
    assert (again.ref, again.created) == ("churn_rebuild@1.0.0", False)  # nothing changed: no new version
    copy = build_and_save(training_config("engagement_churn", name="churn_rebuild"), repo, bump="patch")
    assert (copy.ref, copy.created) == ("churn_rebuild@1.0.1", True)  # asked for: a patch


def test_join_keeps_rows_duplicates_and_order_and_handles_any_timestamp_precision(repo):
    labels = read_frame(repo, repo.ingested_dir / "labels.parquet").sample(60, random_state=1)
    entities = pd.concat([labels, labels.iloc[:5]], ignore_index=True)  # 5 duplicate rows
    entities["event_timestamp"] = entities["event_timestamp"].astype("datetime64[ns, UTC]") + pd.Timedelta(
        nanoseconds=7
    )
    joined, report = join_features(entities, repo, feature_service="engagement_churn_v1", label="disengaged_14d")
    assert labels.duplicated(["user_id", "event_timestamp"]).sum() == 0
    assert len(joined) == len(entities) and report.duplicate_rows == 5
    assert list(joined.user_id) == list(entities.user_id)
    assert (joined.event_timestamp == entities.event_timestamp.dt.floor("us")).all()
    assert report.sub_microsecond_floored == len(entities)
    pd.testing.assert_frame_equal(joined.iloc[:5].reset_index(drop=True), joined.iloc[-5:].reset_index(drop=True))


def test_naive_timestamps_are_taken_as_utc_and_unknown_users_are_counted(repo):
    entities = pd.DataFrame(
        {"user_id": [1, 1, 99_999], "event_timestamp": ["2025-05-01 12:00", "2025-05-02T12:00:00", "2025-05-01 12:00"]}
    )
    joined, report = join_features(entities, repo, feature_service="engagement_churn_v1")
    assert report.naive_timestamps_assumed_utc == 3 and str(joined.event_timestamp.dt.tz) == "UTC"
    assert (report.unknown_users, report.unknown_user_rows) == (1, 1)
    unknown = joined.iloc[2].drop(["user_id", "event_timestamp"])  # unknown user: row kept, stored features null
    time_of_request = {
        "hour_sin",
        "hour_cos",
        "dow_sin",
        "dow_cos",
        "month_sin",
        "month_cos",
        "is_weekend",
        "day_of_year",
    }
    assert set(unknown[unknown.notna()].index) == time_of_request


@pytest.mark.parametrize(
    "entities, message",
    [
        (
            pd.DataFrame({"user_id": [1], "label": [0]}),
            "missing column(s) 'event_timestamp' (columns: user_id, label); pass the prediction time per row",
        ),
        (
            pd.DataFrame({"user_id": [1, 2], "event_timestamp": [pd.Timestamp("2025-05-01", tz="UTC"), None]}),
            "'event_timestamp' has 1 null value(s) of 2 rows",
        ),
        (
            pd.DataFrame({"user_id": [1], "event_timestamp": ["next tuesday"]}),
            "1 unparseable value(s) (e.g. 'next tuesday')",
        ),
        (
            pd.DataFrame({"user_id": ["abc"], "event_timestamp": ["2025-05-01T00:00:00Z"]}),
            "'user_id' has 1 non-integer value(s) (e.g. 'abc')",
        ),
        (pd.DataFrame({"user_id": [], "event_timestamp": []}), "entity frame has no rows"),
    ],
)
def test_bad_entity_frames_give_clear_errors(repo, entities, message):
    with pytest.raises(EntityFrameError) as info:
        join_features(entities, repo, feature_service="engagement_churn_v1")
    assert message in str(info.value)


def test_cli_builds_lists_verifies_diffs_and_rebuilds(repo, tmp_path, monkeypatch, training_config):
    monkeypatch.setenv("HM_REPO_PATH", str(repo.repo_path))
    config = tmp_path / "risk.yaml"
    config.write_text(yaml.safe_dump(training_config("health_risk", name="cli_risk")))
    run = lambda *args: CliRunner().invoke(main, list(args))  # noqa: E731
    first = run("training-set", "build", "--config", str(config))
    assert first.exit_code == 0, first.output
    assert first.output.startswith("cli_risk@1.0.0\n")
    second = run("training-set", "build", "--config", str(config), "--bump", "minor")
    assert second.output.startswith("cli_risk@1.1.0\n"), second.output
    listed = run("datasets", "list", "cli_risk")
    assert listed.exit_code == 0 and "1.0.0" in listed.output and "1.1.0" in listed.output
    assert run("datasets", "verify", "cli_risk").exit_code == 0
    diff = run("datasets", "diff", "cli_risk", "1.0.0", "1.1.0", "--json")
    assert diff.exit_code == 0, diff.output
    changes = json.loads(diff.output)  # the same config and data, only --bump minor
    assert (changes["from"], changes["to"]) == ("1.0.0", "1.1.0")
    assert changes["schema"]["X_train"] == {"added": [], "removed": [], "dtype_changed": {}}
    assert changes["features"]["added"] == changes["features"]["removed"] == []
    assert changes["rows"]["train"]["delta"] == changes["rows"]["test"]["delta"] == 0
    assert [name for name, changed in changes["changed"].items() if changed] == ["build_spec"]  # the recorded bump
    assert changes["bump_rule"] == {"kind": "patch", "reasons": ["no change in data or definitions"]}
    rebuilt = run("datasets", "rebuild", "cli_risk", "1.0.0", "--json")
    assert rebuilt.exit_code == 0 and '"identical": true' in rebuilt.output, rebuilt.output
    loaded = run("datasets", "load", "cli_risk", "--out", str(tmp_path / "splits"))
    assert loaded.exit_code == 0 and (tmp_path / "splits" / "X_train.parquet").exists(), loaded.output
    bad = run("training-set", "build", "--config", str(tmp_path / "missing.yaml"))
    assert bad.exit_code == 1 and "cannot read training-set config" in bad.output


@pytest.mark.slow
def test_every_saved_version_is_a_feast_saved_dataset_that_feast_plan_leaves_alone(repo, training_config, feast_cli):
    from healthmate_features.datasets.saved import TAG
    from healthmate_features.stores import feature_store as store

    ref, dataset, _ = build_and_save(training_config("health_risk", name="in_feast"), repo)
    assert ref == "in_feast@1.0.0"
    assert "in_feast@1.0.0" in feast_cli(repo.repo_path, "saved-datasets", "list").split()
    fs = store.open_feature_store(repo)
    saved = fs.get_saved_dataset(ref)
    manifest = registry(repo).show("in_feast", "1.0.0")
    assert saved.features == manifest["feature_refs"] and saved.feature_service_name == "health_risk_v1"
    assert saved.tags[TAG] == "in_feast" and saved.tags["data_hash"] == manifest["data_hash"]
    assert (repo.repo_path / saved.tags["manifest"]).is_file()
    # read back through Feast (our DuckDB store): the joined train and test rows, keys and features
    rows = saved.to_df().sort_values(["user_id", "event_timestamp"], ignore_index=True)
    joined = pd.concat([dataset.joined_train, dataset.joined_test])
    joined = joined.sort_values(["user_id", "event_timestamp"], ignore_index=True)
    assert len(rows) == len(joined) == manifest["row_counts"]["train"] + manifest["row_counts"]["test"]
    assert set(rows.columns) == {"user_id", "event_timestamp", *(r.split(":")[1] for r in saved.features)}
    pd.testing.assert_frame_equal(rows, joined[rows.columns], check_dtype=False)

    # saved datasets are not repository definitions: `feast plan` proposes no change, `feast apply` keeps them
    plan = feast_cli(repo.repo_path, "plan")
    assert "No changes to registry" in plan and "Deleted" not in plan, plan
    feast_cli(repo.repo_path, "apply")
    assert ref in {d.name for d in store.open_feature_store(repo).list_saved_datasets()}

    # a version Feast lost (here: deleted from its registry) is registered again by the next build
    fs = store.open_feature_store(repo)
    fs.registry.delete_saved_dataset(ref, fs.project)
    again = build_and_save(training_config("health_risk", name="in_feast"), repo)
    assert (again.ref, again.created) == (ref, False)  # nothing changed: no new version, but registered again
    names = {d.name for d in store.open_feature_store(repo).list_saved_datasets(tags={TAG: "in_feast"})}
    assert names == {ref}
