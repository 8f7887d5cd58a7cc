"""Append-only audit log of API requests: who called what, on which target, with what outcome.

An entry holds exactly: time, key id, role, endpoint, target, outcome (HTTP status) and
latency in ms. Nothing else can be written, so no health values or other PHI end up in the log:
`write` takes only those fields, the endpoint is a path without a query string, and the target
is a `kind:identifier` reference (`user:42`, `dataset:health_risk@v3`), never free text.
The store refuses UPDATE, DELETE (and on Postgres TRUNCATE) of audit_log with a trigger, and
this module offers no way to change or remove an entry. Every entry is chained to the one before
by a SHA-256 hash (`access.audit_chain`: encoding, checkpoints, `verify`), so an edit made past
the triggers shows.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from healthmate_features.access import audit_chain
from healthmate_features.access.keys import KEY_ID_PATTERN, ROLES
from healthmate_features.backends.sqlstore import SqlStore, read_ts, utcnow
from healthmate_features.errors import AuditError
from healthmate_features.monitoring import metrics

ENDPOINT_PATTERN = re.compile(r"^(?:(?:GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) )?/[A-Za-z0-9_./{}-]{0,200}$")
TARGET_PATTERN = re.compile(r"^[a-z][a-z_]{0,31}:[A-Za-z0-9_.@-]{1,128}$")
MAX_QUERY_LIMIT = 10_000
log = logging.getLogger(__name__)
_INSERT = (
    "INSERT INTO audit_log (at, key_id, role, endpoint, target, status, latency_ms, prev_hash, row_hash) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class AuditEntry:
    """One audited request."""

    id: int
    at: datetime
    key_id: str | None
    role: str | None
    endpoint: str
    target: str | None
    status: int
    latency_ms: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (timestamp as ISO 8601)."""
        return {**asdict(self), "at": self.at.isoformat()}


