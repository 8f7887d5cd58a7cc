"""The catalog's SQL in Spark SQL: every way Spark's dialect differs from the shared one, in one function.

The catalog (features.catalog) and the incremental plan (features.incremental) are written once,
in the SQL DuckDB and Postgres share. `spark_sql(sql)` rewrites the few constructs Spark spells
differently; everything else (window functions, `FILTER` aggregates, `IS DISTINCT FROM`, LATERAL
joins, exact DECIMAL(38, 9) sums) Spark runs as written. The rewrites, in order:

    CREATE TEMP TABLE t AS q            CACHE TABLE t AS q (materialized once, on the executors)
    CREATE TEMP VIEW t AS q             CREATE OR REPLACE TEMPORARY VIEW t AS q
    DOUBLE PRECISION, TIMESTAMPTZ,      DOUBLE, TIMESTAMP (the session's time zone is UTC), STRING
      VARCHAR
    "name" (an identifier)              `name`
    ARRAY[a, b]                         array(a, b)
    arr[i] (1-based)                    element_at(arr, i) (1-based too)
    generate_series(a, b, step)         explode(sequence(a, b, step)) (a table function in a LATERAL join)
    x - DATE '1970-01-01'               CAST(datediff(x, DATE '1970-01-01') AS BIGINT) (a date minus a
                                          date is an interval in Spark, a day count elsewhere)
    CAST(EXTRACT(EPOCH FROM x)          CAST(round(unix_micros(x) / 1000000D) AS BIGINT) (Spark has no
      AS BIGINT)                          EPOCH field, and its cast truncates where the others round)
    1.5 (a decimal literal)             1.5D: a double, as DuckDB computes `0.4 * n / 7.0` (Spark would keep
                                          DECIMAL with 6 decimals)
    OFFSET 0                            dropped (an optimizer fence elsewhere; in Spark a single-partition step)

The session settings that go with it (`SETUP_SQL`): decimal arithmetic without precision loss, so
`x * x` of two DECIMAL(38, 9) is DECIMAL(38, 18) as in DuckDB (exact), not rounded to 6 decimals.
"""

from __future__ import annotations

import re

SETUP_SQL = ("SET spark.sql.decimalOperations.allowPrecisionLoss = false",)

_TYPES = ((re.compile(r"\bDOUBLE PRECISION\b"), "DOUBLE"), (re.compile(r"\bTIMESTAMPTZ\b"), "TIMESTAMP"))
_VARCHAR = re.compile(r"\bVARCHAR\b(?!\s*\()")
_QUOTED_IDENTIFIER = re.compile(r'"([A-Za-z_][A-Za-z0-9_]*)"')
_TEMP_TABLE = re.compile(r"\bCREATE TEMP TABLE (\w+) AS\b")
_TEMP_VIEW = re.compile(r"\bCREATE TEMP VIEW (\w+) AS\b")
_SUBSCRIPT = re.compile(r"(\b[A-Za-z_][\w.]*)\[(\d+)\]")
_EPOCH = re.compile(r"CAST\(EXTRACT\(EPOCH FROM ([\w.]+)\) AS BIGINT\)")
_DECIMAL_LITERAL = re.compile(r"(?<![\w.'])(\d+\.\d+)(?![\w.'])")
_OFFSET_0 = re.compile(r"\n\s*OFFSET 0\b[^\n]*")
_EPOCH_DAY = " - DATE '1970-01-01'"


def spark_sql(sql: str) -> str:
    """`sql`, written in the SQL DuckDB and Postgres share, as Spark SQL (the module docstring lists the rewrites)."""
    sql = _TEMP_TABLE.sub(r"CACHE TABLE \1 AS", sql)
    sql = _TEMP_VIEW.sub(r"CREATE OR REPLACE TEMPORARY VIEW \1 AS", sql)
    for pattern, replacement in _TYPES:
        sql = pattern.sub(replacement, sql)
    sql = _VARCHAR.sub("STRING", sql)
    sql = _QUOTED_IDENTIFIER.sub(r"`\1`", sql)
    sql = _replace_brackets(sql, "ARRAY[", "array(", ")")
    sql = _SUBSCRIPT.sub(r"element_at(\1, \2)", sql)
    sql = _replace_brackets(sql, "generate_series(", "explode(sequence(", "))")
    sql = _epoch_days(sql)
    sql = _EPOCH.sub(r"CAST(round(unix_micros(\1) / 1000000D) AS BIGINT)", sql)
    sql = _DECIMAL_LITERAL.sub(r"\1D", _OFFSET_0.sub("", sql))
    return sql


def _closing(sql: str, start: int, opening: str, closing: str) -> int:
    """The index of the bracket closing the one at `start - 1` (ValueError when unbalanced)."""
    depth = 1
    for i in range(start, len(sql)):
        if sql[i] == opening:
            depth += 1
        elif sql[i] == closing:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced {opening!r} in the catalog's SQL: {sql[max(0, start - 40) : start + 40]!r}")


def _replace_brackets(sql: str, head: str, new_head: str, new_tail: str) -> str:
    """Replace every `head ... <its closing bracket>` by `new_head ... new_tail`."""
    opening = head[-1]
    closing = {"(": ")", "[": "]"}[opening]
    out, pos = [], 0
    while (found := sql.find(head, pos)) >= 0:
        end = _closing(sql, found + len(head), opening, closing)
        inner = _replace_brackets(sql[found + len(head) : end], head, new_head, new_tail)
        out += [sql[pos:found], new_head, inner, new_tail]
        pos = end + 1
    return "".join(out) + sql[pos:]


def _epoch_days(sql: str) -> str:
    """`x - DATE '1970-01-01'` -> `CAST(datediff(x, DATE '1970-01-01') AS BIGINT)`; `x` a dotted name
    or a parenthesized call such as `CAST(day AS DATE)`."""
    while (found := sql.find(_EPOCH_DAY)) >= 0:
        start = found
        if sql[found - 1] == ")":
            depth = 0
            for start in range(found - 1, -1, -1):
                depth += {")": 1, "(": -1}.get(sql[start], 0)
                if depth == 0:
                    break
            while start > 0 and (sql[start - 1].isalnum() or sql[start - 1] == "_"):
                start -= 1
        else:
            while start > 0 and (sql[start - 1].isalnum() or sql[start - 1] in "_."):
                start -= 1
        operand = sql[start:found]
        sql = sql[:start] + f"CAST(datediff({operand}, DATE '1970-01-01') AS BIGINT)" + sql[found + len(_EPOCH_DAY) :]
    return sql
