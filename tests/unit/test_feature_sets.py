"""Feature-set definitions: reference checks, the JSON file, and the FeatureServices built from it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64

from healthmate_features.errors import FeatureSetError
from healthmate_features.features.feature_sets import check_name, read_file, resolve, services_from_file

VIEWS = {"daily": ["steps", "sleep"], "weekly": ["steps_week", "sleep"], "profile": ["age"]}


@pytest.mark.parametrize("name", ["sleep_risk_v1", "a_v12", "x2_y_v3"])
def test_versioned_names_are_accepted(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["sleep_risk", "Sleep_v1", "_v1", "v1", "a_v", "a-b_v1", "a_v1 ", None, 3])
def test_unversioned_or_odd_names_are_refused(name):
    with pytest.raises(FeatureSetError, match="versioned name"):
        check_name(name)


def test_references_group_by_view_in_first_mention_order():
    grouped = resolve(["profile:age", "daily:sleep", "daily:steps", "daily:sleep", "weekly:steps_week"], VIEWS)
    assert grouped == {"profile": ["age"], "daily": ["sleep", "steps"], "weekly": ["steps_week"]}
    assert resolve(["daily:steps", "daily"], VIEWS) == {"daily": None}  # the whole view wins


@pytest.mark.parametrize(
    "refs, message",
    [
        (["nope:steps"], "unknown feature view 'nope'"),
        (["daily:nope"], "feature view 'daily' has no feature 'nope'"),
        (["daily", "weekly"], "feature 'sleep' is in both 'daily' and 'weekly'"),
        (["daily:sleep", "weekly:sleep"], "is in both"),
        ([], "at least one feature"),
        ([7], "is not a string"),
        (["a:b:c"], "is not 'view:feature'"),
    ],
)
def test_bad_references_are_refused_by_name(refs, message):
    with pytest.raises(FeatureSetError, match=message):
        resolve(refs, VIEWS)


def test_a_missing_or_blank_file_holds_no_feature_sets(tmp_path):
    assert read_file(tmp_path / "missing.json") == []
    (tmp_path / "blank.json").write_text("  \n")
    assert read_file(tmp_path / "blank.json") == []
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(FeatureSetError, match="not valid JSON"):
        read_file(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(FeatureSetError, match="feature_sets"):
        read_file(tmp_path / "list.json")


def test_services_are_built_from_the_file_with_projections(tmp_path):
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    source = FileSource(name="s", path="x.parquet", timestamp_field="event_timestamp")
    daily = FeatureView(
        name="daily",
        entities=[user],
        source=source,
        schema=[Field(name="steps", dtype=Float64), Field(name="sleep", dtype=Float64)],
    )
    path = tmp_path / "feature_sets.json"
    path.write_text(
        json.dumps(
            {
                "feature_sets": [
                    {"name": "a_v1", "features": ["daily:sleep"], "description": "d"},
                    {"name": "b_v1", "features": ["daily"]},
                ]
            }
        )
    )
    services = services_from_file(path, modules=[SimpleNamespace(daily_fv=daily)])
    assert sorted(services) == ["a_v1", "b_v1"]
    assert [f.name for f in services["a_v1"].feature_view_projections[0].features] == ["sleep"]
    assert [f.name for f in services["b_v1"].feature_view_projections[0].features] == ["steps", "sleep"]
    assert services["a_v1"].description == "d" and services["a_v1"].tags["defined_in"] == "feature_sets.json"
    path.write_text(json.dumps({"feature_sets": [{"name": "c_v1", "features": ["weekly"]}]}))
    with pytest.raises(FeatureSetError, match="feature set 'c_v1': unknown feature view 'weekly'"):
        services_from_file(path, modules=[SimpleNamespace(daily_fv=daily)])


def test_a_name_the_code_defines_or_the_file_repeats_is_refused(tmp_path):
    import types

    from feast import FeatureService

    from healthmate_features.errors import FeatureSetExistsError

    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    source = FileSource(name="s", path="x.parquet", timestamp_field="event_timestamp")
    daily = FeatureView(name="daily", entities=[user], source=source, schema=[Field(name="steps", dtype=Float64)])
    code = types.ModuleType("feature_repo.feature_services")
    code.__file__ = str(tmp_path / "feature_repo" / "feature_services.py")
    code.risk_v1 = FeatureService(name="risk_v1", features=[daily])
    path = tmp_path / "feature_repo" / "feature_sets.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"feature_sets": [{"name": "risk_v1", "features": ["daily"]}]}))
    with pytest.raises(FeatureSetExistsError) as info:
        services_from_file(path, modules=[SimpleNamespace(daily_fv=daily)], code=[code])
    assert str(info.value) == (
        "feature service 'risk_v1' is defined twice: in the repository's code (feature_repo/feature_services.py) "
        "and in feature_repo/feature_sets.json; remove its entry from feature_sets.json or rename one of them "
        "(e.g. the next version)"
    )
    assert str(tmp_path) not in str(info.value)
    path.write_text(json.dumps({"feature_sets": [{"name": "a_v1", "features": ["daily"]}] * 2}))
    with pytest.raises(
        FeatureSetExistsError, match=r"feature_repo/feature_sets.json: feature set 'a_v1' is defined twice"
    ):
        read_file(path)
