"""Tamper evidence for the audit log: a SHA-256 hash chain, head checkpoints outside the database, verification.

The chain (SQL migration 7). Every audit row written after the migration carries
`prev_hash`, the `row_hash` of the row before it in id order (GENESIS, 64 zeros, for the first
chained row), and `row_hash = chain_hash(prev_hash, fields)`:

    SHA-256( prev_hash as 64 lowercase hex characters, "\\n", canonical(fields) ), as lowercase hex

`canonical(fields)` is the UTF-8 of a compact JSON array (no spaces: separators "," and ":") of
the row's fields in this order:

    [at, key_id, role, endpoint, target, status, latency_ms]

`at` as "YYYY-MM-DDTHH:MM:SS.ffffffZ" (UTC, always six fractional digits); key_id, role, target
as JSON strings or null (None); endpoint a JSON string; status a JSON integer; latency_ms a JSON
number written as Python's shortest round-trip repr of the float (e.g. 12.5, 3.0). The id is not
hashed: the order is what prev_hash carries. A receiver of `audit export` recomputes row_hash
from these rules alone.

Writers (`AuditLog`) read the head and insert in one transaction under a lock that every writer
of the database takes (Postgres: a transaction-scoped advisory lock per schema; SQLite:
BEGIN IMMEDIATE), so processes writing the same table extend one chain. Rows written before
the migration (ids up to `audit_chain.unchained_through`) are "unchained": nothing proves they
are unchanged.

Checkpoints. A chain shows edits, deletions, insertions and reorderings inside it, but not a
tail cut off, nor a chain recomputed from an edited row onwards by someone who can write the
table. So the head (id, hash, time) is appended now and then (every HM_AUDIT_CHECKPOINT_EVERY
rows by the API, and on every `audit verify` and `audit export`) to a JSON-lines file outside
the database (HM_AUDIT_CHECKPOINTS, default data/audit-checkpoints.jsonl), opened O_APPEND;
`verify` checks that every checkpointed row still exists with the checkpointed hash. Keep that
file where the database role cannot write (another host, a WORM bucket, an append-only mount).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from healthmate_features.backends.sqlstore import SqlStore, read_ts, utcnow
from healthmate_features.errors import AuditError

GENESIS = "0" * 64
_PG_CHAIN_LOCK = 0x686D6175  # advisory lock key (with the schema's hash): one chain writer at a time
_PAGE = 5000
log = logging.getLogger(__name__)
FIELDS = ("at", "key_id", "role", "endpoint", "target", "status", "latency_ms")


def canonical_time(at: datetime) -> str:
    """`at` in the chain's timestamp format: UTC, microseconds, a trailing Z."""
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(fields: Sequence[Any]) -> bytes:
    """The bytes hashed for one row: its fields (FIELDS order) as a compact JSON array (module docstring)."""
    at, key_id, role, endpoint, target, status, latency_ms = fields
    value = [canonical_time(at), key_id, role, endpoint, target, int(status), float(latency_ms)]
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def chain_hash(prev_hash: str, fields: Sequence[Any]) -> str:
    """row_hash of a row with `fields` (FIELDS order) after a row whose hash is `prev_hash`."""
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(fields)).hexdigest()


def lock_chain(store: SqlStore) -> None:
    """Take the chain's write lock for the store's current transaction (Postgres; SQLite's BEGIN IMMEDIATE has it)."""
    if store.dialect == "postgres":
        store.execute("SELECT pg_advisory_xact_lock(?, hashtext(current_schema()))", (_PG_CHAIN_LOCK,))


def chain_head(store: SqlStore) -> tuple[int, str]:
    """(id, row_hash) of the last chained row, or (unchained_through, GENESIS) when there is none."""
    rows = store.query("SELECT id, row_hash FROM audit_log WHERE row_hash IS NOT NULL ORDER BY id DESC LIMIT 1")
    if rows:
        return int(rows[0]["id"]), str(rows[0]["row_hash"])
    return unchained_through(store), GENESIS


def unchained_through(store: SqlStore) -> int:
    """The last id written before the chain started (migration 7); 0 when the log was empty then."""
    rows = store.query("SELECT unchained_through FROM audit_chain WHERE name = 'audit_log'")
    return int(rows[0]["unchained_through"]) if rows else 0


