"""Our feature views equal the registry's copy of themselves, materialized or not (what `feast plan` compares)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.diff.property_diff import TransitionType
from feast.diff.registry_diff import diff_registry_objects
from feast.infra.registry.registry import FeastObjectType
from feast.types import Int64

from healthmate_features.features.definitions import DefinedFeatureView, feature_view

INTERVAL = (datetime(2025, 1, 1, tzinfo=timezone.utc), datetime(2025, 2, 1, tzinfo=timezone.utc))


def repo_view() -> FeatureView:
    """health_daily as feature_repo/ declares it (a FileSource over its Parquet file)."""
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    source = FileSource(
        name="health_daily_source", path="data/features/health_daily.parquet", timestamp_field="event_timestamp"
    )
    view = feature_view("health_daily", source, user)
    view.entity_columns = [Field(name="user_id", dtype=Int64)]  # what `feast apply` infers from the source
    return view


def registry_copy(view: FeatureView, *, materialized: bool) -> FeatureView:
    """The view as Feast's registry returns it: from its proto, its source stamped when it was applied,
    with the intervals `materialize` recorded."""
    proto = view.to_proto()
    proto.spec.batch_source.meta.created_timestamp.FromDatetime(INTERVAL[0])
    proto.spec.batch_source.meta.last_updated_timestamp.FromDatetime(INTERVAL[0])
    if materialized:
        interval = proto.meta.materialization_intervals.add()
        interval.start_time.FromDatetime(INTERVAL[0])
        interval.end_time.FromDatetime(INTERVAL[1])
    return FeatureView.from_proto(proto)


@pytest.mark.parametrize("materialized", [False, True])
def test_feast_plans_no_change_for_an_unchanged_view(materialized):
    new = repo_view()
    current = registry_copy(new, materialized=materialized)
    assert bool(current.materialization_intervals) is materialized
    assert not current != new and current == new and new == current and not new != current
    assert hash(current) == hash(new)
    diff = diff_registry_objects(current, new, FeastObjectType.FEATURE_VIEW)
    assert diff.transition_type == TransitionType.UNCHANGED, [p.property_name for p in diff.feast_object_property_diffs]


def test_a_plain_feast_view_looks_changed_once_materialized():
    """Why DefinedFeatureView exists: Feast's own equality counts the registry's intervals (Feast 0.67)."""
    new = repo_view()
    plain = FeatureView.from_proto(new.to_proto())  # the same definition, Feast's class
    current = registry_copy(new, materialized=True)
    assert current != plain
    diff = diff_registry_objects(current, plain, FeastObjectType.FEATURE_VIEW)
    assert diff.transition_type == TransitionType.UPDATE
    assert [p.property_name for p in diff.feast_object_property_diffs] == ["batch_source"]  # only its timestamps


def test_a_real_change_is_still_a_change():
    new = repo_view()
    current = registry_copy(new, materialized=True)
    new.description += " (edited)"
    assert current != new and new != current
    diff = diff_registry_objects(current, new, FeastObjectType.FEATURE_VIEW)
    assert diff.transition_type == TransitionType.UPDATE
    assert "description" in [p.property_name for p in diff.feast_object_property_diffs]


def test_the_registry_stores_what_it_stores_for_a_plain_feature_view():
    new = repo_view()
    assert type(new) is DefinedFeatureView
    assert FeatureView.from_proto(new.to_proto()).to_proto().spec == new.to_proto().spec
    assert new.materialization_intervals == []  # comparing never copied the registry's intervals into it
    registry_copy(new, materialized=True) == new  # noqa: B015 (the comparison must not change either side)
    assert new.materialization_intervals == []
