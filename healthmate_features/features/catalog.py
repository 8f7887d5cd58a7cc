"""The feature catalog: every feature's name, type, unit, description and the SQL that computes it.

The name of a feature is the column its SQL produces, and its description here becomes the
Feast `Field.description` (feature_repo/ builds its schemas from this catalog), so a feature
is documented in exactly one place.

The SQL is written once for every engine (DuckDB locally, Postgres in production, Spark SQL on the
spark profile): standard window functions over a dense user x day grid, `FILTER` aggregates, and
no engine-specific functions; what Spark spells differently is rewritten in one place
(util.spark_sql, the `spark` Dialect). Source tables are referred to by the placeholders `{users}`,
`{readings}` and `{events}`; the engine runner substitutes its table names.

Timing rule: a row's `event_timestamp` is the moment its values become known: the end of its
day (midnight UTC that starts the next day), week or month. Rolling windows end at that row's
day and use only that day and the days before it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from healthmate_features.raw.schemas import CONDITIONS, METRICS
from healthmate_features.util import spark_sql

WINDOWS = (7, 30)  # rolling window lengths in days
LONGEST_WINDOW_DAYS = max(WINDOWS)


@dataclass(frozen=True)
class Feature:
    """One feature column: its Feast type, description and unit."""

    name: str
    dtype: str  # Feast type name: Float64, Int64 or String
    description: str
    unit: str = ""
    pii: bool = False


@dataclass(frozen=True)
class FeatureTable:
    """A feature table: the Parquet file / Postgres table one Feast source reads."""

    name: str
    description: str
    ttl_days: int
    sql: str
    features: tuple[Feature, ...] = field(default_factory=tuple)
    window_days: int = 1  # how far back in time its longest feature looks (for split embargoes)
    # Which rows of a user a change of raw data can alter (features.incremental): a condition on
    # the row `x` (user_id, event_timestamp) and the user's changed days `d` (hm_dirty: r_lo..r_hi
    # readings, e_lo.. events; dates). Rows outside it are kept from the last build.
    affected: str = "TRUE"

    def typed_sql(self) -> str:
        """The table's query with every feature cast to its declared type (user_id, event_timestamp first)."""
        cols = ", ".join(f"CAST({f.name} AS {_SQL_TYPE[f.dtype]}) AS {f.name}" for f in self.features)
        return f"SELECT user_id, event_timestamp, {cols}\nFROM ({self.sql}) AS {self.name}_t"


_SQL_TYPE = {"Float64": "DOUBLE PRECISION", "Int64": "BIGINT", "String": "VARCHAR"}

# Sums of measured values run in exact decimal arithmetic (9 decimals), then become doubles:
# an exact sum does not depend on the order its terms are added in, so a table rebuilt for a
# few days (features.incremental) equals a full build bit for bit, in any engine and any
# number of threads. Window means, variances and slopes come from exact window sums of x, x^2,
# t and t*x (no cancellation: the subtractions are exact too).
EXACT = "DECIMAL(38, 9)"


def exact(expr: str) -> str:
    """`expr` (a double) as an exact decimal."""
    return f"CAST({expr} AS {EXACT})"


def to_double(expr: str) -> str:
    return f"CAST({expr} AS DOUBLE PRECISION)"


def exact_avg(expr: str, filter_sql: str = "") -> str:
    """The mean of `expr` from its exact sum: the same bits whatever order the rows come in."""
    f = f" FILTER (WHERE {filter_sql})" if filter_sql else ""
    return f"{to_double(f'sum({exact(expr)}){f}')} / nullif(count({expr}){f}, 0)"


def exact_sum(expr: str, filter_sql: str = "") -> str:
    f = f" FILTER (WHERE {filter_sql})" if filter_sql else ""
    return to_double(f"sum({exact(expr)}){f}")


def _shared(sql: str) -> str:
    return sql


@dataclass(frozen=True)
class Dialect:
    """What differs between the engines running the catalog's SQL; everything else is shared.

    `translate` turns a statement of the shared SQL into the engine's (the identity for DuckDB and
    Postgres, which run it as written); `setup_sql` are statements the engine runs before a build."""

    name: str
    row_hash_template: str  # one 64-bit hash of a row's columns; {columns}: a comma-separated list
    translate: Callable[[str], str] = _shared
    setup_sql: tuple[str, ...] = ()

    def row_hash(self, columns: list[str]) -> str:
        return self.row_hash_template.format(columns=", ".join(columns))


