"""Quoting for SQL text we build ourselves (DuckDB and Postgres share the standard rules)."""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """A double-quoted SQL identifier: `a"b` -> `"a""b"`."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A single-quoted SQL string literal: `it's` -> `'it''s'`."""
    return "'" + value.replace("'", "''") + "'"
