"""Bearer API keys: created once, stored only as SHA-256 hashes, each with a role.

A key is `hmk_<16 hex>.<43 url-safe chars>`: the part before the dot is the key id (public,
shown by `list_keys` and written to the audit log), the whole token is the secret. The token
carries 256 random bits, so an unsalted SHA-256 is enough to make the stored hash useless to a
reader of the database. Roles: `admin` (everything) and `user` (tied to one HealthMate user id,
whose features alone it may read). Keys are revoked, never deleted, so audit entries keep
pointing at a known key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, NamedTuple

from healthmate_features.backends.sqlstore import SqlStore, read_ts, utcnow
from healthmate_features.errors import ApiKeyError, AuthError

ROLES = ("admin", "user")
KEY_ID_PATTERN = re.compile(r"^hmk_[0-9a-f]{16}$")
_TOKEN = re.compile(r"^(hmk_[0-9a-f]{16})\.[A-Za-z0-9_-]{43}$")
_NO_KEY_HINT = "send 'Authorization: Bearer <key>' with a key from `healthmate-features keys create`"


class NewKey(NamedTuple):
    """A freshly created key: `secret` is the bearer token, shown this once and never stored."""

    key_id: str
    secret: str


@dataclass(frozen=True)
class Principal:
    """Who a valid token belongs to: the key, its role, and for `user` keys the user id."""

    key_id: str
    role: str
    user_id: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_access_user(self, user_id: int) -> bool:
        """True for admins, and for a user key whose own user id this is."""
        return self.is_admin or self.user_id == user_id


@dataclass(frozen=True)
class KeyInfo:
    """What `list_keys` shows about a key: everything except the secret and its hash."""

    key_id: str
    role: str
    user_id: int | None
    name: str | None
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (timestamps as ISO 8601)."""
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat()
        out["revoked_at"] = self.revoked_at.isoformat() if self.revoked_at else None
        out["active"] = self.active
        return out


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


_DUMMY_DIGEST = _digest("hmk_0000000000000000.unknown")