def store_identity(store: SqlStore) -> str:
    """What names a store in the checkpoint file: `sqlite` (one per data directory) or Postgres host:port/db/schema."""
    return "sqlite" if store.dialect == "sqlite" else f"{store.description}/{store.schema}"


@dataclass(frozen=True)
class Checkpoint:
    """The chain's head as it was at `written_at`: row `id` existed with hash `row_hash`."""

    store: str
    id: int
    row_hash: str
    written_at: str


class Checkpoints:
    """The append-only JSON-lines file of chain heads (module docstring); one line per checkpoint."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, store: SqlStore, head: tuple[int, str]) -> Checkpoint:
        """Append `head` of `store` as one line (O_APPEND, fsynced) unless it is the file's last one for that store.

        Side effect: creates the file (mode 0640) and its directory when missing."""
        last = self.read(store)
        if last and (last[-1].id, last[-1].row_hash) == head:
            return last[-1]
        point = Checkpoint(store_identity(store), head[0], head[1], canonical_time(utcnow()))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, (json.dumps(asdict(point), separators=(",", ":")) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return point

    def read(self, store: SqlStore) -> list[Checkpoint]:
        """The checkpoints of `store`, in the file's order. Raises AuditError naming the line of a damaged file."""
        if not self.path.exists():
            return []
        ident = store_identity(store)
        found: list[Checkpoint] = []
        with self.path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    point = Checkpoint(**json.loads(line))
                except (ValueError, TypeError) as exc:
                    raise AuditError(
                        f"audit checkpoint file {self.path.name} line {number} is not a checkpoint ({exc}); "
                        "the file was damaged or edited: restore it from its copy"
                    ) from exc
                if point.store == ident:
                    found.append(point)
        return found


@dataclass(frozen=True)
class Verification:
    """What `verify` found: `ok`, or the first `problem` (kind, row id, message)."""

    ok: bool
    chained_rows: int
    unchained_through: int
    head_id: int | None
    head_hash: str | None
    checkpoints_checked: int
    problem_kind: str | None = None  # edited | deleted | inserted | reordered | truncated
    problem_id: int | None = None
    problem: str | None = None
    checkpoint: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _rows(store: SqlStore, after: int) -> Iterator[dict[str, Any]]:
    """Audit rows with id > `after`, in id order, a page at a time."""
    while True:
        page = store.query(
            "SELECT id, at, key_id, role, endpoint, target, status, latency_ms, prev_hash, row_hash "
            f"FROM audit_log WHERE id > ? ORDER BY id LIMIT {_PAGE}",
            (after,),
        )
        yield from page
        if len(page) < _PAGE:
            return
        after = int(page[-1]["id"])


def row_fields(row: dict[str, Any]) -> tuple[Any, ...]:
    """A stored row's hashed fields in FIELDS order."""
    return (
        read_ts(row["at"]),
        row["key_id"],
        row["role"],
        row["endpoint"],
        row["target"],
        int(row["status"]),
        float(row["latency_ms"]),
    )


