"""Online lookups of the API under their own concurrency limit and deadline, off the shared threadpool.

A synchronous endpoint runs on Starlette's threadpool (40 threads shared by every sync endpoint
and dependency). Online lookups wait on Redis: when it hangs, lookups holding those threads would
stall `/health` and every other endpoint. So `features/extract` runs its lookup here instead:

- on this module's own threads, at most HM_ONLINE_MAX_CONCURRENT at a time per process; a lookup
  that finds them all busy waits for one, within its deadline, first come first served (a freed
  slot is handed to the longest waiting lookup, never taken by one arriving meanwhile);
- within HM_ONLINE_DEADLINE_S from its arrival (waiting for a thread included); past it the
  caller gets ServiceUnavailableError (HTTP 503) naming the limit and its setting. The reader's
  Redis client times out after the same deadline, so the abandoned thread frees itself then;
  its slot stays taken until it does, so the threads never exceed the limit.
- the first lookup of a process also opens the online store (Feast's registry, Postgres and
  Redis checks): that step gets HM_CONNECT_TIMEOUT_S more.
- `run_async` holds a slot for a lookup through the pipelined Redis connection of the caller's loop
  (once the reader's plan is resolved): the same limit and deadline, no thread; past the
  deadline the lookup is cancelled and its slot freed at once.

One limiter per settings per process (`limiter_for`); it serves any event loop: a lookup waiting
for a slot sleeps on a future of its own loop, woken (thread-safely) when a slot frees.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from healthmate_features.config import Settings
from healthmate_features.errors import ConfigError, ServiceUnavailableError

T = TypeVar("T")
_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


if sys.version_info >= (3, 11):

    async def _by(awaitable: Awaitable[T], deadline: float) -> T:
        """`await awaitable`, cancelled at `deadline` (loop time) with TimeoutError: on 3.11+ a timer on
        the caller's own task (`asyncio.timeout_at`), where `wait_for` wrapped a coroutine in a task of
        its own, a few loop iterations and a task per lookup more."""
        async with asyncio.timeout_at(deadline):
            return await awaitable

else:

    async def _by(awaitable: Awaitable[T], deadline: float) -> T:
        """`await awaitable`, cancelled at `deadline` (loop time) with TimeoutError."""
        try:
            return await asyncio.wait_for(awaitable, max(0.0, deadline - asyncio.get_running_loop().time()))
        except asyncio.TimeoutError as exc:  # not the builtin TimeoutError before 3.11
            raise TimeoutError from exc


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # a limiter thread
        return None


class OnlineLimiter:
    """At most `capacity` lookups at once on dedicated threads, each answered within `deadline_s`."""

    def __init__(self, *, capacity: int, deadline_s: float, open_s: float) -> None:
        """Raises ConfigError for a capacity below 1 or a deadline that is not positive."""
        if capacity < 1 or not deadline_s > 0:
            raise ConfigError(
                f"online lookups need HM_ONLINE_MAX_CONCURRENT >= 1 and HM_ONLINE_DEADLINE_S > 0; "
                f"got {capacity} and {deadline_s:g}"
            )
        self.capacity, self.deadline_s, self.open_s = capacity, deadline_s, open_s
        self._lock = threading.Lock()
        self._free = capacity  # slots not held by a running (or abandoned, still running) lookup
        self._waiters: deque[_Waiter] = deque()
        self._pool = ThreadPoolExecutor(max_workers=capacity, thread_name_prefix="hm-online")
        self._opened = False  # a lookup succeeded: the online store is open

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on a limiter thread; its result, or its exception.

        Raises ServiceUnavailableError when no thread frees up or no result arrives within the deadline."""
        loop = asyncio.get_running_loop()
        budget = self.deadline_s if self._opened else self.deadline_s + self.open_s
        deadline = loop.time() + budget
        if not await self._acquire(loop, deadline):
            raise ServiceUnavailableError(self._busy(budget))
        try:
            future: Future[T] = self._pool.submit(fn, *args, **kwargs)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._done)
        try:
            return await _by(asyncio.wrap_future(future), deadline)
        except TimeoutError as exc:
            raise ServiceUnavailableError(self._late(budget)) from exc

    async def run_async(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """`await fn(*args, **kwargs)` on the caller's event loop under the same slots and deadline
        as `run` (a lookup through an asyncio client: no thread). Past the deadline it is cancelled,
        which frees its slot at once. Raises ServiceUnavailableError as `run` does."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline_s
        if not await self._acquire(loop, deadline):
            raise ServiceUnavailableError(self._busy(self.deadline_s))
        try:
            return await _by(fn(*args, **kwargs), deadline)
        except TimeoutError as exc:
            raise ServiceUnavailableError(self._late(self.deadline_s)) from exc
        finally:
            self._release()

    def _busy(self, budget: float) -> str:
        return (
            f"online lookup refused: all {self.capacity} online lookup slots of this process "
            f"(HM_ONLINE_MAX_CONCURRENT) stayed busy for {budget:g} s (HM_ONLINE_DEADLINE_S); "
            "the online store (Redis) may be slow or hung; retry later"
        )

    def _late(self, budget: float) -> str:
        return (
            f"online lookup took longer than its deadline of {budget:g} s (HM_ONLINE_DEADLINE_S"
            + (", plus HM_CONNECT_TIMEOUT_S for opening the online store" if budget > self.deadline_s else "")
            + "); the online store (Redis) may be slow or hung; retry later"
        )

    async def _acquire(self, loop: asyncio.AbstractEventLoop, deadline: float) -> bool:
        """Take a slot, waiting until `deadline` (loop time) at most; False if none freed up.

        Waiting lookups are served first come, first served: a freed slot is handed to the
        longest waiting one (`_release`), never taken by a lookup that arrives meanwhile."""
        with self._lock:
            if self._free > 0:  # only while nobody waits: a freed slot goes to a waiter first
                self._free -= 1
                return True
            waiter: _Waiter = (loop, loop.create_future())
            self._waiters.append(waiter)
        try:
            await _by(waiter[1], deadline)
            return True  # handed a slot
        except TimeoutError:
            with self._lock:
                handed = waiter not in self._waiters
                if not handed:
                    self._waiters.remove(waiter)
            if handed:  # a slot reached this waiter as it gave up: pass it on
                self._release()
            return False

    def _release(self) -> None:
        """Free a slot: hand it to the longest waiting lookup, else keep it free (from any thread)."""
        while True:
            with self._lock:
                if not self._waiters:
                    self._free += 1
                    return
                loop, future = self._waiters.popleft()
            try:
                if loop is _running_loop():  # released on the waiter's own loop (run_async): no self-pipe write
                    loop.call_soon(_wake, future)
                else:
                    loop.call_soon_threadsafe(_wake, future)
                return
            except RuntimeError:  # its event loop is closed: the next one
                continue

    def _done(self, future: Future) -> None:
        if not future.cancelled() and future.exception() is None:
            self._opened = True
        self._release()


_limiters: dict[Settings, OnlineLimiter] = {}
_limiters_lock = threading.Lock()


def limiter_for(settings: Settings) -> OnlineLimiter:
    """The process's OnlineLimiter for `settings` (created on first use)."""
    with _limiters_lock:
        limiter = _limiters.get(settings)
        if limiter is None:
            limiter = _limiters[settings] = OnlineLimiter(
                capacity=settings.online_max_concurrent,
                deadline_s=settings.online_deadline_s,
                open_s=settings.connect_timeout_s,
            )
        return limiter
