"""The erasure ledger: who was erased, kept as keyed hashes in the SQL store, and the key behind them.

A person's user id is never stored: the ledger keeps `HMAC-SHA256(key, "user_id:<id>")` (the
*subject*) and a fingerprint of the key (`key_id`), one row per erased person in table
`erasures` (migration 6), with the erasure's id, status (pending until every store is done),
reason, actor, times and its report (the certificate: counts per store, no health values).

The key is HM_ERASURE_KEY when set, else the key file `Settings.erasure_key_path`
(`.healthmate/erasure.key` in the repository, created on first use with mode 0600): outside
`data/`, so a copy of `data/` (which holds the ledger) does not carry the key, and user ids,
being small integers, cannot be found from the hashes by trying them all without it.

Ingest and the training-set builder ask `erased_among(ids)` which of the ids they see were
erased; with an empty ledger that needs no key. The ledger sits beside the SQL store (below
`raw` and `training`, which read it); `governance.erasure` writes it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from healthmate_features.backends.sqlstore import SqlStore, read_json, read_ts, utcnow
from healthmate_features.config import Settings
from healthmate_features.errors import ConfigError, ErasureNotFoundError
from healthmate_features.util.files import temporary_sibling

MIN_KEY_CHARS = 16
STATUSES = ("pending", "complete")


def erasure_key(settings: Settings) -> bytes:
    """The ledger's HMAC key: HM_ERASURE_KEY, else the key file (created on first use, mode 0600).

    Raises ConfigError for an HM_ERASURE_KEY shorter than 16 characters or an unreadable key file."""
    if settings.erasure_key:
        if len(settings.erasure_key) < MIN_KEY_CHARS:
            raise ConfigError(
                f"HM_ERASURE_KEY has {len(settings.erasure_key)} characters; use at least {MIN_KEY_CHARS} "
                "random ones, e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`"
            )
        return settings.erasure_key.encode("utf-8")
    path = settings.erasure_key_path
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = temporary_sibling(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)  # fails if another process created the key first: then use theirs
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the erasure key file {path}: {exc.strerror}; set HM_ERASURE_KEY") from exc
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(f"the erasure key file {path} holds no key; restore it from a backup or set HM_ERASURE_KEY")
    return key.encode("utf-8")


def key_fingerprint(key: bytes) -> str:
    """A short public name of a key (16 hex digits of an HMAC of a fixed text): says which key, reveals nothing."""
    return hmac.new(key, b"healthmate-features erasure key id", hashlib.sha256).hexdigest()[:16]


def subject_of(key: bytes, user_id: int) -> str:
    """The keyed hash the ledger keeps for a user id: HMAC-SHA256(key, "user_id:<id>"), hex."""
    return hmac.new(key, f"user_id:{int(user_id)}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Erasure:
    """One row of the ledger."""

    erasure_id: str
    subject: str
    key_id: str
    status: str
    reason: str | None
    actor: str | None
    requested_at: datetime
    completed_at: datetime | None
    report: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (timestamps as ISO 8601)."""
        out = asdict(self)
        out["requested_at"] = self.requested_at.isoformat()
        out["completed_at"] = self.completed_at.isoformat() if self.completed_at else None
        return out


def _erasure(row: dict[str, Any]) -> Erasure:
    return Erasure(
        erasure_id=row["erasure_id"],
        subject=row["subject"],
        key_id=row["key_id"],
        status=row["status"],
        reason=row["reason"],
        actor=row["actor"],
        requested_at=read_ts(row["requested_at"]),
        completed_at=read_ts(row["completed_at"]) if row["completed_at"] is not None else None,
        report=read_json(row["report"]) or {},
    )


