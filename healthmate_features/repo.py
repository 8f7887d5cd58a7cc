"""Helpers the Feast definitions in feature_repo/ use to build their schemas from the catalog.

Kept here so feature_repo/ stays declarative: a feature view names its table and gets its
fields, with descriptions, units and tags, from `features.FEATURE_TABLES`.
"""
from __future__ import annotations

from datetime import timedelta

from feast import Field
from feast.types import Float64, Int64, String

from .features import FEATURE_TABLES, TEMPORAL_FEATURES

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


def source_path(table: str) -> str:
    """Path of a table's Parquet file, relative to the repository root (embedded profile)."""
    return f"data/features/{table}.parquet"



def temporal_schema() -> list[Field]:
    """Schema of the on-demand temporal view: names and types only (see TEMPORAL_FEATURES)."""
    return [Field(name=f.name, dtype=_TYPES[f.dtype]) for f in TEMPORAL_FEATURES]


def temporal_description() -> str:
    return "Cyclical and calendar encodings of the request time, and account age. " + "; ".join(
        f"{f.name}: {f.description}" + (f" [{f.unit}]" if f.unit else "") for f in TEMPORAL_FEATURES
    )
