"""Incremental feature builds: which rows changed raw data can alter, found and rebuilt in SQL.

Every build fingerprints the raw tables (or loads the fingerprints the ingest made with the same
SQL: features.build.keep_raw_fingerprints): per user and day, the number of readings (events) and
a 64-bit sum of their row hashes; per user, a hash of the user's row; and the span of days of
all data (`hm_grid`). The fingerprints of the last build are its state, kept next to the feature
tables. The next build compares the two in one aggregate over both and rebuilds only what the
differences reach, per user (`hm_dirty`):

- readings changed on days r_lo..r_hi (new, late, edited or deleted rows alike; widened when the
  user's first or last reading day moved): the daily rows of r_lo..r_hi + 1, the rolling rows
  whose 30-day window reaches a changed day (r_lo..r_hi + 30), the weeks and months holding a
  changed day, and the profile snapshots from r_lo on (the latest weight is carried forward);
- events changed from day e_lo on: the engagement rows from e_lo on (days since the last
  activity runs over all earlier days);
- the data now ends later (a new day for anyone): every user's rows from the first new day on
  (the day grid grows for everyone: new engagement days, rolling tails, completed weeks and months);
- a user's row changed, appeared or went: all of that user's rows.

A build starts over from scratch (`--full` forces it) when there is no state, the catalog's SQL
changed since, or the data now starts on another day or ends earlier. The rows kept and the
rows rebuilt are computed by the same SQL as a full build, over each changed user's days from 31
days before the first change (enough for every window, week and month), with the two values
that reach further back carried in (`hm_carry`: last active day, latest weight); sums are exact
(features.catalog), so the result equals a full build bit for bit.
"""

from __future__ import annotations

import hashlib

from healthmate_features.backends.base import USER_STATE_TABLES
from healthmate_features.features.catalog import (
    ACTIVE_SQL,
    FEATURE_TABLES,
    LONGEST_WINDOW_DAYS,
    PREPARE_SQL,
    Dialect,
    exact_avg,
)
from healthmate_features.raw.schemas import RAW_TABLES

# Scratch tables a build leaves as the next build's state, by state name (those of
# USER_STATE_TABLES hold per-user rows, which erasure deletes).
STATE_TABLES = {"readings": "hm_fp_readings", "events": "hm_fp_events", "users": "hm_fp_users", "grid": "hm_grid"}
assert set(USER_STATE_TABLES) < set(STATE_TABLES)
# What the catalog's SQL reads instead of the raw tables in an incremental build: the changed
# users' rows from their first day needed on.
INCREMENTAL_SOURCES = {"users": "hm_in_users", "readings": "hm_in_readings", "events": "hm_in_events"}
CONTEXT_DAYS = LONGEST_WINDOW_DAYS + 1  # a month starts at most 30 days before a day in it


def _hash_parts(dialect: Dialect, table: str) -> tuple[str, str]:
    """Two 32-bit halves of each row's hash, summed per group into the fingerprint."""
    h = dialect.row_hash([f"t.{c}" for c in RAW_TABLES[table].column_names])
    return f"CAST(sum(({h}) >> 32) AS BIGINT)", f"CAST(sum(({h}) & 4294967295) AS BIGINT)"


def fingerprint_sql(dialect: Dialect) -> tuple[str, ...]:
    """Statements creating the fingerprints of the raw tables `{readings}`, `{events}`, `{users}` and `hm_grid`."""
    r1, r2 = _hash_parts(dialect, "health_readings")
    e1, e2 = _hash_parts(dialect, "app_events")
    u1, u2 = _hash_parts(dialect, "users")
    weight = exact_avg("t.value", "t.metric = 'weight'")
    return (
        f"""
CREATE TEMP TABLE hm_fp_readings AS
SELECT t.user_id, CAST(t.recorded_at AS DATE) AS day, count(*) AS n, {r1} AS h1, {r2} AS h2,
    {weight} AS weight_mean
FROM {{readings}} t
GROUP BY t.user_id, CAST(t.recorded_at AS DATE)
""",
        f"""
CREATE TEMP TABLE hm_fp_events AS
SELECT t.user_id, CAST(t."at" AS DATE) AS day, count(*) AS n, {e1} AS h1, {e2} AS h2,
    {ACTIVE_SQL.replace("e.", "t.")} AS active
FROM {{events}} t
GROUP BY t.user_id, CAST(t."at" AS DATE)
""",
        f"""
CREATE TEMP TABLE hm_fp_users AS
SELECT t.user_id, count(*) AS n, {u1} AS h1, {u2} AS h2
FROM {{users}} t
GROUP BY t.user_id
""",
        GRID_SQL,
    )


