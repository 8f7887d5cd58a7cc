"""Helpers the Feast definitions in feature_repo/ use to build their schemas and sources.

Kept here so feature_repo/ stays declarative: a feature view names its table and gets its
fields, with descriptions, units and tags, from `features.FEATURE_TABLES`, and its batch source
from `source(table)`, which follows the profile (a Parquet FileSource when embedded, a
PostgreSQLSource over `<HM_PG_SCHEMA>.<table>` in production) under the same source name.
"""

from __future__ import annotations

from datetime import timedelta

from feast import FeatureView, Field
from feast.data_source import DataSource
from feast.types import Float64, Int64, String

from healthmate_features.backends import backend_for
from healthmate_features.config import Settings
from healthmate_features.features.catalog import FEATURE_TABLES, TEMPORAL_FEATURES

OWNER = "ml-platform@healthmate"
_TYPES = {"Float64": Float64, "Int64": Int64, "String": String}


def fields(table: str) -> list[Field]:
    """Feast fields of one feature table, with description and tags (owner, unit, pii)."""
    return [
        Field(
            name=f.name,
            dtype=_TYPES[f.dtype],
            description=f.description + (f" [{f.unit}]" if f.unit else ""),
            tags={"owner": OWNER, "unit": f.unit, "pii": str(f.pii).lower()},
        )
        for f in FEATURE_TABLES[table].features
    ]


def ttl(table: str) -> timedelta:
    return timedelta(days=FEATURE_TABLES[table].ttl_days)


def description(table: str) -> str:
    return FEATURE_TABLES[table].description


def source(table: str) -> DataSource:
    """The batch source of a feature table for the profile in HM_PROFILE, named `<table>_source`.

    `feast apply` imports feature_repo/ in its own process, so the environment is the channel:
    `stores.feature_store.apply` (and `healthmate-features env`, for the plain feast CLI) exports
    HM_PROFILE and HM_PG_SCHEMA there.
    """
    return backend_for(Settings.from_env()).batch_source(table, description=description(table))


def feature_view(table: str, source, entity) -> FeatureView:
    """The feature view of one feature table: schema, TTL, description and tags from the catalog."""
    pii = any(f.pii for f in FEATURE_TABLES[table].features)
    return FeatureView(
        name=table,
        entities=[entity],
        ttl=ttl(table),
        schema=fields(table),
        source=source,
        description=description(table),
        tags={"owner": OWNER, "domain": table.split("_")[0], "pii": str(pii).lower()},
    )


def temporal_schema() -> list[Field]:
    """Schema of the on-demand temporal view: names and types only (see TEMPORAL_FEATURES)."""
    return [Field(name=f.name, dtype=_TYPES[f.dtype]) for f in TEMPORAL_FEATURES]


def temporal_description() -> str:
    return "Cyclical and calendar encodings of the request time, and account age. " + "; ".join(
        f"{f.name}: {f.description}" + (f" [{f.unit}]" if f.unit else "") for f in TEMPORAL_FEATURES
    )
