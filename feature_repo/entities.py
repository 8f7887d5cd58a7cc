"""Entities: the keys features are looked up by."""

from feast import Entity, ValueType

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.INT64,
    description="A HealthMate app user (users.user_id).",
    tags={"owner": "ml-platform@healthmate", "pii": "false"},
)
