"""util.spark_sql: each rewrite of the shared SQL into Spark SQL, and the catalog's spark Dialect using it.

Whether Spark runs the result and computes what DuckDB does is tests/integration/test_spark_profile.py."""

from __future__ import annotations

import re

import pytest

from healthmate_features.errors import ConfigError
from healthmate_features.features.build import feature_build
from healthmate_features.features.catalog import DIALECTS, FEATURE_TABLES, PREPARE_SQL
from healthmate_features.features.incremental import build_version
from healthmate_features.util.spark_sql import spark_sql


@pytest.mark.parametrize(
    ("shared", "spark"),
    [
        ("CREATE TEMP TABLE hm_x AS\nSELECT 1", "CACHE TABLE hm_x AS\nSELECT 1"),
        ("CREATE TEMP VIEW hm_v AS SELECT 1", "CREATE OR REPLACE TEMPORARY VIEW hm_v AS SELECT 1"),
        ("CAST(x AS DOUBLE PRECISION), CAST(t AS TIMESTAMPTZ)", "CAST(x AS DOUBLE), CAST(t AS TIMESTAMP)"),
        ("CAST(s AS VARCHAR)", "CAST(s AS STRING)"),
        ('SELECT e."at" FROM e', "SELECT e.`at` FROM e"),
        ("lag(ARRAY[a, coalesce(b, 0)], 7)", "lag(array(a, coalesce(b, 0)), 7)"),
        ("coalesce(back_x_7[2], 0)", "coalesce(element_at(back_x_7, 2), 0)"),
        (
            "CROSS JOIN LATERAL generate_series(CAST(a AS TIMESTAMP), b, INTERVAL '1 day') AS g(day)",
            "CROSS JOIN LATERAL explode(sequence(CAST(a AS TIMESTAMP), b, INTERVAL '1 day')) AS g(day)",
        ),
        (
            "SELECT CAST(g.day AS DATE) - DATE '1970-01-01' AS n, act.day - DATE '1970-01-01' AS m",
            "SELECT CAST(datediff(CAST(g.day AS DATE), DATE '1970-01-01') AS BIGINT) AS n, "
            "CAST(datediff(act.day, DATE '1970-01-01') AS BIGINT) AS m",
        ),
        (
            "CAST(EXTRACT(EPOCH FROM u.signup_at) AS BIGINT)",
            "CAST(round(unix_micros(u.signup_at) / 1000000D) AS BIGINT)",
        ),
        ("100.0 * (0.4 * n / 7.0) + 1", "100.0D * (0.4D * n / 7.0D) + 1"),
        ("SELECT 1 FROM b\n    OFFSET 0  -- a fence\n) AS s", "SELECT 1 FROM b\n) AS s"),
    ],
)
def test_each_rewrite(shared, spark):
    assert spark_sql(shared) == spark


def test_literals_and_names_that_only_look_alike_are_left_alone():
    sql = "SELECT 'a.5' AS s, DECIMAL(38, 9), x1.5y, \"1x\" FROM DATE_TRUNC"
    assert spark_sql("CAST('1970-01-01' AS DATE), col_2[i]") == "CAST('1970-01-01' AS DATE), col_2[i]"
    assert "'a.5'" in spark_sql(sql) and "DECIMAL(38, 9)" in spark_sql(sql)


def test_unbalanced_brackets_name_the_place():
    with pytest.raises(ValueError, match="unbalanced"):
        spark_sql("SELECT ARRAY[1, 2 FROM t")


def test_the_spark_build_is_the_catalog_translated_and_nothing_of_the_shared_dialect_is_left():
    build = feature_build("spark")
    statements = [*build.fingerprint_sql, *build.full_sql, *build.prepare_sql, *build.tables.values()]
    text = "\n".join(statements)
    for leftover in ("TEMP TABLE", "DOUBLE PRECISION", "TIMESTAMPTZ", "ARRAY[", "generate_series", "EPOCH", '"at"'):
        assert leftover not in text, leftover
    assert not re.search(r"\bOFFSET 0\b", text)
    assert build.setup_sql == DIALECTS["spark"].setup_sql
    # DuckDB and Postgres run the shared SQL as written
    for name in ("duckdb", "postgres"):
        shared = feature_build(name)
        assert shared.prepare_sql == PREPARE_SQL and shared.setup_sql == ()
        assert shared.tables == {t.name: t.typed_sql() for t in FEATURE_TABLES.values()}
    assert len({build_version(d) for d in DIALECTS.values()}) == len(DIALECTS)


def test_a_spark_connect_master_without_its_client_is_a_clear_error(tmp_path):
    """The spark extra has no Spark Connect client (PySpark's `connect` extra): sc:// says how to get it."""
    pytest.importorskip(
        "pyspark", reason="PySpark is not installed; install the spark extra: pip install -e '.[spark]'"
    )
    from healthmate_features.backends.spark_session import require_spark_connect

    try:
        from pyspark.sql.connect.utils import check_dependencies

        check_dependencies()
    except ImportError:
        with pytest.raises(ConfigError, match=r"'sc://host:15002' is Spark Connect.*pyspark\[connect\]"):
            require_spark_connect("sc://host:15002")
    else:
        require_spark_connect("sc://host:15002")  # installed: nothing to say