DIALECTS = {
    "duckdb": Dialect("duckdb", "CAST(hash({columns}) AS UBIGINT)"),
    # each column hashed by its type's own hash function: no text conversion of every row
    "postgres": Dialect("postgres", "hash_record_extended(ROW({columns}), 0)"),
    # Spark SQL (the spark profile): util.spark_sql rewrites what Spark spells differently
    "spark": Dialect("spark", "xxhash64({columns})", spark_sql.spark_sql, spark_sql.SETUP_SQL),
}


def _daily_value(metric) -> str:
    """The column holding a metric's value for the day (the total for steps, else the mean)."""
    return f"{metric.name}_total" if metric.name == "steps" else f"{metric.name}_mean"


def _daily_aggregates(metric) -> list[tuple[str, str, str, str, str]]:
    """(column, sql, dtype, description, unit) of one metric's per-day aggregates."""
    m, u, d = metric.name, metric.unit, metric.description
    cond = f"r.metric = '{m}'"
    if m == "steps":
        return [
            (f"{m}_total", exact_sum("r.value", cond), "Float64", f"total {d} that day", u),
            (
                f"{m}_count",
                f"count(r.value) FILTER (WHERE {cond})",
                "Int64",
                f"number of {m} readings that day",
                "count",
            ),
        ]
    return [
        (f"{m}_mean", exact_avg("r.value", cond), "Float64", f"mean {d} that day", u),
        (f"{m}_min", f"min(r.value) FILTER (WHERE {cond})", "Float64", f"lowest {d} that day", u),
        (f"{m}_max", f"max(r.value) FILTER (WHERE {cond})", "Float64", f"highest {d} that day", u),
        (f"{m}_count", f"count(r.value) FILTER (WHERE {cond})", "Int64", f"number of {m} readings that day", "count"),
    ]


# --- shared building blocks -------------------------------------------------------------

# A dense grid: one row per user per day from the signup day (or the first day of data, if
# later) to the last day of data. `hm_grid` (first_day, last_day) is the span of all raw data
# (features.incremental makes it); `hm_carry` restricts users to days from `ctx` on and carries
# what the days before `ctx` leave to later rows (empty in a full build: every column null).
USER_DAY_SQL = """
CREATE TEMP TABLE hm_user_day AS
SELECT u.user_id, CAST(g.day AS DATE) AS day, CAST(g.day AS DATE) - DATE '1970-01-01' AS day_number,
    c.last_active_before, c.weight_before
FROM {users} u
CROSS JOIN hm_grid span
LEFT JOIN hm_carry c ON c.user_id = u.user_id
CROSS JOIN LATERAL generate_series(
    CAST(greatest(CAST(u.signup_at AS DATE), span.first_day, c.ctx) AS TIMESTAMP),
    CAST(span.last_day AS TIMESTAMP),
    INTERVAL '1 day'
) AS g(day)
"""

_END_OF_DAY = "CAST(CAST(d.day AS TIMESTAMP) + INTERVAL '1 day' AS TIMESTAMPTZ)"


def _midnight(day: str) -> str:
    """The instant day `day` (a DATE expression) starts, as the feature tables stamp it."""
    return f"CAST(CAST({day} AS TIMESTAMP) AS TIMESTAMPTZ)"


def _stamped_days(lo: str, hi: str) -> str:
    """Rows stamped at the end of a day from `lo` to `hi` (DATE expressions)."""
    return f"x.event_timestamp BETWEEN {_midnight(f'{lo} + 1')} AND {_midnight(f'{hi} + 1')}"


def _health_daily_aggregates() -> list[tuple[str, str, str, str, str]]:
    return [a for m in METRICS for a in _daily_aggregates(m)]