# The span of all data, from the fingerprints (the last statement of fingerprint_sql; alone, after
# fingerprints kept from the ingest are loaded).
GRID_SQL = """
CREATE TEMP TABLE hm_grid AS
SELECT least((SELECT min(day) FROM hm_fp_readings), (SELECT min(day) FROM hm_fp_events)) AS first_day,
    greatest((SELECT max(day) FROM hm_fp_readings), (SELECT max(day) FROM hm_fp_events)) AS last_day
"""


# A full build: no user is restricted, nothing carried.
FULL_SQL = (
    """
CREATE TEMP TABLE hm_carry AS
SELECT CAST(NULL AS BIGINT) AS user_id, CAST(NULL AS DATE) AS ctx,
    CAST(NULL AS BIGINT) AS last_active_before, CAST(NULL AS DOUBLE PRECISION) AS weight_before
WHERE 1 = 0
""",
)

# True when the last build's state cannot be built on: the data starts on another day, or ends earlier.
NEEDS_FULL_SQL = """
SELECT count(*) FROM hm_grid g, {prev_grid} p
WHERE g.first_day IS DISTINCT FROM p.first_day OR g.last_day < p.last_day OR g.last_day IS NULL
"""


def _compared(current: str, previous: str) -> str:
    """Per user whose fingerprints differ between two fingerprint tables: the first (`lo`) and last
    (`hi`) day that differs, and the first and last day of data now and before.

    One pass over both tables (the rows of both, grouped by user and day, then by user): a
    (user_id, day) differs when it is in one table only or its count or hash differs."""
    return f"""
    SELECT user_id,
        min(day) FILTER (WHERE changed) AS lo, max(day) FILTER (WHERE changed) AS hi,
        min(day) FILTER (WHERE in_now) AS first_now, max(day) FILTER (WHERE in_now) AS last_now,
        min(day) FILTER (WHERE in_before) AS first_before, max(day) FILTER (WHERE in_before) AS last_before
    FROM (
        SELECT user_id, day, max(side) = 1 AS in_now, min(side) = 0 AS in_before,
            count(*) = 1 OR min(n) <> max(n) OR min(h1) <> max(h1) OR min(h2) <> max(h2) AS changed
        FROM (
            SELECT user_id, day, n, h1, h2, 1 AS side FROM {current}
            UNION ALL
            SELECT user_id, day, n, h1, h2, 0 AS side FROM {previous}
        ) AS both_sides
        GROUP BY user_id, day
    ) AS per_day
    GROUP BY user_id
    HAVING count(*) FILTER (WHERE changed) > 0"""