class ApiKeys:
    """Creates, checks, lists and revokes API keys in a SQL store (see `backends.open_sql_store`)."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def create_key(self, role: str, *, user_id: int | None = None, name: str | None = None) -> NewKey:
        """Create a key; return its id and secret. The secret cannot be recovered later.

        Side effect: one row in api_keys holding the SHA-256 of the secret. Raises ApiKeyError
        for an unknown role, a user key without a positive user id, or an admin key with one."""
        if role not in ROLES:
            raise ApiKeyError(f"role {role!r} is unknown; use one of {', '.join(ROLES)}")
        if role == "user":
            if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id < 1:
                raise ApiKeyError(
                    f"a user key needs the positive integer user id it belongs to, got {user_id!r}; "
                    "pass user_id (--user-id)"
                )
        elif user_id is not None:
            raise ApiKeyError(
                f"admin keys are not tied to a user, got user_id={user_id!r}; omit it, or create "
                "a user key (role 'user')"
            )
        if name is not None and (not isinstance(name, str) or len(name) > 100 or not name.isprintable()):
            raise ApiKeyError(
                "a key name is a printable label of at most 100 characters, e.g. 'ios-app'; "
                f"got {len(str(name))} characters"
            )
        key_id = f"hmk_{secrets.token_hex(8)}"
        secret = f"{key_id}.{secrets.token_urlsafe(32)}"
        self.store.execute(
            "INSERT INTO api_keys (key_id, secret_sha256, role, user_id, name, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (key_id, _digest(secret), role, user_id, name, utcnow()),
        )
        return NewKey(key_id, secret)

    def authenticate(self, token: str | None) -> Principal:
        """The Principal a token (`hmk_<id>.<secret>`, the key itself) belongs to; reads api_keys.

        Raises AuthError for a missing, malformed, unknown or revoked token; the message
        never repeats the token. An HTTP Authorization header goes through `bearer_token` first."""
        token = (token or "").strip()
        if not token:
            raise AuthError(f"missing API key; {_NO_KEY_HINT}")
        match = _TOKEN.match(token)
        if not match:
            raise AuthError(f"malformed API key (expected hmk_<id>.<secret>); {_NO_KEY_HINT}")
        rows = self.store.query(
            "SELECT key_id, secret_sha256, role, user_id, revoked_at FROM api_keys WHERE key_id = ?",
            (match.group(1),),
        )
        stored = rows[0]["secret_sha256"] if rows else _DUMMY_DIGEST  # same work either way
        if not hmac.compare_digest(_digest(token), stored) or not rows:
            raise AuthError(f"invalid API key; {_NO_KEY_HINT}")
        row = rows[0]
        if row["revoked_at"] is not None:
            raise AuthError(
                f"API key {row['key_id']} was revoked at {read_ts(row['revoked_at']).isoformat()}; "
                "ask an admin for a new key"
            )
        user_id = int(row["user_id"]) if row["user_id"] is not None else None
        return Principal(row["key_id"], row["role"], user_id)

    def revision(self) -> int:
        """The change revision of api_keys: it moves in the transaction of any change of a key."""
        return self.store.revisions()["api_keys"]

    def list_keys(self, *, include_revoked: bool = True) -> list[KeyInfo]:
        """All keys, oldest first (never secrets or hashes)."""
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        rows = self.store.query(
            "SELECT key_id, role, user_id, name, created_at, revoked_at FROM api_keys"
            f"{where} ORDER BY created_at, key_id"
        )
        return [_info(r) for r in rows]

    def revoke(self, key_id: str) -> KeyInfo:
        """Revoke a key so `authenticate` rejects it from now on; return it. Idempotent.

        Side effect: sets api_keys.revoked_at (kept: audit entries refer to the key id).
        Raises ApiKeyError for an unknown key id."""
        self.store.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
            (utcnow(), key_id),
        )
        rows = self.store.query(
            "SELECT key_id, role, user_id, name, created_at, revoked_at FROM api_keys WHERE key_id = ?",
            (key_id,),
        )
        if not rows:
            raise ApiKeyError(f"no API key with id {key_id!r}; list ids with `healthmate-features keys list`")
        return _info(rows[0])


def bearer_token(authorization: str | None) -> str:
    """The key in an HTTP `Authorization: Bearer <key>` header value; the scheme is required.

    Raises AuthError for a missing header, another scheme, or a bare key without `Bearer `
    (the message says what to send; it never repeats the value)."""
    value = (authorization or "").strip()
    if not value:
        raise AuthError(f"missing API key; {_NO_KEY_HINT}")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        what = "a bare API key" if _TOKEN.match(value) else "an Authorization header without the Bearer scheme"
        raise AuthError(f"{what} was sent; send 'Authorization: Bearer <key>' (the word Bearer, a space, then the key)")
    return token.strip()


def page_token(authorization: str | None) -> str:
    """The key in an `Authorization` header of a page a browser opens: Bearer as everywhere, or
    Basic with the key as the password (any user name), which a browser asks for by itself.

    Raises AuthError as `bearer_token` does; the message never repeats the value."""
    value = (authorization or "").strip()
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        return bearer_token(authorization)
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise AuthError("malformed Basic credentials; give any user name and the API key as the password") from None
    return decoded.partition(":")[2].strip()


class KeyCache:
    """`ApiKeys.authenticate` with the outcome of each token kept in memory while api_keys is unchanged.

    The rule: an entry is used only while api_keys' change revision (`SqlStore.revisions`, moved by
    a trigger in the transaction of any insert, update or delete of a key, from any process) is
    the one read before the entry's row was. Every request reads the revision first
    (`SqlStore.current_revisions`: on SQLite a `PRAGMA data_version` check, on Postgres one
    shared query), and a new revision empties the cache; so a key revoked by another process
    (`healthmate-features keys revoke`) is refused from the next request on, in every process.
    At most `max_entries` tokens are kept (the cache is emptied when full); their SHA-256 is the
    key, never the token."""

    def __init__(self, keys: ApiKeys, *, max_entries: int = 10_000) -> None:
        self.keys = keys
        self.max_entries = max_entries
        self._revision: int | None = None
        self._entries: dict[str, Principal | AuthError] = {}

    async def authenticate(self, token: str) -> Principal:
        """The Principal of `token` (a key, see `bearer_token`); AuthError as `ApiKeys.authenticate`.

        Side effects: reads api_keys' revision (every call) and, on a miss, the key's row in a
        worker thread."""
        from anyio import to_thread

        if not _TOKEN.match(token.strip()):
            return self.keys.authenticate(token)  # refused without reading anything
        revision = (await self.keys.store.current_revisions())["api_keys"]
        if revision != self._revision:
            self._entries, self._revision = {}, revision
        digest = _digest(token)
        found = self._entries.get(digest)
        if found is None:
            try:
                found = await to_thread.run_sync(self.keys.authenticate, token)
            except AuthError as exc:
                found = exc
            if revision == self._revision:  # a newer request may have moved on meanwhile
                if len(self._entries) >= self.max_entries:
                    self._entries = {}
                self._entries[digest] = found
        if isinstance(found, AuthError):
            raise AuthError(str(found))
        return found


def _info(row: dict[str, Any]) -> KeyInfo:
    return KeyInfo(
        key_id=row["key_id"],
        role=row["role"],
        user_id=int(row["user_id"]) if row["user_id"] is not None else None,
        name=row["name"],
        created_at=read_ts(row["created_at"]),
        revoked_at=read_ts(row["revoked_at"]) if row["revoked_at"] is not None else None,
    )