def _health_daily_prepare_sql() -> str:
    """Materializes the dense daily table `hm_health_daily` that the other health tables read."""
    aggs = _health_daily_aggregates()
    select = ",\n    ".join(f"{sql} AS {col}" for col, sql, *_ in aggs)
    coalesced = ",\n    ".join(
        (f"coalesce(a.{col}, 0) AS {col}" if dtype == "Int64" else f"a.{col}") for col, _, dtype, *_ in aggs
    )
    sql = f"""
CREATE TEMP TABLE hm_health_daily AS
WITH agg AS (
    SELECT r.user_id, CAST(r.recorded_at AS DATE) AS day,
    {select}
    FROM {{readings}} r
    GROUP BY r.user_id, CAST(r.recorded_at AS DATE)
), span AS (
    SELECT user_id, min(day) AS first_reading_day, max(day) AS last_reading_day FROM hm_fp_readings GROUP BY user_id
)
SELECT d.user_id, d.day, d.day_number, {_END_OF_DAY} AS event_timestamp,
    s.first_reading_day, s.last_reading_day, d.weight_before,
    {coalesced}
FROM hm_user_day d
LEFT JOIN agg a ON a.user_id = d.user_id AND a.day = d.day
LEFT JOIN span s ON s.user_id = d.user_id
"""
    return sql


def _health_daily() -> FeatureTable:
    features = tuple(Feature(col, dtype, desc, unit) for col, _, dtype, desc, unit in _health_daily_aggregates())
    # Rows stop the day after a user's last reading: later rows would be all null, and the view's
    # 2-day TTL returns null for them just the same.
    sql = (
        f"SELECT user_id, event_timestamp, {', '.join(f.name for f in features)} FROM hm_health_daily "
        "WHERE day BETWEEN first_reading_day AND last_reading_day + 1"
    )
    # a changed day changes its own row; a changed first or last reading day moves the rows'
    # span, which hm_dirty widens r_lo..r_hi to cover (the day after the last is a row too)
    return FeatureTable(
        "health_daily",
        "per user per day aggregates of each health metric",
        2,
        sql,
        features,
        1,
        affected=_stamped_days("d.r_lo", "d.r_hi + 1"),
    )


def _rolling_stats(value: str, days: int, metric) -> list[tuple[str, str, str, str, str]]:
    """(column, sql, dtype, description, unit) of one metric's rolling statistics over `days` days.

    The SQL reads the window sums `_health_rolling` makes from the running sums: n (days with a
    value), sx, sxx (exact sums of x and x^2), st, stt, stx (of the day number t, t^2 and t*x), and
    the window's lo and hi."""
    m, u = metric.name, metric.unit
    span = f"over the {days} days ending that day"

    def c(part: str) -> str:
        return f"{value}_{part}_{days}"

    n, sx, sxx, st, stt, stx = (c(p) for p in ("n", "sx", "sxx", "st", "stt", "stx"))
    variance = f"{to_double(f'{n} * {sxx} - {sx} * {sx}')} / ({n} * ({n} - 1))"
    slope = f"{to_double(f'{n} * {stx} - {st} * {sx}')} / {to_double(f'{n} * {stt} - {st} * {st}')}"
    return [
        (
            f"{m}_mean_{days}d",
            f"{to_double(sx)} / nullif({n}, 0)",
            "Float64",
            f"mean daily {metric.description} {span}",
            u,
        ),
        (
            f"{m}_std_{days}d",
            f"CASE WHEN {n} >= 2 THEN sqrt({variance}) END",
            "Float64",
            f"standard deviation of daily {metric.description} {span}",
            u,
        ),
        (f"{m}_min_{days}d", c("lo"), "Float64", f"lowest daily {metric.description} {span}", u),
        (f"{m}_max_{days}d", c("hi"), "Float64", f"highest daily {metric.description} {span}", u),
        (
            f"{m}_slope_{days}d",
            f"CASE WHEN {n} >= 2 THEN {slope} END",
            "Float64",
            f"least-squares trend of daily {metric.description} {span} (needs 2+ days)",
            f"{u}/day",
        ),
    ]


def _window_clause() -> str:
    return ", ".join(
        f"w{n} AS (PARTITION BY user_id ORDER BY day ROWS BETWEEN {n - 1} PRECEDING AND CURRENT ROW)" for n in WINDOWS
    )