def verify(store: SqlStore, checkpoints: Checkpoints | None = None, *, record: bool = False) -> Verification:
    """Walk the chain in id order and return the first break, or ok; compare every checkpoint on the way.

    Side effect: with `record`, an intact chain's head is appended to `checkpoints`.
    A break is named by the first row it shows at and classified: `edited` (a row's
    fields no longer match its hash, or its hash was recomputed), `deleted` (a row's predecessor
    is gone), `inserted` (a row that is not part of the chain), `reordered` (rows swapped),
    `truncated` (a checkpointed row is gone from the end)."""
    start = unchained_through(store)
    points = checkpoints.read(store) if checkpoints is not None else []
    pending = sorted(points, key=lambda p: p.id)
    expected, prev_id, count = GENESIS, start, 0
    head: tuple[int, str] | None = None

    def broken(kind: str, row_id: int, message: str, point: Checkpoint | None = None) -> Verification:
        return Verification(
            False,
            count,
            start,
            head[0] if head else None,
            head[1] if head else None,
            len(points),
            kind,
            row_id,
            message,
            asdict(point) if point else None,
        )

    for row in _rows(store, start):
        row_id = int(row["id"])
        while pending and pending[0].id < row_id:
            point = pending.pop(0)
            if point.id > prev_id:
                return broken(
                    "deleted",
                    point.id,
                    f"audit row {point.id} is gone: the checkpoint written {point.written_at} says it existed "
                    f"(the log goes from id {prev_id} to id {row_id})",
                    point,
                )
        prev_hash, row_hash = row["prev_hash"], row["row_hash"]
        if prev_hash is None or row_hash is None:
            return broken(
                "inserted",
                row_id,
                f"audit row {row_id} has no hash although the chain started after id {start}: "
                "it was inserted outside the package (or its hashes were erased)",
            )
        if prev_hash != expected:
            later = store.query("SELECT id FROM audit_log WHERE row_hash = ? AND id > ? LIMIT 1", (prev_hash, row_id))
            earlier = store.query("SELECT id FROM audit_log WHERE row_hash = ? AND id < ? LIMIT 1", (prev_hash, row_id))
            if later:
                return broken(
                    "reordered",
                    row_id,
                    f"audit row {row_id} is out of order: its content follows row {later[0]['id']}, "
                    "which comes after it (rows were swapped or renumbered)",
                )
            if earlier and int(earlier[0]["id"]) < prev_id:
                return broken(
                    "inserted",
                    prev_id,
                    f"audit row {prev_id} was inserted: it and row {row_id} both follow row {earlier[0]['id']}",
                )
            if prev_id == start:
                return broken(
                    "deleted",
                    row_id,
                    f"audit row {row_id} is not the start of the chain (after id {start}): "
                    "the rows before it were deleted",
                )
            return broken(
                "deleted",
                row_id,
                f"audit row {row_id} does not follow row {prev_id}: a row between them was deleted, "
                f"or row {prev_id} was rewritten with a recomputed hash",
            )
        if chain_hash(prev_hash, row_fields(row)) != row_hash:
            return broken(
                "edited",
                row_id,
                f"audit row {row_id} was edited: its fields no longer match its hash",
            )
        while pending and pending[0].id == row_id:
            point = pending.pop(0)
            if point.row_hash != row_hash:
                return broken(
                    "edited",
                    row_id,
                    f"audit row {row_id} differs from the checkpoint written {point.written_at}: "
                    "the chain was rewritten from this row or an earlier one",
                    point,
                )
        expected, prev_id, count = row_hash, row_id, count + 1
        head = (row_id, row_hash)
    if pending:
        point = pending[-1]
        return broken(
            "truncated",
            point.id,
            f"the audit log ends at id {prev_id} but the checkpoint written {point.written_at} says id "
            f"{point.id} existed: rows after id {prev_id} were deleted",
            point,
        )
    if record and checkpoints is not None and head is not None:
        checkpoints.append(store, head)
    return Verification(True, count, start, head[0] if head else None, head[1] if head else None, len(points))


def export_rows(store: SqlStore, *, since: datetime, until: datetime | None = None) -> Iterator[dict[str, Any]]:
    """Audit rows with since <= at < until (until: no end), in id order, as JSON-ready dicts with their hashes.

    `at` is in the chain's format, so a receiver recomputes each row_hash from the row and its
    prev_hash (module docstring). Raises AuditError for a time without a time zone."""
    for moment in (since, until):
        if moment is not None and moment.tzinfo is None:
            raise AuditError(f"audit export time {moment.isoformat()} has no time zone; e.g. 2026-01-01T00:00:00+00:00")
    after = 0
    bounds = "at >= ?" + (" AND at < ?" if until is not None else "")
    params: list[Any] = [since] + ([until] if until is not None else [])
    while True:
        page = store.query(
            "SELECT id, at, key_id, role, endpoint, target, status, latency_ms, prev_hash, row_hash "
            f"FROM audit_log WHERE id > ? AND {bounds} ORDER BY id LIMIT {_PAGE}",
            [after, *params],
        )
        for row in page:
            fields = row_fields(row)
            yield {
                "id": int(row["id"]),
                **dict(zip(FIELDS, fields, strict=True)),
                "at": canonical_time(fields[0]),
                "prev_hash": row["prev_hash"],
                "row_hash": row["row_hash"],
            }
        if len(page) < _PAGE:
            return
        after = int(page[-1]["id"])
