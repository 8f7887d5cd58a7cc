"""Named locks that expire when their holder dies: leases, renewed while the holder lives.

One materialization per feature view and one build per dataset at a time, across processes and
machines, without a lock that outlives a killed process: a lease is taken for `ttl_s` seconds and
renewed every `ttl_s / 3` by a thread of the holder; a holder killed with SIGKILL stops renewing
and its lease lapses at most `ttl_s` later, when the next caller takes it.

Two implementations behind one interface (`Leases`), chosen by the profile's Backend:

    SqlLeases    a row per lock in the SQL store's `leases` table (SQLite or Postgres)
    RedisLeases  a key per lock: SET NX PX, renewed and released only by its holder (Lua)

`hold(leases, name, ...)` is the context manager callers use (through `Backend.lock`).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from healthmate_features.errors import LockTimeoutError

if TYPE_CHECKING:
    from healthmate_features.backends.sqlstore import SqlStore

log = logging.getLogger(__name__)


def holder_id() -> str:
    """A new holder identity: host, process and a random part (two holds in one process differ)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leases(ABC):
    """Named leases: take, renew and give back; every call is atomic on the server."""

    description: str

    @abstractmethod
    def try_acquire(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take `name` for `ttl_s` seconds if it is free or its lease lapsed; True when taken."""

    @abstractmethod
    def renew(self, name: str, holder: str, ttl_s: float) -> bool:
        """Extend `holder`'s lease on `name` by `ttl_s` from now; False if it no longer holds it."""

    @abstractmethod
    def release(self, name: str, holder: str) -> None:
        """Give `name` back, if `holder` still holds it."""

    @abstractmethod
    def holder(self, name: str) -> str | None:
        """Who holds `name` now (None when free or lapsed), for messages and tests."""

    def close(self) -> None:  # noqa: B027  (a hook: most implementations hold nothing)
        """Close connections."""


class SqlLeases(Leases):
    """Leases as rows of the SQL store's `leases` table: one statement per take, renewal or release."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.description = store.description

    def try_acquire(self, name: str, holder: str, ttl_s: float) -> bool:
        from healthmate_features.backends.sqlstore import utcnow

        now = utcnow()
        taken = self.store.execute(
            "INSERT INTO leases (name, holder, acquired_at, expires_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, acquired_at = excluded.acquired_at, "
            "expires_at = excluded.expires_at WHERE leases.expires_at < ?",
            (name, holder, now, now + timedelta(seconds=ttl_s), now),
        )
        return taken == 1

    def renew(self, name: str, holder: str, ttl_s: float) -> bool:
        from healthmate_features.backends.sqlstore import utcnow

        now = utcnow()
        return (
            self.store.execute(
                "UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ? AND expires_at >= ?",
                (now + timedelta(seconds=ttl_s), name, holder, now),
            )
            == 1
        )

    def release(self, name: str, holder: str) -> None:
        self.store.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    def holder(self, name: str) -> str | None:
        from healthmate_features.backends.sqlstore import utcnow

        rows = self.store.query("SELECT holder FROM leases WHERE name = ? AND expires_at >= ?", (name, utcnow()))
        return rows[0]["holder"] if rows else None

    def close(self) -> None:
        self.store.close()


_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class RedisLeases(Leases):
    """Leases as Redis keys `<prefix>lock:<name>` holding the holder's id, with a PX expiry.

    `errors(fail_fast=...)` wraps every command (e.g. to turn a timeout into an error naming its
    limit); a release passes `fail_fast=True`: it may give up at once on a server that just timed out."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str,
        description: str,
        errors: Callable[..., AbstractContextManager[None]] = lambda fail_fast=False: nullcontext(),
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.description = description
        self.errors = errors

    def _key(self, name: str) -> str:
        return f"{self.prefix}lock:{name}"

    def try_acquire(self, name: str, holder: str, ttl_s: float) -> bool:
        with self.errors():
            return bool(self.client.set(self._key(name), holder, nx=True, px=max(1, int(ttl_s * 1000))))

    def renew(self, name: str, holder: str, ttl_s: float) -> bool:
        with self.errors():
            return bool(self.client.eval(_RENEW, 1, self._key(name), holder, max(1, int(ttl_s * 1000))))

    def release(self, name: str, holder: str) -> None:
        with self.errors(fail_fast=True):
            self.client.eval(_RELEASE, 1, self._key(name), holder)

    def holder(self, name: str) -> str | None:
        with self.errors():
            value = self.client.get(self._key(name))
        return value.decode() if isinstance(value, bytes) else value

    def close(self) -> None:
        self.client.close()


@dataclass
class Lease:
    """A held lock. `lost` turns true if a renewal found the lease taken over (the holder stalled
    longer than its ttl); the work goes on, and the log says so."""

    name: str
    holder: str
    acquired_at: float
    waited_s: float
    lost: bool = False


@contextmanager
def hold(
    leases: Leases,
    name: str,
    *,
    ttl_s: float,
    wait_s: float,
    poll_s: float = 0.25,
    on_wait: Callable[[str | None], None] | None = None,
) -> Iterator[Lease]:
    """Hold the lock `name` for the block: wait up to `wait_s` for it, renew it every `ttl_s / 3`.

    Raises LockTimeoutError (naming the lock and its holder) when it stays taken for `wait_s`.
    `on_wait(holder)` is called once when the lock is busy at first. Side effects: a renewal
    thread while the block runs; the lock is released when the block ends, however it ends."""
    me = holder_id()
    started = time.monotonic()
    waited = False
    while not leases.try_acquire(name, me, ttl_s):
        if not waited and on_wait is not None:
            on_wait(leases.holder(name))
        waited = True
        if time.monotonic() - started >= wait_s:
            raise LockTimeoutError(
                f"lock {name!r} ({leases.description}) is still held by {leases.holder(name) or 'another process'} "
                f"after waiting {wait_s:g} s; it frees when that work ends, or at most "
                f"{ttl_s:g} s (HM_JOB_LEASE_S) after its holder died; try again later"
            )
        time.sleep(poll_s * (0.5 + random.random()))
    lease = Lease(name, me, acquired_at=time.time(), waited_s=round(time.monotonic() - started, 3))
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl_s / 3):
            try:
                if not leases.renew(name, me, ttl_s) and not stop.is_set():  # set: released meanwhile
                    lease.lost = True
                    log.warning(
                        "lock %s: the lease lapsed and was taken over (this holder stalled > %g s)", name, ttl_s
                    )
                    return
            except Exception:  # a server hiccup: try again at the next beat, before the lease lapses
                log.warning("lock %s: renewing the lease failed", name, exc_info=True)

    thread = threading.Thread(target=renew, name=f"lease-{name}", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        try:  # before joining a renewal that may be waiting on a hung server: one wait, not two
            leases.release(name, me)
        except Exception:  # the lease lapses by itself within ttl_s
            log.warning("lock %s: releasing failed; it lapses within %g s", name, ttl_s, exc_info=True)
        thread.join()
