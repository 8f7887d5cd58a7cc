"""Realistic, deterministic synthetic raw data: users, health readings, app events and labels.

`generate()` writes the four raw tables of `healthmate_features.raw.schemas` as Parquet; `simulate()`
returns them in memory together with the latent truth (disengagement days, adverse events) that
tests check against. Everything is vectorized over (users x days) arrays, one block of 1,000 users
at a time, each block with its own random stream seeded from (seed, block number): the same
arguments always give byte-identical files.

Simulation model
----------------
*Time.* The period is `days` whole UTC days from `start`. The population lives in UTC, so
"morning" is morning in UTC.

*Users.* Age 18-90, sex, height by sex, BMI, and conditions whose prevalence rises with age and BMI
(hypertension, type 2 diabetes, heart disease; obesity from BMI; asthma flat); 2% leave their
conditions unanswered (null). About 60% signed up in the two years before `start`, the others sign
up during the first 90% of the period. Nothing is recorded before a user's signup time.

*Baselines.* Each user has personal baselines from those traits and a latent fitness: resting heart
rate, daily steps (with a personal weekend factor: some walk more on weekends, some less), sleep
(longer on weekends), weight (with a slow personal trend), blood pressure, glucose (much higher
for diabetics) and SpO2 (lower with asthma or heart disease). Slow day-to-day wander is AR(1);
every reading adds measurement noise.

*Health trajectory.* A latent risk r(day) in [0, 1]. Deterioration episodes arrive at a rate that
grows with the number of conditions and with age (0.4 a year, +0.8 per condition, more over 60 and
72); in one, r climbs linearly over 3-8 weeks and at its peak an adverse health event happens with
probability 0.75; afterwards r decays with a time constant of 10 days. Rising r raises resting
heart rate (+16 bpm at r = 1), blood pressure (+22/+11 mmHg) and glucose (+35 mg/dL, +80 for
diabetics) and lowers steps (-50%), sleep (-50 min), SpO2 (-2.5 points) and logged workouts, so a
deterioration shows in the data weeks before its event. Some adverse events (~0.1 a year, more
with conditions) come without warning. Each event is followed by a hospital stay of 1-14 days
without readings.

*Engagement trajectory.* Engagement e(day) in [0, 1] starts at a personal level, is boosted for new
users (the novelty wears off over ~6 weeks) and wanders day to day (AR(1) on the log scale). Most
users disengage sooner or later: ~90% of those who sign up during the period (after 3 + an
exponential 60 days on average) and ~80% of earlier users (3 + exponential 110 days from `start`),
fewer with conditions, more among the young and the lukewarm. Over the 2-6 weeks before its day,
e falls to a tenth of its level; from the disengagement day on there are no app events at all,
and health readings thin out and stop within days as devices stop syncing.

*App events.* A day is active with probability 0.1 + 0.88 e (15% less on weekends). An active day
has a login just before its first session, 1 + Poisson(1.5 e) sessions (morning, lunch, evening;
session_id `<user_id>-<n>`; log-normal duration growing with e), meals logged (for the 55% who log
meals, up to three at meal times), maybe a workout, and a medication log for users with a known
condition who log medication (by personal adherence). One or two notifications are sent every day
until disengagement (~09:00, ~18:00); each is opened minutes later with probability 0.04 + 0.7 e,
so open rates fall as engagement falls.

*Health readings* (metric: device, time of day). resting_heart_rate: watch on each worn day
(~06:30), otherwise rare manual entries. steps: one daily total (~23:50, watch, or phone for users
without a watch) or, for a quarter of watch users, three partial counts (~12:00, ~18:00, ~23:50).
sleep_minutes: once a day for the night ending that morning (~07:15; watch, or occasional manual).
weight: morning, a scale on 45% of days for scale owners, rare manual entries. systolic_bp and
diastolic_bp (same time): mornings and evenings for hypertensive cuff owners, now and then for
other cuff owners, rarely manual. blood_glucose: fasting (~07:00) and after lunch and dinner for
diabetics with a glucometer, rarely for others. spo2: overnight from watches (most nights with
asthma). Device gaps (~2.5 a year per user, ~7 days long), unworn days and hospital stays leave
missing days. About 1 reading in 1,000 is a plausible extreme (a 30,000-step hike, a 190 mmHg
spike), still within the possible range; 0.5% of readings have no device (old app versions).

*Invalid rows.* A fraction `invalid_rate` (default 5e-5, ~1 in 20,000) of readings and of app
events is corrupted for ingest to reject: a reading far out of range (a heart rate of 880), a
negative reading, or a reading in a wrong unit (weight in lb, glucose in mmol/L, converted); a
session with no duration, a negative one, or one over 720 minutes. `invalid_rate=0` disables it.

*Labels.* Per user, prediction times every 14 (+-2) days at a random time of day, from 14 days
after max(signup, start) to 30 days before the end of the period (both outcomes fully observed),
and only while the user is still a user: there is no label at or after a user's last app activity.
`adverse_event_30d` is 1 if an adverse event happens in (t, t + 30 days]; `disengaged_14d` is 1 if
the user's last app activity (any valid event except notification_sent) is in (t, t + 14 days].
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.signal import lfilter

from healthmate_features.crypto import Keyring, parquet_encryption
from healthmate_features.raw.schemas import CONDITIONS, DEVICES, EVENT_TYPES, METRICS, RAW_TABLES, SEXES, TableSchema

BLOCK_USERS = 500
DAY = 86_400_000_000  # microseconds
HOUR = 3_600_000_000
MINUTE = 60_000_000
NEVER = np.iinfo(np.int64).max // 4
OUTLIER_RATE = 1e-3

_M = {m.name: i for i, m in enumerate(METRICS)}
_DEV = {d: i for i, d in enumerate(DEVICES)}
_EV = {e: i for i, e in enumerate(EVENT_TYPES)}
# Wrong units for invalid rows, with the factor that converts a correct value into them.
_WRONG_UNIT = {
    "resting_heart_rate": ("bps", 1 / 60),
    "steps": ("km", 0.0008),
    "sleep_minutes": ("h", 1 / 60),
    "weight": ("lb", 2.20462),
    "systolic_bp": ("kPa", 0.133322),
    "diastolic_bp": ("kPa", 0.133322),
    "blood_glucose": ("mmol/L", 1 / 18.016),
    "spo2": ("fraction", 0.01),
}
_UNITS = [m.unit for m in METRICS] + [_WRONG_UNIT[m.name][0] for m in METRICS]
# Plausible extremes: a reading is multiplied by a factor in [lo, hi], then kept in range.
_OUTLIER = np.array(
    [
        {
            "resting_heart_rate": (1.5, 1.9),
            "steps": (2.5, 4.0),
            "sleep_minutes": (0.3, 0.5),
            "weight": (1.04, 1.08),
            "systolic_bp": (1.35, 1.6),
            "diastolic_bp": (1.3, 1.5),
            "blood_glucose": (1.8, 2.6),
            "spo2": (0.88, 0.93),
        }[m.name]
        for m in METRICS
    ]
)
_LOW = np.array([m.low for m in METRICS], dtype=float)
_HIGH = np.array([m.high for m in METRICS], dtype=float)
_WRONG_FACTOR = np.array([_WRONG_UNIT[m.name][1] for m in METRICS])

_ARROW_TYPES = {
    "int": pa.int64(),
    "float": pa.float64(),
    "string": pa.string(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


def arrow_schema(table: TableSchema) -> pa.Schema:
    """The Arrow schema of a raw table: int -> int64, float -> float64, timestamp -> UTC microseconds."""
    return pa.schema([pa.field(c.name, _ARROW_TYPES[c.dtype], nullable=c.nullable) for c in table.columns])


@dataclass(frozen=True)
class Simulation:
    """A simulated population: the four raw tables plus the latent truth behind them.

    `disengaged_at` has one row per user: the start of the disengagement day (null if the user
    never disengages within the period). `adverse_events` has one row per adverse health event
    within the period (user_id, at), including events after the user disengaged.
    """

    tables: dict[str, pa.Table]
    disengaged_at: pa.Table
    adverse_events: pa.Table


def generate(
    out_dir: str | Path,
    *,
    users: int,
    days: int,
    seed: int,
    start: date | str = "2025-01-01",
    invalid_rate: float = 5e-5,
    progress: bool = True,
    keyring: Keyring | None = None,
) -> dict[str, int]:
    """Simulate `users` users over `days` days and write users/health_readings/app_events/labels.parquet.

    Creates `out_dir` if needed; each file is written under a temporary name and renamed into
    place (os.replace), so a reader never sees a half-written file. Returns the row count per table. See the module
    docstring for the model. With `keyring` the files are encrypted under its active data key
    (what the CLI and the demo write into a repository's data/); `ingest` opens them with the
    repository's keyring. Same seed, same rows (the bytes differ when encrypted).
    """
    blocks = _blocks(users=users, days=days, seed=seed, start=start, invalid_rate=invalid_rate, progress=progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = {name: out / f".{name}.parquet.tmp-{os.getpid()}" for name in RAW_TABLES}
    counts = dict.fromkeys(RAW_TABLES, 0)
    encryption = parquet_encryption(keyring.active()) if keyring is not None else None
    try:
        with ExitStack() as stack:
            writers = {
                name: stack.enter_context(
                    pq.ParquetWriter(
                        tmp[name], arrow_schema(schema), compression="zstd", encryption_properties=encryption
                    )
                )
                for name, schema in RAW_TABLES.items()
            }
            for block in blocks:
                for name, table in block.tables.items():
                    writers[name].write_table(table)
                    counts[name] += table.num_rows
        for name, path in tmp.items():
            os.replace(path, out / f"{name}.parquet")
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
    return counts


def simulate(
    *, users: int, days: int, seed: int, start: date | str = "2025-01-01", invalid_rate: float = 5e-5
) -> Simulation:
    """Simulate in memory (for tests and notebooks): the tables `generate` writes, plus the truth."""
    blocks = list(_blocks(users=users, days=days, seed=seed, start=start, invalid_rate=invalid_rate, progress=False))
    return Simulation(
        tables={name: pa.concat_tables([b.tables[name] for b in blocks]) for name in RAW_TABLES},
        disengaged_at=pa.concat_tables([b.disengaged_at for b in blocks]),
        adverse_events=pa.concat_tables([b.adverse_events for b in blocks]),
    )


def _blocks(
    *, users: int, days: int, seed: int, start: date | str, invalid_rate: float, progress: bool
) -> Iterator[Simulation]:
    """Check the arguments now; return an iterator that simulates one block of users at a time."""
    if users < 1 or days < 1 or seed < 0:
        raise ValueError(f"users and days must be >= 1 and seed >= 0 (got users={users}, days={days}, seed={seed})")
    if not 0 <= invalid_rate <= 1:
        raise ValueError(f"invalid_rate must be within [0, 1] (got {invalid_rate})")
    start_date = date.fromisoformat(start) if isinstance(start, str) else start
    start_us = (
        int(datetime(start_date.year, start_date.month, start_date.day, tzinfo=timezone.utc).timestamp()) * 1_000_000
    )

    def run() -> Iterator[Simulation]:
        from tqdm import tqdm

        with tqdm(total=users, unit="user", desc="generate", disable=not progress) as bar:
            for first in range(0, users, BLOCK_USERS):
                n = min(BLOCK_USERS, users - first)
                rng = np.random.default_rng([seed, first // BLOCK_USERS])
                yield _Block(rng, n, days, first + 1, start_date, start_us, invalid_rate).run()
                bar.update(n)

    return run()


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _take(values, idx: np.ndarray) -> pa.Array:
    """Strings from a vocabulary by index; a negative index is null."""
    return pc.take(pa.array(values, pa.string()), pa.array(idx, pa.int32(), mask=idx < 0))


def _ts(us: np.ndarray) -> pa.Array:
    return pa.array(us, pa.int64()).cast(pa.timestamp("us", tz="UTC"))


class _Block:
    """One block of users: draws traits and trajectories, then emits the tables."""

    def __init__(self, rng, n, days, first_id, start_date, start_us, invalid_rate):
        self.rng, self.n, self.D, self.first_id = rng, n, days, first_id
        self.start_date, self.start_us, self.invalid_rate = start_date, start_us, invalid_rate
        self.day = np.arange(days)
        self.weekend = ((start_date.weekday() + self.day) % 7) >= 5

    # -- helpers -------------------------------------------------------------------------------
    def ar1(self, sd: float, phi: float) -> np.ndarray:
        """Per user-day AR(1) noise with stationary standard deviation `sd` and day-to-day correlation `phi`."""
        eps = self.rng.normal(0, sd * np.sqrt(1 - phi**2), (self.n, self.D))
        eps[:, 0] = self.rng.normal(0, sd, self.n)
        return lfilter([1.0], [1.0, -phi], eps, axis=1)

    def tod(self, k: int, hour: float, sd_hours: float) -> np.ndarray:
        """`k` times of day (microseconds) around `hour`, kept inside the day."""
        return np.clip(self.rng.normal(hour, sd_hours, k) * HOUR, 0, DAY - 1).astype(np.int64)

    def jitter(self, k: int, sd_hours: float) -> np.ndarray:
        """`k` signed time offsets (microseconds) with standard deviation `sd_hours`."""
        return (self.rng.normal(0, sd_hours, k) * HOUR).astype(np.int64)

    def bern(self, p, shape=None) -> np.ndarray:
        """Bernoulli draws with probability `p` (of `p`'s shape unless `shape` is given)."""
        return self.rng.random(shape or np.shape(p)) < p

    # -- model ---------------------------------------------------------------------------------
    def run(self) -> Simulation:
        self.people()
        self.health()
        self.engagement()
        users = self.users_table()
        readings = self.readings_table()
        events, last_activity = self.events_table()
        labels = self.labels_table(last_activity)
        uid = np.arange(self.n, dtype=np.int64) + self.first_id
        q_us = np.where(self.q < self.D, self.q * DAY + self.start_us, 0)
        disengaged = pa.table(
            {
                "user_id": uid,
                "disengaged_at": pa.array(q_us, pa.int64(), mask=self.q >= self.D).cast(pa.timestamp("us", tz="UTC")),
            }
        )
        has = (self.adverse >= 0) & (self.adverse < self.D * DAY)
        adverse = pa.table(
            {"user_id": np.nonzero(has)[0] + self.first_id, "at": _ts(self.adverse[has] + self.start_us)}
        )
        tables = {"users": users, "health_readings": readings, "app_events": events, "labels": labels}
        return Simulation(tables, disengaged, adverse)

    def people(self) -> None:
        rng, n = self.rng, self.n
        self.age = np.clip(rng.normal(46, 16, n), 18, 90)
        self.sex = rng.choice(len(SEXES), n, p=[0.5, 0.46, 0.02, 0.02])
        female, male = self.sex == 0, self.sex == 1
        self.height = np.where(
            male, rng.normal(177, 7.5, n), np.where(female, rng.normal(163.5, 7, n), rng.normal(170, 9, n))
        )
        self.bmi = rng.lognormal(np.log(26.5), 0.17, n) + 0.04 * (self.age - 46)
        cond = np.zeros((n, len(CONDITIONS)), bool)
        c = {name: i for i, name in enumerate(CONDITIONS)}
        cond[:, c["hypertension"]] = self.bern(_sigmoid(-1.2 + 0.065 * (self.age - 45) + 0.1 * (self.bmi - 26.5)))
        cond[:, c["type2_diabetes"]] = self.bern(_sigmoid(-2.6 + 0.045 * (self.age - 45) + 0.15 * (self.bmi - 26.5)))
        cond[:, c["asthma"]] = self.bern(0.08, n)
        cond[:, c["heart_disease"]] = self.bern(
            _sigmoid(-3.6 + 0.07 * (self.age - 45) + 0.8 * cond[:, c["hypertension"]])
        )
        cond[:, c["obesity"]] = (self.bmi >= 30) & self.bern(0.9, n)
        self.cond = cond
        self.hyp, self.diab = cond[:, c["hypertension"]], cond[:, c["type2_diabetes"]]
        self.asthma, self.heart = cond[:, c["asthma"]], cond[:, c["heart_disease"]]
        self.n_cond = cond.sum(1)
        self.conditions_unknown = self.bern(0.02, n)  # did not answer: null, treated as none known

        # Signup: 40% during the period (first 90% of it), the rest in the two years before.
        new = self.bern(0.4, n)
        signup_day = np.where(new, rng.integers(0, max(1, int(0.9 * self.D)), n), -rng.integers(1, 731, n))
        self.signup_us = signup_day * DAY + self.tod(n, 14, 4)
        self.new, self.signup_day = new, signup_day
        self.app_start = np.maximum(signup_day, 0)

        # Baselines.
        fit = rng.normal(0, 1, n)
        self.fitness = fit
        self.steps_base = np.exp(np.log(7500) + 0.45 * fit - 0.012 * (self.age - 45) - 0.03 * (self.bmi - 26.5))
        self.weekend_steps = rng.lognormal(0, 0.2, n)
        self.rhr_base = np.clip(
            64
            + 2.5 * female
            - 4 * fit
            + 0.25 * (self.bmi - 26.5)
            + 4 * self.heart
            + 2 * self.diab
            + rng.normal(0, 4, n),
            42,
            95,
        )
        self.sleep_base = rng.normal(425, 30, n) - 0.6 * (self.age - 45)
        self.weekend_sleep = rng.normal(35, 20, n)
        self.weight_base = self.bmi * (self.height / 100) ** 2
        self.weight_trend = rng.normal(0, 2.5, n)  # kg per year
        self.sbp_base = 116 + 0.45 * (self.age - 45) + 16 * self.hyp + 0.6 * (self.bmi - 26.5) + rng.normal(0, 7, n)
        self.dbp_base = 75 + 0.15 * (self.age - 45) + 9 * self.hyp + 0.3 * (self.bmi - 26.5) + rng.normal(0, 5, n)
        self.glu_base = np.where(self.diab, rng.normal(145, 25, n), rng.normal(92, 8, n) + 0.5 * (self.bmi - 26.5))
        self.spo2_base = np.minimum(97.6 - 1.2 * self.asthma - 0.8 * self.heart + rng.normal(0, 0.6, n), 99.5)

        # Devices and habits.
        self.watch = self.bern(np.clip(0.85 - 0.006 * (self.age - 30), 0.35, 0.9))
        self.wear = rng.beta(9, 1.5, n)
        self.partial_steps = self.watch & self.bern(0.25, n)
        self.scale = self.bern(np.where(cond[:, c["obesity"]], 0.65, 0.45))
        self.cuff = self.bern(np.where(self.hyp | self.heart, 0.85, 0.08))
        self.glucometer = self.bern(np.where(self.diab, 0.9, 0.03))
        self.meal_logger = self.bern(0.55, n)
        self.med_logger = (self.n_cond > 0) & ~self.conditions_unknown & self.bern(0.75, n)
        self.adherence = rng.beta(6, 2, n)

    def engagement(self) -> None:
        rng, n, d = self.rng, self.n, self.day
        e0 = rng.beta(5, 2.5, n)
        p_churn = np.where(self.new, 0.9, 0.8) - 0.12 * (self.n_cond > 0) + 0.1 * (self.age < 30) + 0.3 * (0.67 - e0)
        churn = self.bern(np.clip(p_churn, 0.05, 0.95))
        wait = 3 + rng.exponential(np.where(self.new, 60, 110))
        q = (self.app_start + wait).astype(np.int64)
        self.q = np.where(churn & (q < self.D), q, self.D + 10_000)  # disengagement day
        w = rng.uniform(14, 42, n)
        decline = 0.1 + 0.9 * np.clip((self.q[:, None] - d) / w[:, None], 0, 1)
        since = np.maximum(d - self.signup_day[:, None], 0)
        novelty = 1 + 0.5 * np.exp(-since / 40)
        self.e = np.clip(e0[:, None] * novelty * decline * np.exp(self.ar1(0.3, 0.85)), 0, 1)
        self.in_app = (d >= self.app_start[:, None]) & (d < self.q[:, None])
        # After disengagement, devices keep syncing for a few days with fading probability.
        tau = rng.uniform(1, 12, n)
        after = np.clip(d - self.q[:, None], 0, None)
        fading = (d < self.q[:, None]) | self.bern(np.exp(-after / tau[:, None]))
        # Device gaps: ~2.5 per user-year, length 1 + geometric (mean ~7 days).
        k = 8
        starts = rng.integers(0, self.D, (n, k))
        lengths = 1 + np.minimum(rng.geometric(0.15, (n, k)), 60)
        used = np.arange(k) < np.minimum(rng.poisson(2.5 * self.D / 365, n), k)[:, None]
        gap = np.zeros((n, self.D), bool)
        for j in range(k):  # k x (users x days), not a loop over rows
            gap |= used[:, j, None] & (d >= starts[:, j, None]) & (d < (starts + lengths)[:, j, None])
        self.present = (d >= self.app_start[:, None]) & fading & ~gap & ~self.hospital

    def health(self) -> None:
        rng, n, d = self.rng, self.n, self.day
        # Deterioration episodes: rate per year grows with conditions and age.
        lam = 0.4 + 0.8 * self.n_cond + 0.3 * (self.age >= 60) + 0.3 * (self.age >= 72)
        k = 8
        count = np.minimum(rng.poisson(lam * (self.D + 60) / 365), k)
        used = np.arange(k) < count[:, None]
        peak = rng.uniform(-20, self.D + 40, (n, k))
        ramp = rng.uniform(21, 56, (n, k))
        r = np.zeros((n, self.D))
        for j in range(k):  # k x (users x days)
            rise = np.clip((d - (peak[:, j, None] - ramp[:, j, None])) / ramp[:, j, None], 0, 1)
            fall = np.exp(-np.clip(d - peak[:, j, None], 0, None) / 10)
            r += used[:, j, None] * np.where(d <= peak[:, j, None], rise, fall)
        self.r = np.minimum(r, 1)
        event = used & self.bern(0.75, (n, k))
        at = (np.floor(peak) * DAY + rng.integers(0, DAY, (n, k))).astype(np.int64)
        # Events without warning.
        m = 3
        sudden = np.arange(m) < np.minimum(rng.poisson(0.1 * (1 + 0.5 * self.n_cond) * self.D / 365, n), m)[:, None]
        sudden_at = rng.integers(0, self.D * DAY, (n, m))
        self.adverse = np.sort(
            np.concatenate([np.where(event, at, NEVER), np.where(sudden, sudden_at, NEVER)], axis=1), axis=1
        )
        # A hospital stay of 1-14 days after each event: no readings then.
        event_day = self.adverse // DAY
        stay = np.minimum(rng.geometric(0.3, event_day.shape), 14)
        self.hospital = np.zeros((n, self.D), bool)
        for j in range(event_day.shape[1]):  # (k + m) x (users x days)
            self.hospital |= (d >= event_day[:, j, None]) & (d < (event_day + stay)[:, j, None])

    # -- tables --------------------------------------------------------------------------------
    def users_table(self) -> pa.Table:
        code = (self.cond * (1 << np.arange(len(CONDITIONS)))).sum(1)
        combos = [";".join(c for i, c in enumerate(CONDITIONS) if k >> i & 1) for k in range(1 << len(CONDITIONS))]
        height = np.round(self.height, 1)
        return pa.table(
            {
                "user_id": np.arange(self.n, dtype=np.int64) + self.first_id,
                "signup_at": _ts(self.signup_us + self.start_us),
                "birth_year": (self.start_date.year - np.floor(self.age)).astype(np.int64),
                "sex": _take(SEXES, self.sex),
                "height_cm": pa.array(height, pa.float64(), mask=self.bern(0.03, self.n)),
                "conditions": _take(combos, np.where(self.conditions_unknown, -1, code)),
            },
            schema=arrow_schema(RAW_TABLES["users"]),
        )

    def readings_table(self) -> pa.Table:
        rng, n, D, r = self.rng, self.n, self.D, self.r
        parts: list[tuple] = []

        def at(mask, hour: float, sd_hours: float, device: str):
            """Reading slots (user, day, time of day, device) on the user-days in `mask`."""
            u, d = np.nonzero(mask)
            return u, d, self.tod(len(u), hour, sd_hours), np.full(len(u), _DEV[device])

        def put(slots, metric: str, values: np.ndarray) -> None:
            u, d, tod, dev = slots
            parts.append((u, d, np.full(len(u), _M[metric]), values, tod, dev))

        def noisy(level: np.ndarray, slots, sd: float) -> np.ndarray:
            return level[slots[0], slots[1]] + rng.normal(0, sd, len(slots[0]))

        watch = self.present & self.watch[:, None] & self.bern(self.wear[:, None], (n, D))  # worn, synced
        manual = self.present & self.in_app  # manual entries need the app; they fade with engagement
        no = lambda owned: ~owned[:, None]  # noqa: E731

        rhr = self.rhr_base[:, None] + 16 * r + self.ar1(1.5, 0.8)
        put(s := at(watch, 6.5, 0.75, "watch"), "resting_heart_rate", noisy(rhr, s, 2))
        put(
            s := at(manual & no(self.watch) & self.bern(0.08 * self.e), 12, 4, "manual"),
            "resting_heart_rate",
            noisy(rhr + 3, s, 4),
        )

        weekend_steps = np.where(self.weekend, self.weekend_steps[:, None], 1)
        steps = self.steps_base[:, None] * weekend_steps * rng.lognormal(0, 0.35, (n, D)) * (1 - 0.5 * r)
        put(s := at(watch & no(self.partial_steps), 23.83, 0.1, "watch"), "steps", noisy(steps, s, 0))
        put(
            s := at(self.present & no(self.watch) & self.bern(0.9, (n, D)), 23.83, 0.1, "phone"),
            "steps",
            noisy(0.75 * steps, s, 0),
        )
        share = rng.gamma(3, 1, (n, D, 3))
        share /= share.sum(2, keepdims=True)
        for j, hour in enumerate((12, 18, 23.83)):  # partial counts: morning, afternoon, evening
            put(
                s := at(watch & self.partial_steps[:, None], hour, 0.1, "watch"),
                "steps",
                noisy(steps * share[:, :, j], s, 0),
            )

        sleep = (
            self.sleep_base[:, None] + self.weekend_sleep[:, None] * self.weekend + rng.normal(0, 40, (n, D)) - 50 * r
        )
        sleep = np.clip(sleep, 90, 800)
        put(s := at(watch, 7.25, 0.8, "watch"), "sleep_minutes", noisy(sleep, s, 0))
        put(
            s := at(manual & no(self.watch) & self.bern(0.25 * self.e), 8.5, 1, "manual"),
            "sleep_minutes",
            noisy(sleep, s, 20),
        )

        weight = self.weight_base[:, None] + self.weight_trend[:, None] * self.day / 365 + self.ar1(0.5, 0.9)
        put(
            s := at(self.present & self.scale[:, None] & self.bern(0.45, (n, D)), 6.75, 0.6, "scale"),
            "weight",
            noisy(weight, s, 0.3),
        )
        put(
            s := at(manual & no(self.scale) & self.bern(0.04 * self.e), 8, 3, "manual"), "weight", noisy(weight, s, 0.8)
        )

        wander = self.ar1(3, 0.85)
        sbp = self.sbp_base[:, None] + 22 * r + wander
        dbp = self.dbp_base[:, None] + 11 * r + 0.5 * wander
        cuff = self.present & self.cuff[:, None]
        for slots, shift in (
            (at(cuff & self.bern(np.where(self.hyp, 0.75, 0.1)[:, None], (n, D)), 7.5, 0.75, "bp_cuff"), 0),
            (at(cuff & self.hyp[:, None] & self.bern(0.5, (n, D)), 20.5, 0.75, "bp_cuff"), -3),  # evenings lower
            (at(manual & no(self.cuff) & self.bern(0.01 * self.e), 11, 3, "manual"), 0),
        ):
            systolic = noisy(sbp + shift, slots, 7)
            put(slots, "systolic_bp", systolic)
            put(slots, "diastolic_bp", np.minimum(noisy(dbp + shift / 2, slots, 5), systolic - 15))

        fasting = self.glu_base[:, None] + np.where(self.diab, 80, 35)[:, None] * r
        after_meal = fasting + np.where(self.diab, 55, 25)[:, None]
        sd = np.where(self.diab, 22, 9)[:, None] * np.ones(D)
        meter = self.present & self.glucometer[:, None]
        rare = np.where(self.diab, 0.5, 0.02)[:, None]
        for p, hour, level in (
            (np.where(self.diab, 0.85, 0.1)[:, None], 7, fasting),
            (rare, 13.5, after_meal),
            (rare, 20, after_meal),
        ):
            s = at(meter & self.bern(p, (n, D)), hour, 0.6, "glucometer")
            put(s, "blood_glucose", noisy(level, s, 0) + sd[s[0], s[1]] * rng.normal(0, 1, len(s[0])))
        put(
            s := at(manual & no(self.glucometer) & self.bern(0.005, (n, D)), 9, 3, "manual"),
            "blood_glucose",
            noisy(fasting, s, 10),
        )

        spo2 = self.spo2_base[:, None] - 2.5 * r
        s = at(watch & self.bern(np.where(self.asthma, 0.9, 0.4)[:, None], (n, D)), 3, 1.2, "watch")
        put(s, "spo2", np.minimum(noisy(spo2, s, 0.8), 100))

        u, d, metric, value, tod, dev = (np.concatenate(c) for c in zip(*parts, strict=True))
        keep = d * DAY + tod > self.signup_us[u]
        u, metric, value, rec, dev = u[keep], metric[keep], value[keep], (d * DAY + tod)[keep], dev[keep]
        k = len(u)

        out = self.bern(OUTLIER_RATE, k)  # plausible extremes, still within the possible range
        value[out] *= rng.uniform(_OUTLIER[metric[out], 0], _OUTLIER[metric[out], 1])
        value = np.clip(value, _LOW[metric], _HIGH[metric])
        value = np.where(metric == _M["weight"], np.round(value, 1), np.round(value))
        dev = np.where(self.bern(0.005, k), -1, dev)  # old app versions sent no device

        bad = np.nonzero(self.bern(self.invalid_rate, k))[0]  # invalid rows for ingest to reject
        kind, m = rng.integers(0, 3, len(bad)), metric[bad]
        value[bad] = np.select(
            [kind == 0, kind == 1],
            [np.round(_HIGH[m] * rng.uniform(2, 5, len(bad))), -np.abs(value[bad]) - 1],
            np.round(value[bad] * _WRONG_FACTOR[m], 2),
        )
        unit = np.where(np.isin(np.arange(k), bad[kind == 2]), metric + len(METRICS), metric)

        order = np.lexsort((metric, rec, u))
        return pa.table(
            {
                "user_id": u[order].astype(np.int64) + self.first_id,
                "metric": _take([x.name for x in METRICS], metric[order]),
                "value": value[order],
                "unit": _take(_UNITS, unit[order]),
                "recorded_at": _ts(rec[order] + self.start_us),
                "device": _take(DEVICES, dev[order]),
            },
            schema=arrow_schema(RAW_TABLES["health_readings"]),
        )

    def events_table(self) -> tuple[pa.Table, np.ndarray]:
        rng, n, D, e = self.rng, self.n, self.D, self.e
        active = self.in_app & self.bern(np.clip(0.1 + 0.88 * e, 0, 0.97) * np.where(self.weekend, 0.85, 1))
        parts: list[tuple] = []

        def emit(u, d, ev, tod, dur=None, anchor=None):
            """Rows of one event type; `anchor` is the time that must follow signup (default: tod)."""
            k = len(u)
            tod = np.clip(tod, 0, DAY - 1)
            parts.append(
                (
                    u,
                    d,
                    np.full(k, _EV[ev]),
                    tod,
                    np.full(k, np.nan) if dur is None else dur,
                    tod if anchor is None else anchor,
                )
            )

        def around(hours, k, sd, p=None):
            peak = rng.choice(np.asarray(hours, float), k, p=p)
            return (peak * HOUR).astype(np.int64) + self.jitter(k, sd)

        # Sessions: 1 + Poisson(2.2 e) on active days, around morning, lunch and evening.
        n_sessions = np.where(active, 1 + rng.poisson(1.5 * e), 0).ravel()
        flat = np.repeat(np.arange(n * D), n_sessions)
        su, sd = flat // D, flat % D
        k = len(su)
        s_tod = np.clip(around([8.0, 12.5, 20.5], k, 1.5, [0.35, 0.25, 0.4]), MINUTE, DAY - HOUR)
        dur = np.round(np.clip(rng.lognormal(np.log(3 + 6 * e[su, sd]), 0.7), 0.2, 180), 1)
        emit(su, sd, "session", s_tod, dur)
        if k:  # login: once per active day, just before its first session
            firsts = np.concatenate([[0], np.cumsum(n_sessions[n_sessions > 0])[:-1]])
            login = np.minimum.reduceat(s_tod, firsts) - rng.integers(5, 60, len(firsts)) * 1_000_000
            emit(su[firsts], sd[firsts], "login", login)

        meals = np.where(active & self.meal_logger[:, None], rng.binomial(3, np.clip(0.25 + 0.65 * e, 0, 1)), 0)
        flat = np.repeat(np.arange(n * D), meals.ravel())
        emit(flat // D, flat % D, "meal_logged", around([8.0, 13.0, 19.5], len(flat), 0.7))
        workout = active & self.bern(
            np.clip(0.35 * np.exp(0.4 * self.fitness)[:, None] * (0.3 + 0.7 * e) * (1 - 0.7 * self.r), 0, 0.9)
        )
        u, d = np.nonzero(workout)
        emit(u, d, "workout_logged", around([7.0, 18.5], len(u), 1.0, [0.3, 0.7]))
        med = active & self.med_logger[:, None] & self.bern(self.adherence[:, None] * (0.5 + 0.5 * e))
        u, d = np.nonzero(med)
        emit(u, d, "medication_logged", self.tod(len(u), 8.5, 0.75))

        # Notifications: one or two a day until disengagement; opened with probability rising with e.
        for hour, p in ((9, 0.8), (18, 0.2)):
            u, d = np.nonzero(self.in_app & self.bern(p, (n, D)))
            sent = self.tod(len(u), hour, 0.25)
            emit(u, d, "notification_sent", sent)
            o = self.bern(0.04 + 0.7 * e[u, d])
            delay = np.maximum(rng.lognormal(np.log(12), 1.0, o.sum()) * MINUTE, 1_000_000).astype(np.int64)
            emit(u[o], d[o], "notification_opened", np.minimum(sent[o] + delay, DAY - 1), anchor=sent[o])

        u, d, ev, tod, dur, anchor = (np.concatenate(c) for c in zip(*parts, strict=True))
        keep = d * DAY + anchor > self.signup_us[u]
        u, ev, at, dur = u[keep], ev[keep], (d * DAY + tod)[keep], dur[keep]
        order = np.lexsort((ev, at, u))
        u, ev, at, dur = u[order], ev[order], at[order], dur[order]

        # Invalid rows: sessions (the fraction of all events is `invalid_rate`) with no duration,
        # a negative one, or one longer than 720 minutes.
        is_session = ev == _EV["session"]
        p = min(1.0, self.invalid_rate * len(u) / max(is_session.sum(), 1))
        bad = np.nonzero(is_session & self.bern(p, len(u)))[0]
        kind = rng.integers(0, 3, len(bad))
        dur[bad] = np.where(
            kind == 0, np.nan, np.where(kind == 1, -dur[bad], np.round(rng.uniform(1000, 5000, len(bad)), 1))
        )
        valid = np.ones(len(u), bool)
        valid[bad] = False
        activity = valid & (ev != _EV["notification_sent"])
        last = np.full(n, -NEVER)
        np.maximum.at(last, u[activity], at[activity])

        # session_id "<user_id>-<n>": the user's n-th session.
        seq = np.cumsum(is_session) - np.searchsorted(u[is_session], u, "left")
        uid = u.astype(np.int64) + self.first_id
        sid = pc.binary_join_element_wise(
            pc.cast(pa.array(uid[is_session]), pa.string()), pc.cast(pa.array(seq[is_session]), pa.string()), "-"
        )
        nth = np.cumsum(is_session) - 1
        table = pa.table(
            {
                "user_id": uid,
                "event_type": _take(EVENT_TYPES, ev),
                "at": _ts(at + self.start_us),
                "session_id": pc.take(sid, pa.array(nth, pa.int64(), mask=~is_session)),
                "duration_minutes": pa.array(dur, pa.float64(), from_pandas=True),
            },
            schema=arrow_schema(RAW_TABLES["app_events"]),
        )
        return table, last

    def labels_table(self, last_activity: np.ndarray) -> pa.Table:
        rng, n, D = self.rng, self.n, self.D
        k = D // 14 + 2
        eligible = np.maximum(self.signup_us, 0) + 14 * DAY
        first_day = -(-eligible // DAY) + rng.integers(0, 14, n)
        t = (first_day[:, None] + 14 * np.arange(k) + rng.integers(-2, 3, (n, k))) * DAY + rng.integers(0, DAY, (n, k))
        ok = (t >= eligible[:, None]) & (t <= (D - 30) * DAY) & (t < last_activity[:, None])
        ev = self.adverse[:, None, :]
        adverse = ((ev > t[:, :, None]) & (ev <= t[:, :, None] + 30 * DAY)).any(2)
        last = last_activity[:, None]
        disengaged = (last > t) & (last <= t + 14 * DAY)
        u, j = np.nonzero(ok)
        return pa.table(
            {
                "user_id": u.astype(np.int64) + self.first_id,
                "event_timestamp": _ts(t[u, j] + self.start_us),
                "adverse_event_30d": adverse[u, j].astype(np.int64),
                "disengaged_14d": disengaged[u, j].astype(np.int64),
            },
            schema=arrow_schema(RAW_TABLES["labels"]),
        )