class ErasureLedger:
    """The `erasures` table of a SQL store (`backends.open_sql_store`), and the settings' key."""

    def __init__(self, store: SqlStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._key: bytes | None = None

    @property
    def key(self) -> bytes:
        """The HMAC key (loaded, or created, on first use)."""
        if self._key is None:
            self._key = erasure_key(self.settings)
        return self._key

    @property
    def key_id(self) -> str:
        """The fingerprint of the current key."""
        return key_fingerprint(self.key)

    def subject(self, user_id: int) -> str:
        """The keyed hash of a user id under the current key."""
        return subject_of(self.key, user_id)

    # -- reading ------------------------------------------------------------------------------

    def find(self, user_id: int) -> Erasure | None:
        """The erasure of a user id (pending or complete), or None if they were never erased."""
        rows = self.store.query(
            "SELECT * FROM erasures WHERE key_id = ? AND subject = ?", (self.key_id, self.subject(user_id))
        )
        return _erasure(rows[0]) if rows else None

    def get(self, erasure_id: str) -> Erasure:
        """One erasure by id; ErasureNotFoundError naming the known ones otherwise."""
        rows = self.store.query("SELECT * FROM erasures WHERE erasure_id = ?", (erasure_id,))
        if not rows:
            count = self.store.query("SELECT count(*) AS n FROM erasures")[0]["n"]
            raise ErasureNotFoundError(
                f"no erasure {erasure_id!r} in the ledger ({count} erasure(s)); list them with "
                "`healthmate-features erase --list`"
            )
        return _erasure(rows[0])

    def list(self) -> list[Erasure]:
        """Every erasure, oldest first."""
        return [_erasure(r) for r in self.store.query("SELECT * FROM erasures ORDER BY requested_at, erasure_id")]

    def erased_among(self, user_ids: Iterable[Any]) -> set[int]:
        """The ids among `user_ids` the ledger holds (pending erasures included); {} from an empty ledger.

        Needs the key only when the ledger is not empty. Raises ConfigError when the ledger was
        written with another key (the ids would silently not match)."""
        keys = self.store.query("SELECT key_id, count(*) AS n FROM erasures GROUP BY key_id")
        if not keys:
            return set()
        foreign = [r for r in keys if r["key_id"] != self.key_id]
        if foreign:
            raise ConfigError(
                f"the erasure ledger holds {sum(int(r['n']) for r in foreign)} entry(ies) hashed with key "
                f"{', '.join(r['key_id'] for r in foreign)}, but the current key is {self.key_id}; set "
                f"HM_ERASURE_KEY (or restore {self.settings.erasure_key_path}) to the key the ledger was written with"
            )
        subjects = {r["subject"] for r in self.store.query("SELECT subject FROM erasures")}
        found = set()
        for value in set(user_ids):
            try:
                uid = int(value)
            except (TypeError, ValueError):
                continue
            if self.subject(uid) in subjects:
                found.add(uid)
        return found

    # -- writing ------------------------------------------------------------------------------

    def begin(self, user_id: int, *, reason: str | None, actor: str | None) -> tuple[Erasure, bool]:
        """The user's erasure, recorded as pending first if new; returns (erasure, whether it is new).

        Side effect: a new row (status pending) when the user was never erased."""
        existing = self.find(user_id)
        if existing is not None:
            return existing, False
        erasure_id = f"E-{utcnow():%Y%m%d}-{uuid.uuid4().hex[:8]}"
        self.store.execute(
            "INSERT INTO erasures (erasure_id, subject, key_id, status, reason, actor, requested_at, report) "
            "VALUES (?, ?, ?, 'pending', ?, ?, ?, ?)",
            (erasure_id, self.subject(user_id), self.key_id, reason, actor, utcnow(), {}),
        )
        return self.get(erasure_id), True

    def save_report(self, erasure_id: str, report: dict[str, Any]) -> None:
        """Store the erasure's report so far (after each store, so an interrupted run's counts are kept)."""
        self.store.execute("UPDATE erasures SET report = ? WHERE erasure_id = ?", (report, erasure_id))

    def complete(self, erasure_id: str, report: dict[str, Any]) -> Erasure:
        """Mark the erasure complete with its final report; return the row."""
        self.store.execute(
            "UPDATE erasures SET status = 'complete', completed_at = coalesce(completed_at, ?), report = ? "
            "WHERE erasure_id = ?",
            (utcnow(), report, erasure_id),
        )
        return self.get(erasure_id)


def erased_filter(settings: Settings):
    """A function ids -> the erased ones among them, reading the profile's ledger once per call."""
    from healthmate_features.backends import open_sql_store

    def erased(user_ids: Iterable[Any]) -> set[int]:
        with open_sql_store(settings) as store:
            return ErasureLedger(store, settings).erased_among(user_ids)

    return erased
