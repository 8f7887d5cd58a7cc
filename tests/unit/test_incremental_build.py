"""Incremental feature builds equal full rebuilds bit for bit, whatever order the raw data arrives in.

A generated population is delivered in steps chosen by a seeded random loop (several seeds; the
package does not depend on hypothesis): the next days, late rows for old days, a new user,
edited and deleted rows, events only. After each delivery the repository under test builds
incrementally and a second repository builds the same ingest from scratch (`full=True`); every
feature table must hold exactly the same rows and the same bits.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from healthmate_features.config import Settings
from healthmate_features.features.build import build_features
from healthmate_features.features.catalog import FEATURE_TABLES
from healthmate_features.raw.generate import generate
from healthmate_features.raw.ingest import ingest

DAYS = 80


def _table(settings: Settings, name: str) -> pd.DataFrame:
    con = duckdb.connect()
    try:
        path = settings.features_dir / f"{name}.parquet"
        return con.execute(f"SELECT * FROM read_parquet('{path}') ORDER BY user_id, event_timestamp").df()
    finally:
        con.close()


def _assert_same_tables(a: Settings, b: Settings, where: str) -> None:
    for name in FEATURE_TABLES:
        left, right = _table(a, name), _table(b, name)
        assert len(left) == len(right), f"{where}: {name} has {len(left)} rows, a full build {len(right)}"
        pd.testing.assert_frame_equal(left, right, check_exact=True, obj=f"{where}: {name}")


class Arrivals:
    """The raw tables as delivered so far, and deliveries that change them the way real feeds do."""

    def __init__(self, source: Path, rng: random.Random) -> None:
        self.rng = rng
        self.all = {t: pd.read_parquet(source / f"{t}.parquet") for t in ("users", "health_readings", "app_events")}
        self.times = {"health_readings": "recorded_at", "app_events": "at"}
        first = self.all["health_readings"]["recorded_at"].min().normalize()
        self.day0 = first
        self.held_user = int(self.all["users"]["user_id"].max())  # arrives later, with its history
        self.until = 40  # days delivered so far (in order); some rows of them are held back
        self.late: dict[str, pd.Index] = {}
        self.now = {t: f.copy() for t, f in self.all.items()}
        self._cut()
        for table in self.times:  # late rows: 3% of the delivered rows, held back for now
            frame = self.now[table]
            self.late[table] = frame.sample(frac=0.03, random_state=rng.randrange(10**6)).index
            self.now[table] = frame.drop(self.late[table])

    def _day(self, table: str, frame: pd.DataFrame) -> pd.Series:
        return (frame[self.times[table]] - self.day0).dt.days

    def _cut(self) -> None:
        users = self.all["users"]
        self.now["users"] = users[users.user_id != self.held_user]
        for table in self.times:
            frame = self.now[table]
            keep = (self._day(table, frame) < self.until) & (frame.user_id != self.held_user)
            self.now[table] = frame[keep]

    def next_days(self, n: int) -> str:
        for table in self.times:
            frame = self.all[table]
            day = self._day(table, frame)
            new = frame[(day >= self.until) & (day < self.until + n) & (frame.user_id != self.held_user)]
            self.now[table] = pd.concat([self.now[table], new])
        self.until += n
        return f"days {self.until - n}..{self.until - 1}"

    def late_rows(self) -> str:
        for table in self.times:
            self.now[table] = pd.concat([self.now[table], self.all[table].loc[self.late[table]]])
            self.late[table] = pd.Index([])
        return "late rows for old days"

    def new_user(self) -> str:
        users = self.all["users"]
        self.now["users"] = pd.concat([self.now["users"], users[users.user_id == self.held_user]])
        for table in self.times:
            frame = self.all[table]
            new = frame[(frame.user_id == self.held_user) & (self._day(table, frame) < self.until)]
            self.now[table] = pd.concat([self.now[table], new])
        return "a new user with history"

    def edit(self) -> str:
        frame = self.now["health_readings"].copy()
        rows = frame.sample(n=5, random_state=self.rng.randrange(10**6)).index
        frame.loc[rows, "value"] = frame.loc[rows, "value"] * 1.01
        self.now["health_readings"] = frame
        return "edited readings"

    def delete(self) -> str:
        table = self.rng.choice(list(self.times))
        frame = self.now[table]
        old = frame[self._day(table, frame) < self.until - 10]
        self.now[table] = frame.drop(old.sample(n=5, random_state=self.rng.randrange(10**6)).index)
        return f"deleted {table} rows"

    def write(self, raw: Path) -> None:
        raw.mkdir(parents=True, exist_ok=True)
        for table, frame in self.now.items():
            frame.reset_index(drop=True).to_parquet(raw / f"{table}.parquet", index=False)


@pytest.fixture(scope="module")
def population(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("population")
    generate(out, users=14, days=DAYS, seed=3, progress=False)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_incremental_builds_equal_full_builds_over_random_arrival_orders(population, tmp_path, seed):
    rng = random.Random(seed)
    arrivals = Arrivals(population, rng)
    raw = tmp_path / "raw"
    inc = Settings(repo_path=tmp_path / "incremental")
    full = Settings(repo_path=tmp_path / "full")
    steps = [lambda: "first delivery"]
    steps += rng.sample(
        [
            lambda: arrivals.next_days(1),
            lambda: arrivals.next_days(rng.randint(2, 9)),
            arrivals.late_rows,
            arrivals.new_user,
            arrivals.edit,
            arrivals.delete,
            lambda: arrivals.next_days(1),
        ],
        k=7,
    )
    for i, step in enumerate(steps):
        what = step()
        arrivals.write(raw)
        for settings in (inc, full):
            shutil.rmtree(settings.ingested_dir, ignore_errors=True)
            ingest(raw, settings.ingested_dir)
        got = build_features(raw, inc)
        build_features(raw, full, full=True)
        assert got.incremental == (i > 0), f"step {i} ({what}) was {'not ' * (i > 0)}incremental"
        _assert_same_tables(inc, full, f"seed {seed}, step {i} ({what})")