INCREMENTAL_SQL = (
    f"""
CREATE TEMP TABLE hm_dirty AS
WITH r_cmp AS ({_compared("hm_fp_readings", "{prev_readings}")}
), e_changed AS ({_compared("hm_fp_events", "{prev_events}")}
), r AS (
    -- a moved first (last) reading day moves where the user's daily and rolling rows start (end)
    SELECT c.user_id,
        least(
            c.lo,
            CASE WHEN c.first_now IS DISTINCT FROM c.first_before THEN least(c.first_now, c.first_before) END,
            CASE WHEN c.last_now IS DISTINCT FROM c.last_before THEN least(c.last_now, c.last_before) + 1 END
        ) AS lo,
        greatest(
            c.hi,
            CASE WHEN c.first_now IS DISTINCT FROM c.first_before THEN greatest(c.first_now, c.first_before) END,
            CASE WHEN c.last_now IS DISTINCT FROM c.last_before THEN greatest(c.last_now, c.last_before) END
        ) AS hi
    FROM r_cmp c
), users_changed AS (
    SELECT coalesce(c.user_id, p.user_id) AS user_id
    FROM hm_fp_users c FULL OUTER JOIN {{prev_users}} p ON p.user_id = c.user_id
    WHERE c.n IS DISTINCT FROM p.n OR c.h1 IS DISTINCT FROM p.h1 OR c.h2 IS DISTINCT FROM p.h2
), grown AS (
    SELECT p.last_day + 1 AS lo, g.last_day AS hi FROM hm_grid g, {{prev_grid}} p WHERE g.last_day > p.last_day
), ids AS (
    SELECT user_id FROM r_cmp
    UNION SELECT user_id FROM e_changed
    UNION SELECT user_id FROM users_changed
    UNION SELECT user_id FROM hm_fp_users WHERE EXISTS (SELECT 1 FROM grown)
)
SELECT i.user_id, uc.user_id IS NOT NULL AS whole,
    least(r.lo, g.lo) AS r_lo, greatest(r.hi, g.hi) AS r_hi, least(e.lo, g.lo) AS e_lo
FROM ids i
LEFT JOIN r ON r.user_id = i.user_id
LEFT JOIN e_changed e ON e.user_id = i.user_id
LEFT JOIN users_changed uc ON uc.user_id = i.user_id
LEFT JOIN grown g ON TRUE
""",
    f"""
CREATE TEMP TABLE hm_carry AS
WITH c AS (
    SELECT user_id, CASE WHEN NOT whole THEN least(r_lo, e_lo) - {CONTEXT_DAYS} END AS ctx FROM hm_dirty
), act AS (
    SELECT c.user_id, max(f.day) AS day
    FROM c JOIN hm_fp_events f ON f.user_id = c.user_id AND f.day < c.ctx AND f.active = 1
    GROUP BY c.user_id
), wt AS (
    SELECT c.user_id, max(f.day) AS day
    FROM c JOIN hm_fp_readings f ON f.user_id = c.user_id AND f.day < c.ctx AND f.weight_mean IS NOT NULL
    GROUP BY c.user_id
)
SELECT c.user_id, c.ctx, act.day - DATE '1970-01-01' AS last_active_before, f.weight_mean AS weight_before
FROM c
LEFT JOIN act ON act.user_id = c.user_id
LEFT JOIN wt ON wt.user_id = c.user_id
LEFT JOIN hm_fp_readings f ON f.user_id = wt.user_id AND f.day = wt.day
""",
    """
CREATE TEMP VIEW hm_in_users AS
SELECT t.* FROM {users} t WHERE t.user_id IN (SELECT user_id FROM hm_carry)
""",
    """
CREATE TEMP VIEW hm_in_readings AS
SELECT t.* FROM {readings} t JOIN hm_carry c ON c.user_id = t.user_id
WHERE c.ctx IS NULL OR CAST(t.recorded_at AS DATE) >= c.ctx
""",
    """
CREATE TEMP VIEW hm_in_events AS
SELECT t.* FROM {events} t JOIN hm_carry c ON c.user_id = t.user_id
WHERE c.ctx IS NULL OR CAST(t."at" AS DATE) >= c.ctx
""",
)


def affected_rows(table: str) -> str:
    """The condition on a row `x` of `table` joined to its user's `d` (hm_dirty) that the build rebuilds it."""
    return f"(d.whole OR ({FEATURE_TABLES[table].affected}))"


def build_version(dialect: Dialect) -> str:
    """A hash of every statement a build runs: a build only continues state made by the same SQL."""
    parts = [
        dialect.name,
        *fingerprint_sql(dialect),
        *FULL_SQL,
        *INCREMENTAL_SQL,
        *PREPARE_SQL,
        *(t.typed_sql() + t.affected for t in FEATURE_TABLES.values()),
    ]
    return hashlib.sha256("\n;\n".join(dialect.translate(p) for p in parts).encode()).hexdigest()[:16]