class AuditLog:
    """Writes and queries the audit_log table of a SQL store (see `backends.open_sql_store`).

    With `checkpoints`, the chain's head is appended to that file whenever a write passes a
    multiple of `checkpoint_every` ids (`audit_chain.Checkpoints`)."""

    def __init__(
        self,
        store: SqlStore,
        *,
        checkpoints: audit_chain.Checkpoints | None = None,
        checkpoint_every: int = 1000,
    ) -> None:
        self.store = store
        self.checkpoints = checkpoints
        self.checkpoint_every = max(1, checkpoint_every)

    def append_chained(self, rows: Sequence[tuple[Any, ...]]) -> int:
        """Insert rows made by `entry`, chained, in one transaction; return the last one's id (0 for
        several rows without checkpoints: not looked up).

        The chain's lock is taken and its head read inside the transaction, so writers in other
        processes extend the same chain. Side effect: a checkpoint when the ids pass a multiple
        of checkpoint_every (a failure to write it is logged, the rows stay committed)."""
        with self.store.transaction():
            audit_chain.lock_chain(self.store)
            head_id, head = audit_chain.chain_head(self.store)
            chained = []
            for row in rows:
                row_hash = audit_chain.chain_hash(head, row)
                chained.append((*row, head, row_hash))
                head = row_hash
            if len(chained) == 1:
                last_id = self.store.insert(_INSERT, chained[0])
            else:
                self.store.execute_many(_INSERT, chained)
                last_id = 0
                if self.checkpoints is not None:  # only a checkpoint needs the id (the lock keeps it ours)
                    last_id = int(self.store.query("SELECT MAX(id) AS id FROM audit_log")[0]["id"])
        if self.checkpoints is not None and last_id // self.checkpoint_every != head_id // self.checkpoint_every:
            try:
                self.checkpoints.append(self.store, (last_id, head))
            except OSError as exc:
                log.error("could not append the audit chain's head to %s: %s", self.checkpoints.path, exc)
        return last_id

    def write(
        self,
        *,
        endpoint: str,
        status: int,
        latency_ms: float,
        key_id: str | None = None,
        role: str | None = None,
        target: str | None = None,
        at: datetime | None = None,
    ) -> int:
        """Append one entry and return its id; key_id and role are None for unauthenticated calls.

        Side effect: one row in audit_log; the write's time is observed in
        healthmate_audit_write_duration_seconds, a failure counted in healthmate_audit_write_errors_total.
        Raises AuditError (writing nothing) when a field is outside its shape: an endpoint with a
        query string, a target that is not `kind:identifier`, a status outside 100-599, a negative
        or non-finite latency."""
        started = time.perf_counter()
        try:
            row = self.entry(
                endpoint=endpoint, status=status, latency_ms=latency_ms, key_id=key_id, role=role, target=target, at=at
            )
            return self.append_chained([row])
        except Exception:
            metrics.AUDIT_WRITE_ERRORS.inc()
            raise
        finally:
            metrics.AUDIT_WRITE_SECONDS.observe(time.perf_counter() - started)

    def write_many(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Append entries made by `entry`, all in one transaction (one commit); a group commit.

        Side effects: the rows in audit_log, or none of them (AUDIT_WRITE_ERRORS counts each row
        lost); the transaction's time observed in healthmate_audit_write_duration_seconds."""
        if not rows:
            return
        started = time.perf_counter()
        try:
            self.append_chained(rows)
        except Exception:
            metrics.AUDIT_WRITE_ERRORS.inc(len(rows))
            raise
        finally:
            metrics.AUDIT_WRITE_SECONDS.observe(time.perf_counter() - started)

    @staticmethod
    def entry(
        *,
        endpoint: str,
        status: int,
        latency_ms: float,
        key_id: str | None = None,
        role: str | None = None,
        target: str | None = None,
        at: datetime | None = None,
    ) -> tuple[Any, ...]:
        """One entry checked and made into a row for `write_many` (time: `at`, or now).

        Raises AuditError for a field outside its shape, as `write` does."""
        if not isinstance(endpoint, str) or not ENDPOINT_PATTERN.match(endpoint):
            raise AuditError(
                "audit endpoint must be an optional HTTP method and a path without query string, "
                f"e.g. 'GET /api/v1/ml-data-preparation/features/extract' (got {len(str(endpoint))} chars)"
            )
        if target is not None and (not isinstance(target, str) or not TARGET_PATTERN.match(target)):
            raise AuditError(
                "audit target must be kind:identifier, e.g. 'user:42' or 'dataset:health_risk@v3' "
                "(no free text, it could carry health data)"
            )
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise AuditError(f"audit status {status!r} is not an HTTP status code (100-599)")
        if (
            isinstance(latency_ms, bool)
            or not isinstance(latency_ms, (int, float))
            or not math.isfinite(latency_ms)
            or latency_ms < 0
        ):
            raise AuditError(f"audit latency_ms {latency_ms!r} must be a finite number >= 0")
        if key_id is not None and (not isinstance(key_id, str) or not KEY_ID_PATTERN.match(key_id)):
            raise AuditError(f"audit key_id must look like hmk_<16 hex> or be None (got {len(str(key_id))} chars)")
        if role is not None and role not in ROLES:
            raise AuditError(f"audit role {role!r} is unknown; use one of {', '.join(ROLES)} or None")
        if at is not None and at.tzinfo is None:
            raise AuditError(f"audit time {at.isoformat()} has no time zone; pass an aware datetime")
        return (at or utcnow(), key_id, role, endpoint, target, status, float(latency_ms))

    def query(
        self,
        *,
        key_id: str | None = None,
        endpoint: str | None = None,
        target: str | None = None,
        status: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Entries matching every given filter, newest first, at most `limit` (1-10000).

        `since` is inclusive, `until` exclusive; both must be timezone-aware."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_QUERY_LIMIT:
            raise AuditError(f"audit query limit {limit!r} must be an integer in 1..{MAX_QUERY_LIMIT}")
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("key_id", key_id), ("endpoint", endpoint), ("target", target), ("status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        for op, moment in ((">=", since), ("<", until)):
            if moment is not None:
                if moment.tzinfo is None:
                    raise AuditError(f"audit query time {moment.isoformat()} has no time zone")
                clauses.append(f"at {op} ?")
                params.append(moment)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.store.query(
            "SELECT id, at, key_id, role, endpoint, target, status, latency_ms FROM audit_log"
            f"{where} ORDER BY at DESC, id DESC LIMIT {limit}",
            params,
        )
        return [
            AuditEntry(
                id=int(r["id"]),
                at=read_ts(r["at"]),
                key_id=r["key_id"],
                role=r["role"],
                endpoint=r["endpoint"],
                target=r["target"],
                status=int(r["status"]),
                latency_ms=float(r["latency_ms"]),
            )
            for r in rows
        ]


class AuditWriter:
    """Group commit for a server: each request hands its entry over and waits until it is durable.

    `await write(...)` checks the entry at once (AuditError, nothing queued), queues it, and
    returns when the transaction holding it has committed. One batch at a time is written, in a
    thread of its own (`AuditLog.write_many`); entries that arrive meanwhile form the next batch,
    so under load one commit (one fsync) carries many requests' rows, and no row is acknowledged
    before it is on disk. A batch that fails is tried once more; then each of its waiters gets
    AuditError (counted in healthmate_audit_write_errors_total, the cause in the server log).
    """

    def __init__(self, audit: AuditLog, *, max_batch: int = 500) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.audit = audit
        self.max_batch = max_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        self._queues: Any = weakref.WeakKeyDictionary()  # event loop -> its queue and writer state

    async def write(self, **fields: Any) -> None:
        """Append one entry (the fields of `AuditLog.write`); return once it is committed.

        Raises AuditError when the entry is invalid or could not be committed."""
        try:
            row = self.audit.entry(**fields)
        except AuditError:
            metrics.AUDIT_WRITE_ERRORS.inc()
            raise
        loop = asyncio.get_running_loop()
        state = self._queues.get(loop)
        if state is None:
            state = self._queues[loop] = {"pending": [], "running": False}
        done = loop.create_future()
        state["pending"].append((row, done))
        if not state["running"]:
            state["running"] = True
            loop.create_task(self._drain(loop, state))
        await asyncio.shield(done)

    async def _drain(self, loop: asyncio.AbstractEventLoop, state: dict[str, Any]) -> None:
        try:
            while state["pending"]:
                batch, state["pending"] = state["pending"][: self.max_batch], state["pending"][self.max_batch :]
                rows = [row for row, _ in batch]
                error: BaseException | None = None
                try:
                    await loop.run_in_executor(self._executor, self._write_retrying, rows)
                except Exception as exc:
                    error = exc
                    log.error("could not write an audit batch of %d rows: %s", len(rows), exc)
                for _, done in batch:
                    if done.done():
                        continue
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(AuditError(f"the audit log could not be written: {error}"))
        finally:
            state["running"] = False

    def _write_retrying(self, rows: list[tuple[Any, ...]]) -> None:
        started = time.perf_counter()
        try:
            self.audit.append_chained(rows)
            metrics.AUDIT_WRITE_SECONDS.observe(time.perf_counter() - started)
            return
        except Exception as exc:  # a lost Postgres connection: the store reconnects on the next call
            log.warning("audit batch of %d rows failed, trying once more: %s", len(rows), exc)
        self.audit.write_many(rows)  # counts and observes like any write

    def close(self) -> None:
        """Stop the writer thread once the batches in progress are written."""
        self._executor.shutdown(wait=True)