# The running sums a metric's rolling statistics come from, by the type they are kept in: counts
# and sums of day numbers are integers, sums of x and t*x exact with 9 decimals, of x^2 with 18.
RUNNING_SUMS = {"int": ("n", "st", "stt"), "x": ("sx", "stx"), "xx": ("sxx",)}


def _running_sums(value: str) -> list[str]:
    """One metric's running (prefix) sums over a user's days up to each day, exact (window `c`)."""
    x, t = f"{value}_x", f"CASE WHEN {value} IS NOT NULL THEN day_number END"
    sums = {
        "n": f"count({value})",
        "sx": f"sum({x})",
        "sxx": f"sum({x} * {x})",
        "st": f"sum({t})",
        "stt": f"sum({t} * {t})",
        "stx": f"sum(day_number * {x})",
    }
    return [f"{sql} OVER c AS {value}_{part}" for part, sql in sums.items()]


def _health_rolling() -> FeatureTable:
    keyed = [m for m in METRICS if m.key]
    values = [_daily_value(m) for m in keyed]
    stats = [s for m in keyed for n in WINDOWS for s in _rolling_stats(_daily_value(m), n, m)]
    select = ",\n    ".join(f"{sql} AS {col}" for col, sql, *_ in stats)
    running = ",\n            ".join(s for v in values for s in _running_sums(v))
    # Extremes over the shortest window from its frame; over a longer one, the least (greatest)
    # of the shortest window's extremes that many days back and of the single days left over:
    # 30 days = 7-day frames ending 0, 7, 14 and 21 days back and the days 28 and 29 back.
    short = min(WINDOWS)
    extremes = ",\n            ".join(
        f"{agg}({v}) OVER w{short} AS {v}_{part}_{short}"
        for v in values
        for agg, part in (("min", "lo"), ("max", "hi"))
    )
    block_back = sorted({o for n in WINDOWS for o in range(short, n - short + 1, short)})
    day_back = sorted({o for n in WINDOWS if n > short for o in range(n // short * short, n)})
    short_extremes = [f"{v}_{part}_{short}" for part in ("lo", "hi") for v in values]
    longer_extremes = []
    for n in WINDOWS:
        if n == short:
            continue
        for k, (fn, part) in enumerate((("least", "lo"), ("greatest", "hi"))):
            for i, v in enumerate(values, start=1):
                parts = [f"{v}_{part}_{short}"]
                parts += [f"ext_back_{o}[{k * len(values) + i}]" for o in block_back if o <= n - short]
                parts += [f"day_back_{o}[{i}]" for o in day_back if o < n]
                longer_extremes.append(f"{fn}({', '.join(parts)}) AS {v}_{part}_{n}")
    exacts = ", ".join(f"{exact(v)} AS {v}_x" for v in values)
    # The running sums of the day `n` days back, one array per type (one window function call
    # each instead of one per sum): the sums over the `n` days ending that day are the running
    # sums minus these (none back there: zero).
    arrays = {kind: [f"{v}_{part}" for v in values for part in parts] for kind, parts in RUNNING_SUMS.items()}
    lagged = ",\n        ".join(
        [
            f"lag(ARRAY[{', '.join(cols)}], {n}) OVER w AS back_{kind}_{n}"
            for kind, cols in arrays.items()
            for n in WINDOWS
        ]
        + [f"lag(ARRAY[{', '.join(short_extremes)}], {o}) OVER w AS ext_back_{o}" for o in block_back]
        + [f"lag(ARRAY[{', '.join(values)}], {o}) OVER w AS day_back_{o}" for o in day_back]
    )
    window_sums = ",\n        ".join(
        f"{col} - coalesce(back_{kind}_{n}[{i}], 0) AS {col}_{n}"
        for kind, cols in arrays.items()
        for i, col in enumerate(cols, start=1)
        for n in WINDOWS
    )
    lo_hi = ",\n        ".join(short_extremes + longer_extremes)
    sql = f"""
SELECT user_id, event_timestamp,
    {select}
FROM (
    SELECT user_id, event_timestamp, {lo_hi},
        {window_sums}
    FROM (
        SELECT r.*,
        {lagged}
        FROM (
            SELECT user_id, day, event_timestamp, {", ".join(values)},
            {running},
            {extremes}
            FROM (
                SELECT *, {exacts}
                FROM hm_health_daily
                WHERE day BETWEEN first_reading_day AND last_reading_day + {LONGEST_WINDOW_DAYS}
            ) AS h
            WINDOW c AS (PARTITION BY user_id ORDER BY day ROWS UNBOUNDED PRECEDING), {_window_clause()}
        ) AS r
        WINDOW w AS (PARTITION BY user_id ORDER BY day)
    ) AS b
    OFFSET 0
) AS s
"""
    # A user's rows span first reading .. last reading + the longest window: a contiguous run of
    # days, so the row `n` back is the day `n` back and ROWS frames are calendar windows. Beyond
    # it every statistic is null and the 2-day TTL returns null just the same: churned users stop
    # costing window work. Window sums are differences of running sums, exact like the sums
    # themselves, so a build that starts a user's days later (features.incremental) gets the same
    # bits wherever its windows lie inside those days. `OFFSET 0` keeps the window sums one
    # computed column each (an engine would otherwise inline them into every statistic using them).
    features = tuple(Feature(col, dtype, desc, unit) for col, _, dtype, desc, unit in stats)
    return FeatureTable(
        "health_rolling",
        "rolling 7-day and 30-day statistics of the key health metrics",
        2,
        sql,
        features,
        LONGEST_WINDOW_DAYS,
        affected=_stamped_days("d.r_lo", f"d.r_hi + {LONGEST_WINDOW_DAYS}"),
    )


def _health_period(period: str, days_label: str, ttl_days: int) -> FeatureTable:
    """Weekly or monthly aggregates from the daily table; only complete periods, stamped at their end."""
    cols: list[tuple[str, str, str, str, str]] = []
    for m in METRICS:
        v = _daily_value(m)
        what = "daily total" if m.name == "steps" else "daily mean"
        cols += [
            (
                f"{m.name}_mean_{days_label}",
                exact_avg(v),
                "Float64",
                f"mean {what} {m.description} over the {period}",
                m.unit,
            ),
            (
                f"{m.name}_min_{days_label}",
                f"min({v})",
                "Float64",
                f"lowest {what} {m.description} over the {period}",
                m.unit,
            ),
            (
                f"{m.name}_max_{days_label}",
                f"max({v})",
                "Float64",
                f"highest {what} {m.description} over the {period}",
                m.unit,
            ),
            (
                f"{m.name}_days_{days_label}",
                f"count({v})",
                "Int64",
                f"days with {m.name} readings in the {period}",
                "days",
            ),
        ]
    select = ",\n    ".join(f"{sql} AS {col}" for col, sql, *_ in cols)
    start = f"CAST(date_trunc('{period}', CAST(day AS TIMESTAMP)) AS TIMESTAMP)"
    sql = f"""
WITH p AS (
    SELECT user_id, {start} AS period_start,
        {start} + INTERVAL '1 {period}' AS period_end,
    {select}
    FROM hm_health_daily
    GROUP BY user_id, {start}
)
SELECT p.user_id, CAST(p.period_end AS TIMESTAMPTZ) AS event_timestamp,
    {", ".join(c[0] for c in cols)}
FROM p
WHERE p.period_end <= (SELECT CAST(max(day) AS TIMESTAMP) + INTERVAL '1 day' FROM hm_user_day)
"""
    features = tuple(Feature(col, dtype, desc, unit) for col, _, dtype, desc, unit in cols)
    return FeatureTable(
        f"health_{period}ly",
        f"per user per calendar {period} aggregates of each health metric (complete {period}s only)",
        ttl_days,
        sql,
        features,
        7 if period == "week" else 31,
        # the periods holding a changed day: ending after r_lo, at the latest where r_hi's ends
        affected=(
            f"x.event_timestamp > {_midnight('d.r_lo')} AND x.event_timestamp <= "
            f"CAST(date_trunc('{period}', CAST(d.r_hi AS TIMESTAMP)) + INTERVAL '1 {period}' AS TIMESTAMPTZ)"
        ),
    )


# 1 on a day with any user-initiated event (an aggregate over that day's events `e`).
ACTIVE_SQL = (
    "max(CASE WHEN e.event_type IN ('login', 'session', 'meal_logged', 'workout_logged', 'medication_logged', "
    "'notification_opened') THEN 1 ELSE 0 END)"
)

ENGAGEMENT_SCORE_FORMULA = (
    "100 * (0.4 * active_days_7d / 7 + 0.2 * min(sessions_7d / 14, 1) "
    "+ 0.2 * min(items_logged_7d / 21, 1) + 0.2 * coalesce(notification_open_rate_30d, 0)), "
    "where items_logged_7d = meals + workouts + medications logged in the last 7 days"
)


def _engagement() -> FeatureTable:
    counted = {
        "sessions": ("session", "sessions started that day"),
        "logins": ("login", "logins that day"),
        "meals_logged": ("meal_logged", "meals logged that day"),
        "workouts_logged": ("workout_logged", "workouts logged that day"),
        "medications_logged": ("medication_logged", "medications logged that day"),
        "notifications_sent": ("notification_sent", "notifications sent that day"),
        "notifications_opened": ("notification_opened", "notifications opened that day"),
    }
    daily = ",\n        ".join(
        f"count(*) FILTER (WHERE e.event_type = '{t}') AS {name}" for name, (t, _) in counted.items()
    )
    features: list[Feature] = [Feature(n, "Int64", d, "count") for n, (_, d) in counted.items()]
    features += [
        Feature("session_minutes", "Float64", "minutes spent in sessions that day", "min"),
        Feature("active", "Int64", "1 if the user did anything in the app that day"),
    ]
    # Window sums are differences of running sums (as in health_rolling): `(column, days)`.
    ints = {7: ["active", "sessions"], 30: ["active", "notifications_opened", "notifications_sent"]}
    for what in ("meals_logged", "workouts_logged", "medications_logged"):
        for n in WINDOWS:
            ints[n].append(what)
    arrays = {
        f"{kind}_{n}": [f"{c}_run" for c in cols]
        for kind, per_window in (("int", ints), ("x", {7: ["session_minutes"]}))
        for n, cols in per_window.items()
    }
    runs = sorted({c for cols in arrays.values() for c in cols})
    running = ",\n        ".join(
        f"sum({exact(c[: -len('_run')]) if c == 'session_minutes_run' else c[: -len('_run')]}) OVER c AS {c}"
        for c in runs
    )

    def window_sum(column: str, days: int) -> str:
        kind = "x" if column == "session_minutes" else "int"
        i = arrays[f"{kind}_{days}"].index(f"{column}_run") + 1
        diff = f"{column}_run - coalesce(back_{kind}_{days}[{i}], 0)"
        return to_double(diff) if kind == "x" else f"CAST({diff} AS BIGINT)"

    rolled = [
        ("active_days_7d", window_sum("active", 7), "Int64", "days active in the 7 days ending that day", "days"),
        ("active_days_30d", window_sum("active", 30), "Int64", "days active in the 30 days ending that day", "days"),
        ("sessions_7d", window_sum("sessions", 7), "Int64", "sessions in the 7 days ending that day", "count"),
        (
            "session_minutes_7d",
            window_sum("session_minutes", 7),
            "Float64",
            "session minutes in the 7 days ending that day",
            "min",
        ),
    ]
    for what in ("meals_logged", "workouts_logged", "medications_logged"):
        for n in WINDOWS:
            rolled.append(
                (
                    f"{what}_{n}d",
                    window_sum(what, n),
                    "Int64",
                    f"{what.replace('_', ' ')} in the {n} days ending that day",
                    "count",
                )
            )
    rolled += [
        (
            "notification_open_rate_30d",
            f"CAST({window_sum('notifications_opened', 30)} AS DOUBLE PRECISION)"
            f" / nullif({window_sum('notifications_sent', 30)}, 0)",
            "Float64",
            "notifications opened / sent in the 30 days ending that day (null when none sent)",
            "ratio",
        ),
        (
            "days_since_last_activity",
            "day_number - coalesce(last_active_day, last_active_before)",
            "Int64",
            "days since the last active day (0: active that day; null: never active)",
            "days",
        ),
    ]
    lagged = ",\n        ".join(
        f"lag(ARRAY[{', '.join(cols)}], {name.rsplit('_', 1)[1]}) OVER w AS back_{name}"
        for name, cols in arrays.items()
    )
    session_minutes = exact_sum("e.duration_minutes", "e.event_type = 'session'")
    rolled_sql = ",\n    ".join(f"{sql} AS {col}" for col, sql, *_ in rolled)
    features += [Feature(col, dtype, desc, unit) for col, _, dtype, desc, unit in rolled]
    features.append(
        Feature("engagement_score", "Float64", "engagement score 0-100: " + ENGAGEMENT_SCORE_FORMULA, "score")
    )
    sql = f"""
WITH ev AS (
    SELECT e.user_id, CAST(e."at" AS DATE) AS day,
        {daily},
        coalesce({session_minutes}, 0) AS session_minutes,
        {ACTIVE_SQL} AS active
    FROM {{events}} e
    GROUP BY e.user_id, CAST(e."at" AS DATE)
), daily AS (
    SELECT d.user_id, d.day, d.day_number, d.last_active_before, {_END_OF_DAY} AS event_timestamp,
        {", ".join(f"coalesce(ev.{n}, 0) AS {n}" for n in counted)},
        coalesce(ev.session_minutes, 0) AS session_minutes,
        coalesce(ev.active, 0) AS active
    FROM hm_user_day d
    LEFT JOIN ev ON ev.user_id = d.user_id AND ev.day = d.day
), running AS (
    SELECT daily.*,
        {running},
        max(CASE WHEN active = 1 THEN day_number END) OVER c AS last_active_day
    FROM daily
    WINDOW c AS (PARTITION BY user_id ORDER BY day ROWS UNBOUNDED PRECEDING)
), back AS (
    SELECT running.*,
        {lagged}
    FROM running
    WINDOW w AS (PARTITION BY user_id ORDER BY day)
), rolled AS (
    SELECT back.*,
    {rolled_sql}
    FROM back
    OFFSET 0  -- each window sum computed once, not again inside engagement_score
)
SELECT user_id, event_timestamp,
    {", ".join(f.name for f in features)}
FROM (
    SELECT rolled.*,
        100.0 * (0.4 * active_days_7d / 7.0
            + 0.2 * least(sessions_7d / 14.0, 1.0)
            + 0.2 * least((meals_logged_7d + workouts_logged_7d + medications_logged_7d) / 21.0, 1.0)
            + 0.2 * coalesce(notification_open_rate_30d, 0.0)) AS engagement_score
    FROM rolled
) scored
"""
    return FeatureTable(
        "engagement_daily",
        "per user per day app engagement, with 7/30-day windows",
        2,
        sql,
        tuple(features),
        LONGEST_WINDOW_DAYS,
        # days_since_last_activity runs from the first day on: every later row may change
        affected=f"x.event_timestamp >= {_midnight('d.e_lo + 1')}",
    )


def _profile() -> FeatureTable:
    flags = ",\n        ".join(
        f"CASE WHEN ';' || coalesce(u.conditions, '') || ';' LIKE '%;{c};%' THEN 1 ELSE 0 END AS has_{c}"
        for c in CONDITIONS
    )
    sql = f"""
WITH weight AS (
    SELECT user_id, day,
        coalesce(max(weight_mean) OVER (PARTITION BY user_id, weight_seen), weight_before) AS last_weight
    FROM (
        SELECT user_id, day, weight_mean, weight_before,
            count(weight_mean) OVER (PARTITION BY user_id ORDER BY day ROWS UNBOUNDED PRECEDING) AS weight_seen
        FROM hm_health_daily
    ) w
), snapshots AS (
    SELECT u.user_id, u.signup_at AS event_timestamp, CAST(NULL AS DOUBLE PRECISION) AS last_weight
    FROM {{users}} u
    UNION ALL
    SELECT w.user_id, CAST(CAST(w.day AS TIMESTAMP) + INTERVAL '1 day' AS TIMESTAMPTZ), w.last_weight
    FROM weight w
    WHERE EXTRACT(DAY FROM w.day + 1) = 1
)
SELECT s.user_id, s.event_timestamp,
        CAST(EXTRACT(YEAR FROM s.event_timestamp) - u.birth_year AS BIGINT) AS age_years,
        u.sex,
        u.height_cm,
        s.last_weight / ((u.height_cm / 100.0) * (u.height_cm / 100.0)) AS bmi,
        {flags},
        CAST(EXTRACT(EPOCH FROM u.signup_at) AS BIGINT) AS signup_epoch_s
FROM snapshots s
JOIN {{users}} u ON u.user_id = s.user_id
"""
    features = (
        Feature(
            "age_years",
            "Int64",
            "age in whole years at the snapshot (calendar year minus birth year)",
            "years",
            pii=True,
        ),
        Feature(
            "sex",
            "String",
            "self-reported sex (categorical: " + "/".join(("female", "male", "other", "unknown")) + ")",
            pii=True,
        ),
        Feature("height_cm", "Float64", "height", "cm", pii=True),
        Feature("bmi", "Float64", "body-mass index from the latest weight before the snapshot", "kg/m2"),
        *(Feature(f"has_{c}", "Int64", f"1 if the user reported {c.replace('_', ' ')}", pii=True) for c in CONDITIONS),
        Feature("signup_epoch_s", "Int64", "signup time as Unix seconds (input of days_since_signup)", "s"),
    )
    return FeatureTable(
        "profile",
        "slowly changing user profile: a snapshot at signup and at every month end",
        62,
        sql,
        features,
        31,  # monthly snapshots
        # the latest weight is carried forward: every later snapshot may change
        affected=f"x.event_timestamp >= {_midnight('d.r_lo + 1')}",
    )


# Run in order before any feature table: the dense user x day grid and the daily health table.
PREPARE_SQL = (USER_DAY_SQL, _health_daily_prepare_sql())
SCRATCH_TABLES = ("hm_user_day", "hm_health_daily")  # the temporary tables PREPARE_SQL creates, in order
FEATURE_TABLES: dict[str, FeatureTable] = {
    t.name: t
    for t in (
        _health_daily(),
        _health_rolling(),
        _health_period("week", "week", 14),
        _health_period("month", "month", 62),
        _engagement(),
        _profile(),
    )
}


# On-demand features computed by feature_repo/temporal.py from the request (prediction) time.
# Feast 0.67 drops field descriptions of on-demand views when it reads them back from the
# registry (OnDemandFeatureView._parse_features_from_proto), so their documentation lives here
# and in the view's description.
TEMPORAL_FEATURES: tuple[Feature, ...] = (
    Feature("hour_sin", "Float64", "sin(2*pi*hour/24) of the request time, hour with fraction (UTC)"),
    Feature("hour_cos", "Float64", "cos(2*pi*hour/24) of the request time, hour with fraction (UTC)"),
    Feature("dow_sin", "Float64", "sin(2*pi*weekday/7) of the request time, Monday = 0"),
    Feature("dow_cos", "Float64", "cos(2*pi*weekday/7) of the request time, Monday = 0"),
    Feature("month_sin", "Float64", "sin(2*pi*(month-1)/12) of the request time"),
    Feature("month_cos", "Float64", "cos(2*pi*(month-1)/12) of the request time"),
    Feature("is_weekend", "Int64", "1 on Saturday and Sunday (UTC)"),
    Feature("day_of_year", "Int64", "day of the year of the request time, 1..366"),
    Feature("days_since_signup", "Float64", "days from signup to the request time", "days"),
)


def describe_markdown() -> str:
    """The feature catalog as Markdown: one table per feature table (`healthmate-features features`)."""
    lines: list[str] = []
    for t in FEATURE_TABLES.values():
        lines += [
            f"### `{t.name}` (TTL {t.ttl_days} days): {t.description}",
            "",
            "| feature | type | unit | description |",
            "|---|---|---|---|",
        ]
        lines += [f"| {f.name} | {f.dtype} | {f.unit} | {f.description} |" for f in t.features]
        lines.append("")
    lines += [
        "### `temporal` (on demand, from the request time)",
        "",
        "| feature | type | unit | description |",
        "|---|---|---|---|",
    ]
    lines += [f"| {f.name} | {f.dtype} | {f.unit} | {f.description} |" for f in TEMPORAL_FEATURES]
    return "\n".join(lines) + "\n"
