"""The API's online-lookup limiter: its own threads, at most `capacity` at once, a deadline per lookup."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from healthmate_features.api.online_limit import OnlineLimiter
from healthmate_features.errors import ConfigError, ServiceUnavailableError


class Gate:
    """Work that blocks until released (a hung Redis), counting how many run at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.running = 0
        self.most = 0
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: int = 0) -> int:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.add(threading.current_thread().name)
        try:
            self.release.wait(10)
            return value
        finally:
            with self._lock:
                self.running -= 1


async def _outcomes(limiter: OnlineLimiter, fn, n: int) -> list[tuple[str, float]]:
    async def one(i: int) -> tuple[str, float]:
        started = time.monotonic()
        try:
            await limiter.run(fn, i)
            return "ok", time.monotonic() - started
        except ServiceUnavailableError as exc:
            return str(exc), time.monotonic() - started

    return await asyncio.gather(*(one(i) for i in range(n)))


def test_hung_lookups_answer_within_the_deadline_on_at_most_capacity_threads():
    limiter = OnlineLimiter(capacity=3, deadline_s=0.3, open_s=0.0)
    gate = Gate()
    try:
        outcomes = asyncio.run(_outcomes(limiter, gate, 20))
    finally:
        gate.release.set()
    messages = [m for m, _ in outcomes]
    timed_out = [m for m in messages if "longer than its deadline of 0.3 s (HM_ONLINE_DEADLINE_S)" in m]
    refused = [m for m in messages if "all 3 online lookup slots" in m and "(HM_ONLINE_MAX_CONCURRENT)" in m]
    assert len(timed_out) == 3 and len(refused) == 17, messages
    assert max(elapsed for _, elapsed in outcomes) < 2, outcomes  # 0.3 s each; generous
    assert gate.most == 3 and all(name.startswith("hm-online") for name in gate.threads), (gate.most, gate.threads)


def test_a_waiting_lookup_gets_the_slot_a_finished_one_frees():
    limiter = OnlineLimiter(capacity=1, deadline_s=2.0, open_s=0.0)

    def quick(value: int) -> int:
        time.sleep(0.05)
        return value

    async def scenario():
        return await asyncio.gather(*(limiter.run(quick, i) for i in range(5)))

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]


def test_a_steady_stream_of_quick_lookups_never_starves_a_waiter():
    """A freed slot goes to the longest waiting lookup. Before, a lookup arriving as a slot freed
    took it and the woken waiter queued again at the back: with 32 clients on 4 slots, some
    waited past the deadline (about 30 of 32,000 were refused) while every lookup took microseconds."""
    limiter = OnlineLimiter(capacity=4, deadline_s=0.25, open_s=0.0)

    async def quick() -> None:
        await asyncio.sleep(0)

    async def client() -> int:
        refused = 0
        for _ in range(1000):
            try:
                await limiter.run_async(quick)
            except ServiceUnavailableError:
                refused += 1
        return refused

    async def scenario() -> list[int]:
        return await asyncio.gather(*(client() for _ in range(32)))

    assert sum(asyncio.run(scenario())) == 0


def test_slots_held_by_abandoned_lookups_free_when_they_end():
    limiter = OnlineLimiter(capacity=2, deadline_s=0.2, open_s=0.0)
    gate = Gate()
    outcomes = asyncio.run(_outcomes(limiter, gate, 2))
    assert all("deadline" in m for m, _ in outcomes), outcomes
    assert gate.running == 2  # abandoned, still waiting on the "server": their slots stay taken
    busy = asyncio.run(_outcomes(limiter, gate, 1))
    assert "stayed busy" in busy[0][0], busy
    gate.release.set()
    deadline = time.monotonic() + 5
    while gate.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert asyncio.run(limiter.run(lambda: "back")) == "back"


def test_the_first_lookup_may_also_open_the_store():
    limiter = OnlineLimiter(capacity=1, deadline_s=0.1, open_s=1.0)
    assert asyncio.run(limiter.run(lambda: time.sleep(0.3) or "opened")) == "opened"  # 0.1 + 1.0 s
    with pytest.raises(ServiceUnavailableError, match=r"deadline of 0\.1 s \(HM_ONLINE_DEADLINE_S\)"):
        asyncio.run(limiter.run(time.sleep, 0.3))  # opened: the deadline alone


def test_errors_of_the_lookup_reach_the_caller():
    limiter = OnlineLimiter(capacity=1, deadline_s=1.0, open_s=0.0)

    def fail() -> None:
        raise ConfigError("bad")

    with pytest.raises(ConfigError, match="bad"):
        asyncio.run(limiter.run(fail))


@pytest.mark.parametrize("capacity, deadline", [(0, 0.5), (4, 0.0), (4, -1.0)])
def test_impossible_limits_are_refused(capacity, deadline):
    with pytest.raises(ConfigError, match="HM_ONLINE_MAX_CONCURRENT >= 1 and HM_ONLINE_DEADLINE_S > 0"):
        OnlineLimiter(capacity=capacity, deadline_s=deadline, open_s=0.0)
