"""Raw data delivered in steps the way real feeds deliver it, for the incremental-build tests.

`Arrivals(source, rng)` holds the first 40 days of a generated population (3% of their rows
held back as late data, one user held back entirely); its steps change what is delivered:
the next days, the late rows, the held-back user with history, edited and deleted rows.
`steps(rng)` is a random order of them; `write(raw)` writes the delivery so far.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pandas as pd


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

    def steps(self, k: int = 7) -> list[Callable[[], str]]:
        """A first delivery, then `k` steps in a random order."""
        rng = self.rng
        return [lambda: "first delivery"] + rng.sample(
            [
                lambda: self.next_days(1),
                lambda: self.next_days(rng.randint(2, 9)),
                self.late_rows,
                self.new_user,
                self.edit,
                self.delete,
                lambda: self.next_days(1),
            ],
            k=k,
        )
