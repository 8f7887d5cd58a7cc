"""A fast online read path for the Redis and SQLite online stores: Feast's answer, without Feast's per-call work.

`OnlineReader(settings).get(user_ids, feature_service=...)` returns exactly what
`FeatureStore.get_online_features(...).to_dict()` returns for the same features and users (same
keys in the same order, same Python values, missing users and null values as None), in a
fraction of the time:

- the features are resolved once per (feature service or refs, full_feature_names) with Feast's
  own resolution (`_feast.online_request_context`), so names, order and projections
  are Feast's; the plan is rebuilt whenever Feast's registry cache refreshes (its
  `cache_ttl_seconds`, 60 s in feature_store.production.yaml) or on `refresh()`;
- Feast keeps one Redis hash per user (serialized entity key + project) holding every view's
  fields (murmur3 of `view:feature`); we read all needed fields of all views with ONE pipelined
  HMGET per user, where Feast sends one HMGET per user and view and reads the `_ts:<view>`
  timestamps it then drops; from our encrypting store (`stores.encrypted_online`) the fields read
  are the views' sealed rows (`_hm:<view>`), each opened once and unpacked (`row_codec`);
- Feast's SQLite online store (embedded profile) keeps one table per view, one row per user and
  feature (ours: one sealed row per user); we read every needed row of every view with ONE query
  (`_SqliteRows`), over the connection of Feast's own online store of the reader's long-lived
  FeatureStore (never a connection of our own: closing one would drop the process's SQLite locks
  on the file), where
  Feast's `get_online_features` first rebuilds its view objects from the registry and then runs
  one query per view;
- values are decoded straight from the protobuf wire format for doubles (the bulk of our
  features), with `ValueProto` + Feast's `feast_value_type_to_python_type` for every other kind;
  Feast's key, field and value layout is known to `healthmate_features._feast` only;
- on-demand views (pandas mode) run their own transformation on the same pandas frame Feast
  gives them, built straight from the values rather than through an Arrow table (Feast's
  `transform_arrow` converts to Arrow and back on each side, most of a lookup's time), and their
  outputs go through Feast's own type conversion.

Like Feast's online read, no view TTL is applied: a value stays readable until the next
materialization replaces it or Redis expires the user's key (`key_ttl_seconds`).

`read` also says per user whether the online store knows them (`OnlineResult.found`): whether
it holds a row of any feature view for the user (on Redis the `_ts:<view>` field Feast writes with
every row, read in the same HMGET; on SQLite a row in any view's table, in the same query). An
unknown user and a known user whose values are all null give the same features; only `found`
tells them apart. (Feast's own Redis read cannot: it marks every value PRESENT, even for a key
that does not exist.)
The same pipeline (Redis) reads the materialization markers of the views it reads
(`stores.online_marks`): a view the registry records as materialized whose marker Redis no longer
holds raises OnlineStoreLostError instead of answering with its values missing. The reader's Redis
client waits at most the online deadline (HM_ONLINE_DEADLINE_S) per command, without retries.
Only views keyed by the single INT64 join key `user_id` are served; anything else raises
OnlineReadError (`store.online_features` then falls back to Feast).
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from healthmate_features.backends import backend_for, redis
from healthmate_features.config import Settings
from healthmate_features.crypto import unseal_many
from healthmate_features.errors import FeatureRepoError, FeatureServiceNotFoundError, OnlineReadError
from healthmate_features.stores import encrypted_online, online_marks, row_codec

_log = logging.getLogger(__name__)

JOIN_KEY = "user_id"
UNKNOWN_REFRESH_S = 5.0  # an unknown feature service refreshes the registry at most this often
SQLITE_USERS_PER_QUERY = 500  # users per SQLite query (bound parameters stay far below SQLite's limit)


def as_user_ids(user_ids: Sequence[Any]) -> list[int]:
    """User ids as ints; OnlineReadError for none or for a value that is not an integer."""
    try:
        ids = [int(u) for u in user_ids]
    except (TypeError, ValueError) as exc:
        raise OnlineReadError(f"user ids must be integers; got {list(user_ids)[:5]!r}") from exc
    if not ids:
        raise OnlineReadError("no user ids given; pass at least one")
    return ids


@dataclass(frozen=True)
class OnlineResult:
    """An online lookup: Feast's `to_dict()` columns, and per requested user whether the store knows them.

    `found[i]` is False when the online store holds no row of any feature view for the i-th user
    (an id never materialized, or expired): its stored features are None because there are none,
    not because its values are missing."""

    features: dict[str, list]
    found: list[bool]


# Row functions of on-demand views (`register_rows`): a view tagged `online_rows: <name>` gets its
# online outputs from the function registered under <name> instead of its pandas transformation.
_ROWS: dict[str, Any] = {}


def register_rows(name: str, rows: Any) -> None:
    """Register `rows(columns) -> {output column: values} | None`, a pandas-free twin of a view's transformation.

    `columns` are the lists `pandas_frame` would turn into the transformation's frame; the twin
    returns the transformation's output columns in its column order, each value equal to what
    the transformation returns (converted by Feast's type conversion afterwards), or None to have
    the transformation run instead. A view opts in with the tag `online_rows: <name>`; the reader
    checks the twin once against the transformation itself (first lookup of each plan) and uses
    the transformation for good if they differ. Side effect: the process-wide registry."""
    _ROWS[name] = rows


@dataclass(frozen=True)
class Fetched:
    """What `OnlineReader.fetch` read for a lookup: the users, the plan, their undecoded values and `found`."""

    ids: list[int]
    plan: _Plan
    rows: list[list]  # per user: the plan's fields, as stored (None where absent)
    found: list[bool]


@dataclass
class _Odfv:
    """One requested on-demand view: the view, its output names, the input columns it needs."""

    view: Any
    outputs: list[str]
    types: dict[str, Any]
    inputs: list[str]  # response names of the source features the transformation reads
    aliases: list[tuple[str, str]]  # (full `view__feature`, short) name of each source feature (Feast's preprocessing)
    renames: dict[str, str]  # output column -> response name (Feast's postprocessing of the transformation's columns)
    rows: str | None = None  # the view's `online_rows` tag: the name of its registered pandas-free twin
    checked: bool = False  # the twin was compared with the transformation once


@dataclass
class _Plan:
    """Everything a lookup of one feature selection needs, resolved from the registry once."""

    fields: list[bytes]  # HMGET fields, in read order
    columns: list[tuple[str, int]]  # (response name, index into fields) of the stored features
    request_data: list[str]  # request-time inputs of on-demand views (event_timestamp)
    odfvs: list[_Odfv]
    order: list[str]  # the response's keys, in Feast's order
    known: list[bytes] = field(default_factory=list)  # `_ts:<view>` of every view: does the user have a row?
    full_feature_names: bool = False
    generic: set[int] = field(default_factory=set)  # field indexes whose type needs Feast's decoder
    sqlite: _SqliteQuery | None = None  # SQLite: the query reading `fields` (and `known`) of a set of users
    rows: list[bytes] = field(default_factory=list)  # encrypting Redis store: the sealed row field of each view read
    row_of: list[int] = field(default_factory=list)  # per field: the index of its view's row in `rows`
    markers: list[online_marks.Marker] = field(default_factory=list)  # of the views read that were materialized
    packed: tuple[bytes, bytes] | None = None  # Redis: the HMGET fields and the markers' MGET in RESP (fetch_async)


class OnlineReader:
    """Online features from the Redis or SQLite online store, equal to Feast's get_online_features, faster.

    One reader per process: it keeps a Feast FeatureStore (for the registry and, on SQLite, the
    connection of Feast's online store), a Redis connection pool and the resolved plans.
    Thread-safe for concurrent `get` calls.
    """

    @staticmethod
    def serves(config: Any) -> bool:
        """Whether a Feast RepoConfig's online store is one this reader reads (Redis or SQLite, ours or Feast's)."""
        from healthmate_features._feast import online_store_kind

        return online_store_kind(config) is not None

    def __init__(self, settings: Settings, *, store: Any = None) -> None:
        """Open the profile's Feast store (or use `store`); raises OnlineReadError unless on Redis or SQLite."""
        from healthmate_features import _feast

        self.settings = settings
        self.backend = backend_for(settings)
        self.store = store if store is not None else self.backend.open_feature_store()
        config = self.store.config
        if not self.serves(config):
            raise OnlineReadError(
                f"the online store of {self.backend.feature_store_yaml.name} is "
                f"{getattr(config.online_store, 'type', '?')!r}; "
                "the fast reader serves Redis and SQLite only; use store.online_features (Feast) for it"
            )
        version = _feast.ENTITY_KEY_SERIALIZATION_VERSION
        if config.entity_key_serialization_version != version:
            raise OnlineReadError(
                f"entity_key_serialization_version is {config.entity_key_serialization_version}; the fast reader "
                f"reads version {version} keys only; set it to {version} and re-materialize"
            )
        if getattr(config.registry, "enable_online_feature_view_versioning", False):
            raise OnlineReadError(
                "online feature view versioning is enabled; the fast reader does not read versioned keys"
            )
        self.project = config.project
        self._key_of = _feast.int64_redis_key(JOIN_KEY, self.project)  # user id -> Feast's Redis key
        self._client = None
        self._async_clients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()  # per event loop
        self._plans: dict[tuple, _Plan] = {}
        self._plans_registry_ts = None
        self._lock = threading.Lock()
        self._unknown_refresh_at = float("-inf")
        self._stale = False
        self._refs: tuple[Any, list[str]] | None = None  # (registry stamp, feature_refs())
        # Values sealed by our encrypting store (stores.encrypted_online) open with the backend's keyring.
        self._keyring = self.backend.keyring() if encrypted_online.encrypts(self.store) else None
        sqlite = _feast.online_store_kind(config) == "sqlite"
        self._sqlite = _SqliteRows(self.store, self._keyring) if sqlite else None

    @property
    def keeps_store(self) -> bool:
        """True on SQLite: its FeatureStore holds Feast's connection to the store file; keep it for the process."""
        return self._sqlite is not None

    # --- registry -------------------------------------------------------------------------

    def refresh(self) -> None:
        """Reload the registry now and drop every plan (e.g. right after an apply)."""
        self.store.refresh_registry()
        with self._lock:
            self._plans.clear()
            self._refs = None
            self._stale = False

    def invalidate(self) -> None:
        """Drop every plan and reload the registry before the next lookup (after an apply in this process)."""
        with self._lock:
            self._plans.clear()
            self._refs = None
            self._stale = True

    def _refreshed_recently(self) -> bool:
        """Refresh the registry for an unknown name, at most once per UNKNOWN_REFRESH_S; True if it did."""
        now = time.monotonic()
        if now - self._unknown_refresh_at < UNKNOWN_REFRESH_S:
            return False
        self._unknown_refresh_at = now
        self.store.registry.refresh(self.project)
        return True

    @property
    def reads_in_place(self) -> bool:
        """True on a SQLite file in WAL mode: a read never waits for a writer's lock, so a caller on
        an event loop may `fetch` in place (no hop to a thread). Redis can hang: `fetch_async`."""
        return self._sqlite is not None and self._sqlite.wal

    def ready(self, feature_service: str) -> bool:
        """Whether a lookup of `feature_service` needs no registry I/O now: its plan is resolved
        under the registry cache as it is, and that cache is still valid (no reload due)."""
        from healthmate_features import _feast

        if self._stale:
            return False
        registry = self.store.registry
        is_valid = getattr(registry, "is_cache_valid", None)
        if not callable(is_valid) or not is_valid():
            return False
        stamp = _feast.registry_cache_time(registry)
        with self._lock:
            return stamp == self._plans_registry_ts and (feature_service, None, False) in self._plans

    def _plan(self, feature_service: str | None, features: list[str] | None, full_feature_names: bool) -> _Plan:
        registry_ts = self._registry_stamp()
        key = (feature_service, tuple(features) if features is not None else None, full_feature_names)
        with self._lock:
            if registry_ts != self._plans_registry_ts:
                self._plans.clear()
                self._plans_registry_ts = registry_ts
            plan = self._plans.get(key)
        if plan is None:
            plan = self._build_plan(feature_service, features, full_feature_names)
            with self._lock:
                self._plans[key] = plan
        return plan

    def _registry_stamp(self) -> Any:
        """Feast's registry cache time after its own TTL check (and a reload after `invalidate`)."""
        from healthmate_features._feast import registry_cache_stamp

        if self._stale:
            self.refresh()
        return registry_cache_stamp(self.store.registry)  # Feast's own TTL: changes when its cache reloads

    def _build_plan(self, feature_service: str | None, features: list[str] | None, full_feature_names: bool) -> _Plan:
        from healthmate_features import _feast

        registry = self.store.registry
        if feature_service is not None:
            try:
                try:
                    selection: Any = registry.get_feature_service(feature_service, self.project, allow_cache=True)
                except Exception:
                    if not self._refreshed_recently():  # applied since the registry was cached?
                        raise
                    selection = registry.get_feature_service(feature_service, self.project, allow_cache=True)
            except Exception as exc:
                known = ", ".join(s.name for s in registry.list_feature_services(self.project, allow_cache=True))
                raise FeatureServiceNotFoundError(
                    f"feature service '{feature_service}' not found (have: {known}); run `feast apply` if it is new"
                ) from exc
        elif features:
            selection = list(features)
        else:
            raise OnlineReadError("pass a feature service or a non-empty list of feature refs ('view:feature')")
        try:
            context = _feast.online_request_context(registry, self.project, selection, full_feature_names)
        except Exception as exc:
            raise FeatureRepoError(
                f"cannot resolve {feature_service or features!r} in project {self.project}: {exc}"
            ) from exc
        keys = {k if isinstance(k, str) else k.join_key for k in context.join_keys} - {
            _feast.DUMMY_ENTITY_ID
        }  # ODFV entities: Entity objects
        if context.entityless or keys != {JOIN_KEY}:
            raise OnlineReadError(
                f"{feature_service or features!r} uses join keys {sorted(keys)}; "
                f"the fast reader serves views keyed by '{JOIN_KEY}' only"
            )

        fields: list[bytes] = []
        row_fields: list[bytes] = []  # the sealed row field of each view (encrypting store)
        row_of: list[int] = []
        slots: list[tuple[Any, str]] = []  # (view, feature) of each field
        index: dict[bytes, int] = {}
        columns: list[tuple[str, int]] = []
        generic: set[int] = set()
        for view, names in context.grouped_refs:
            if list(getattr(view, "join_keys", [JOIN_KEY])) != [JOIN_KEY]:
                raise OnlineReadError(
                    f"feature view '{view.name}' is keyed by {view.join_keys}; the fast reader serves '{JOIN_KEY}' only"
                )
            prefix = view.projection.name_to_use()
            types = {f.name: f.dtype.to_value_type() for f in view.features}
            for name in names:
                hashed = _feast.redis_field(view.name, name)
                if hashed not in index:
                    index[hashed] = len(fields)
                    fields.append(hashed)
                    slots.append((view, name))
                    row = encrypted_online.redis_row_field(view.name)
                    if row not in row_fields:
                        row_fields.append(row)
                    row_of.append(row_fields.index(row))
                columns.append((f"{prefix}__{name}" if full_feature_names else name, index[hashed]))
                if types.get(name) is None or types[name].name != "DOUBLE":
                    generic.add(index[hashed])

        odfv_plans = []
        by_name = {
            (v.projection.name_alias if v.projection else None) or v.name: v for v in context.on_demand_feature_views
        }
        outputs: dict[str, list[str]] = {name: [] for name in by_name}
        for ref in context.feature_refs:
            view_name, _, feature_name = _feast.parse_feature_ref(ref)
            if view_name in by_name:
                view = by_name[view_name]
                outputs[view_name].append(
                    f"{view.projection.name_to_use()}__{feature_name}" if full_feature_names else feature_name
                )
        for view_name, view in by_name.items():
            if view.mode != "pandas" or view.aggregations or view.write_to_online_store:
                raise OnlineReadError(
                    f"on-demand view '{view_name}' is not a plain pandas transformation; read it through Feast"
                )
            inputs = [
                f"{p.name_to_use()}__{f.name}" if full_feature_names else f.name
                for p in view.source_feature_view_projections.values()
                for f in p.features
            ]
            types = {f.name: f.dtype.to_value_type() for f in view.schema}
            aliases = [
                (f"{p.name}__{f.name}", f.name)
                for p in view.source_feature_view_projections.values()
                for f in p.features
            ]
            prefix = view.projection.name_to_use()
            full_names = {f.name: f"{prefix}__{f.name}" for f in view.features}  # Feast's projected names
            renames = full_names if full_feature_names else {full: short for short, full in full_names.items()}
            odfv_plans.append(
                _Odfv(
                    view=view,
                    outputs=outputs[view_name],
                    types=types,
                    inputs=inputs,
                    aliases=aliases,
                    renames=renames,
                    rows=(view.tags or {}).get("online_rows"),
                )
            )

        request = sorted(context.request_data)
        stored = [name for name, _ in columns]
        order = [JOIN_KEY] + request + stored
        order = [name for name in order if name in context.result_names or name == JOIN_KEY]
        # ODFV outputs follow in the order each transformation returns them: known after its first run.
        user_views = self._user_views()
        recorded = {v.name: v for v in registry.list_feature_views(self.project, allow_cache=True)}
        read = [recorded[name] for name in dict.fromkeys(v.name for v, _ in context.grouped_refs) if name in recorded]
        markers = online_marks.recorded_markers(self.settings, self.project, read) if self._sqlite is None else []
        return _Plan(
            markers=markers,
            fields=fields,
            rows=row_fields,
            row_of=row_of,
            columns=columns,
            request_data=request,
            odfvs=odfv_plans,
            order=order,
            known=self._known_fields(user_views),
            full_feature_names=full_feature_names,
            generic=generic,
            sqlite=self._sqlite.query(slots, user_views) if self._sqlite is not None else None,
        )

    def _user_views(self) -> list[Any]:
        """Every feature view keyed by user_id (cached registry); on SQLite only online ones (those have a table)."""
        views = self.store.registry.list_feature_views(self.project, allow_cache=True)
        return [v for v in views if list(v.join_keys) == [JOIN_KEY] and (self._sqlite is None or v.online)]

    def _known_fields(self, views: list[Any] | None = None) -> list[bytes]:
        """The `_ts:<view>` field of every feature view keyed by user_id (cached registry)."""
        from healthmate_features._feast import redis_timestamp_field

        views = self._user_views() if views is None else views
        return [redis_timestamp_field(v.name) for v in views]

    def feature_refs(self) -> list[str]:
        """Every feature of every feature view and on-demand view, as 'view:feature' refs (cached registry).

        Resolved once per registry cache (Feast builds the view objects anew on every listing)."""
        stamp = self._registry_stamp()
        cached = self._refs
        if cached is not None and cached[0] == stamp and stamp is not None:
            return list(cached[1])
        registry = self.store.registry
        views = registry.list_feature_views(self.project, allow_cache=True)
        odfvs = registry.list_on_demand_feature_views(self.project, allow_cache=True)
        refs = [f"{v.name}:{f.name}" for v in [*views, *odfvs] for f in v.features]
        self._refs = (stamp, refs)
        return list(refs)

    # --- redis ----------------------------------------------------------------------------

    def _redis(self):
        if self._client is None:
            self._client = redis.connect(self.settings, timeout_s=self.settings.online_deadline_s)
        return self._client

    def _async_redis(self) -> redis.PipelinedConnection:
        """The pipelined Redis connection of the running event loop (created on first use there)."""
        import asyncio

        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = self._async_clients[loop] = redis.PipelinedConnection(
                self.settings, timeout_s=self.settings.online_deadline_s
            )
        return client

    async def close_async(self) -> None:
        """Close the pipelined Redis connection of the running event loop, if it has one."""
        import asyncio

        client = self._async_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()

    def redis_key(self, user_id: int) -> bytes:
        """The Redis key Feast writes a user's features under (serialize_entity_key v3 + project)."""
        return self._key_of(user_id)

    def close(self) -> None:
        """Close the Redis connection pool (the Feast store's own connections, SQLite's too, are Feast's)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- lookups --------------------------------------------------------------------------

    def get(
        self,
        user_ids: Sequence[int],
        *,
        feature_service: str | None = None,
        features: list[str] | None = None,
        at: datetime | Sequence[datetime] | None = None,
        full_feature_names: bool = False,
    ) -> dict[str, list]:
        """Online features of `user_ids`, shaped like Feast's `get_online_features(...).to_dict()`.

        `at` is the request time the on-demand views see (`event_timestamp`): one time for all
        users or one per user; default now (UTC). Unknown users get None for every stored
        feature (`read` says which users are unknown).
        Raises FeatureServiceNotFoundError, OnlineReadError, ServiceUnavailableError (Redis).
        """
        return self.read(
            user_ids, feature_service=feature_service, features=features, at=at, full_feature_names=full_feature_names
        ).features

    def read(
        self,
        user_ids: Sequence[int],
        *,
        feature_service: str | None = None,
        features: list[str] | None = None,
        at: datetime | Sequence[datetime] | None = None,
        full_feature_names: bool = False,
    ) -> OnlineResult:
        """`get`'s features and, per user, whether the online store holds a row of any feature view for them.

        One pipelined HMGET per user reads both. Raises as `get` does."""
        return self.assemble(
            self.fetch(
                user_ids, feature_service=feature_service, features=features, full_feature_names=full_feature_names
            ),
            at=at,
        )

    def fetch(
        self,
        user_ids: Sequence[int],
        *,
        feature_service: str | None = None,
        features: list[str] | None = None,
        full_feature_names: bool = False,
    ) -> Fetched:
        """`read`'s blocking part: resolve the plan (may reload the registry) and read the stored values.

        One pipelined HMGET per user (Redis) or one query (SQLite); the values stay undecoded
        until `assemble`, which does no I/O. Raises as `get` does."""
        if (feature_service is None) == (features is None):
            raise OnlineReadError("pass exactly one of feature_service and features")
        ids = as_user_ids(user_ids)
        plan = self._plan(feature_service, features, full_feature_names)

        if self._sqlite is not None:
            assert plan.sqlite is not None  # built with the plan on SQLite
            stored, known = self._sqlite.read(ids, plan.sqlite)
            rows = [stored[u] for u in ids]
            found = [known[u] for u in ids]
        else:
            return self._fetched(ids, plan, self._hmget(ids, self._hash_fields(plan), markers=plan.markers))
        return Fetched(ids=ids, plan=plan, rows=rows, found=found)

    async def fetch_async(self, user_ids: Sequence[int], *, feature_service: str) -> Fetched:
        """`fetch` of a feature service from Redis on the caller's event loop (one
        `redis.PipelinedConnection` per loop, shared by concurrent lookups): no thread, so no hop to
        one and back. Only when `ready(feature_service)` (the plan is resolved: no registry I/O
        here); raises as `fetch` does."""
        if self._sqlite is not None:
            raise OnlineReadError("fetch_async reads Redis; a SQLite store reads in place (fetch)")
        ids = as_user_ids(user_ids)
        with self._lock:
            plan = self._plans.get((feature_service, None, False))
        if plan is None:
            raise OnlineReadError(f"no resolved plan for feature service {feature_service!r}; use fetch")
        fields = self._hash_fields(plan)
        unique = list(dict.fromkeys(ids))
        if plan.packed is None:  # the HMGET's fields and the markers' MGET, packed once per plan
            marker_keys = [key.encode() for _, key, _ in plan.markers]
            mget = redis.resp_command(b"MGET", len(marker_keys), redis.resp_arguments(*marker_keys))
            plan.packed = (redis.resp_arguments(*fields), mget if marker_keys else b"")
        tail, mget = plan.packed
        key_of = self._key_of
        commands = [
            redis.resp_command(b"HMGET", 1 + len(fields), redis.resp_arguments(key_of(u)), tail) for u in unique
        ]
        deadline = self.settings.online_deadline_s
        with redis.answered_within(self.settings, timeout_s=deadline, setting="HM_ONLINE_DEADLINE_S"):
            replies = await self._async_redis().send(
                b"".join(commands if fields else []) + mget, len(unique) * bool(fields) + bool(mget)
            )
        return self._fetched(ids, plan, self._hmget_replies(unique, fields, plan.markers, replies))

    def _hash_fields(self, plan: _Plan) -> list[bytes]:
        """The fields of a user's hash a lookup reads: the features' (stock store) or their views' sealed
        rows (encrypting store), then the `_ts:<view>` fields saying whether the user is known."""
        return [*(plan.rows if self._keyring is not None else plan.fields), *plan.known]

    def _fetched(self, ids: list[int], plan: _Plan, replies: dict[int, list]) -> Fetched:
        """The Fetched of a plan's HMGET replies (sealed rows opened and unpacked into the plan's fields)."""
        fields = plan.rows if self._keyring is not None else plan.fields
        if self._keyring is not None:
            self._open_rows(replies, plan)
        rows = [replies[u][: len(plan.fields)] for u in ids]
        found = [any(value is not None for value in replies[u][len(fields) :]) for u in ids]
        return Fetched(ids=ids, plan=plan, rows=rows, found=found)

    def _open_rows(self, replies: dict[int, list], plan: _Plan) -> None:
        """Replace each user's sealed rows (the first len(plan.rows) of its HMGET reply) by the values of
        the plan's fields they hold, followed by the rest of the reply.

        Raises EncryptionKeyError (naming the key id) when a row does not open."""
        assert self._keyring is not None
        width = len(plan.rows)
        blobs, aads, where = [], [], []
        aad = encrypted_online.redis_aad
        for user, values in replies.items():
            key = self._key_of(user)
            for index, value in enumerate(values[:width]):
                if value is not None:
                    blobs.append(value)
                    aads.append(aad(key, plan.rows[index]))
                    where.append((user, index))
        opened: dict[tuple[int, int], dict[bytes, bytes]] = {}
        if blobs:
            plains = unseal_many(self._keyring, blobs, aads, what="a row in the Redis online store")
            opened = {place: row_codec.decode_row(p) for place, p in zip(where, plains, strict=True)}
        empty: dict[bytes, bytes] = {}
        for user, values in replies.items():
            rows = [opened.get((user, index), empty) for index in range(width)]
            stored = [rows[row].get(field) for field, row in zip(plan.fields, plan.row_of, strict=True)]
            replies[user] = stored + list(values[width:])

    def assemble(self, fetched: Fetched, *, at: datetime | Sequence[datetime] | None = None) -> OnlineResult:
        """`read`'s answer from what `fetch` read: decode the values, run the on-demand views (CPU only, no I/O).

        `at` as for `read`. Raises OnlineReadError for a number of times that fits neither one nor every user."""
        from healthmate_features._feast import decode_row, decode_values

        ids, plan, rows = fetched.ids, fetched.plan, fetched.rows
        response: dict[str, list] = {JOIN_KEY: ids}
        if len(rows) == 1:  # one user (the API's lookups): one pass over its row
            row = decode_row(rows[0], plan.generic)
            for name, index in plan.columns:
                response[name] = [row[index]]
        else:
            decoded: dict[int, list] = {}
            for index in range(len(plan.fields)):
                decoded[index] = decode_values([row[index] for row in rows], generic=index in plan.generic)
            for name, index in plan.columns:
                response[name] = decoded[index]
        if plan.odfvs:
            response.update(self._on_demand(plan, response, ids, at))
        return OnlineResult(features={name: response[name] for name in plan.order}, found=fetched.found)

    def known(self, user_ids: Sequence[int]) -> list[bool]:
        """Per user: whether the online store holds a row of any feature view for them (HMGETs; SQLite: a query)."""
        ids = as_user_ids(user_ids)
        if self._sqlite is not None:
            _, known = self._sqlite.read(ids, self._sqlite.query([], self._user_views()))
            return [known[u] for u in ids]
        views = self.store.registry.list_feature_views(self.project, allow_cache=True)
        markers = online_marks.recorded_markers(self.settings, self.project, views)
        replies = self._hmget(ids, self._known_fields(), markers=markers)
        return [any(value is not None for value in replies[u]) for u in ids]

    def _hmget(self, ids: list[int], fields: list[bytes], *, markers: list[online_marks.Marker]) -> dict[int, list]:
        """user id -> the values of `fields` in the user's hash (None where absent): one pipelined HMGET per user.

        The same pipeline reads the `markers` (one MGET); OnlineStoreLostError if one is missing."""
        unique = list(dict.fromkeys(ids))
        if not fields and not markers:
            return {u: [] for u in unique}
        deadline = self.settings.online_deadline_s
        with redis.answered_within(self.settings, timeout_s=deadline, setting="HM_ONLINE_DEADLINE_S"):
            pipe = self._redis().pipeline(transaction=False)
            self._queue_hmget(pipe, unique, fields, markers)
            replies = pipe.execute()
        return self._hmget_replies(unique, fields, markers, replies)

    def _queue_hmget(
        self, pipe: Any, unique: list[int], fields: list[bytes], markers: list[online_marks.Marker]
    ) -> None:
        key_of = self._key_of
        for user_id in unique if fields else ():
            pipe.hmget(key_of(user_id), fields)
        if markers:
            pipe.mget([key for _, key, _ in markers])

    def _hmget_replies(
        self, unique: list[int], fields: list[bytes], markers: list[online_marks.Marker], replies: list
    ) -> dict[int, list]:
        if markers:
            online_marks.check(self.settings, markers, replies.pop())
        if not fields:
            return {u: [] for u in unique}
        return dict(zip(unique, replies, strict=True))

    def _on_demand(self, plan: _Plan, response: dict[str, list], ids: list[int], at) -> dict[str, list]:
        """Run each requested on-demand view's own transformation; extend plan.order on first use.

        The view's pandas function gets the frame Feast's `transform_arrow` would give it (the
        columns of `pandas_frame`, with each source feature under its short and full name) and
        its output columns are converted as Feast converts them (`arrow_values`), without the
        Arrow tables Feast builds around the call."""
        import pandas as pd
        from feast.value_type import ValueType

        from healthmate_features._feast import as_feast_values

        if at is None:
            at = datetime.now(timezone.utc)
        times = list(at) if isinstance(at, (list, tuple)) else [at] * len(ids)
        if len(times) != len(ids):
            raise OnlineReadError(f"`at` has {len(times)} times for {len(ids)} user ids; pass one time or one per user")
        # The request time goes through the same proto round trip as in Feast (whole seconds, UTC),
        # once per distinct second.
        seconds = [t.replace(microsecond=0) for t in times]
        missing = [t for t in dict.fromkeys(seconds) if t not in _REQUEST_TIMES]
        if missing:
            if len(_REQUEST_TIMES) > 4096:
                _REQUEST_TIMES.clear()
            converted = as_feast_values([pd.Timestamp(t) for t in missing], ValueType.UNKNOWN)
            _REQUEST_TIMES.update(zip(missing, converted, strict=True))
        request = {name: [_REQUEST_TIMES[t] for t in seconds] for name in plan.request_data}

        out: dict[str, list] = {}
        extra_order: list[str] = []
        for odfv in plan.odfvs:
            columns = {JOIN_KEY: ids, **request, **{name: response[name] for name in odfv.inputs}}
            for full, short in odfv.aliases:  # Feast's _preprocess_arrow_table: both names of each source feature
                if full in columns:
                    columns.setdefault(short, columns[full])
                elif short in columns:
                    columns[full] = columns[short]
            for name, values in self._transform(odfv, columns).items():
                if name in out:
                    continue
                out[name] = values
                extra_order.append(name)
        if not set(extra_order) <= set(plan.order):
            plan.order.extend(n for n in extra_order if n not in plan.order)
        return out

    def _transform(self, odfv: _Odfv, columns: dict[str, list]) -> dict[str, list]:
        """One on-demand view's requested outputs (response name -> Feast's values) for the input `columns`.

        Through the view's registered twin (`register_rows`) when it has one and it answers,
        else through its pandas transformation. The first answer of a twin is checked against the
        transformation; a twin that differs is dropped for this plan (a warning)."""
        twin = _ROWS.get(odfv.rows) if odfv.rows is not None else None
        if twin is not None:
            computed = twin(columns)
            if computed is not None:
                fast = self._outputs(odfv, computed)
                if odfv.checked:
                    return fast
                slow = self._outputs(
                    odfv, _columns_of(odfv.view.feature_transformation.transform(pandas_frame(columns)))
                )
                odfv.checked = True
                if _same(fast, slow):
                    return fast
                odfv.rows = None
                _log.warning(
                    "on-demand view '%s': its online_rows twin %r differs from its transformation; using that",
                    odfv.view.name,
                    twin.__name__ if hasattr(twin, "__name__") else twin,
                )
                return slow
        return self._outputs(odfv, _columns_of(odfv.view.feature_transformation.transform(pandas_frame(columns))))

    @staticmethod
    def _outputs(odfv: _Odfv, result: dict[str, Any]) -> dict[str, list]:
        """The requested ones of a transformation's output columns, renamed and converted as Feast does."""
        from feast.value_type import ValueType

        from healthmate_features._feast import as_feast_values

        out: dict[str, list] = {}
        for column, values in result.items():
            name = odfv.renames.get(column, column)
            if name not in odfv.outputs or name in out:
                continue
            short = name.split("__", 1)[1] if "__" in name else name
            out[name] = as_feast_values(values, odfv.types.get(short, ValueType.UNKNOWN))
        return out


_REQUEST_TIMES: dict[datetime, Any] = {}  # a request time in whole seconds -> Feast's value of it


def _columns_of(frame: Any) -> dict[str, Any]:
    """A transformation's output frame as column -> values the way Feast reads them (`arrow_values`)."""
    return {column: arrow_values(frame[column]) for column in frame.columns}


def _same(a: dict[str, list], b: dict[str, list]) -> bool:
    """Equal outputs: same names in the same order, same types and values (NaN equal to NaN)."""
    if list(a) != list(b):
        return False
    for name, values in a.items():
        other = b[name]
        if len(values) != len(other):
            return False
        for x, y in zip(values, other, strict=True):
            if type(x) is not type(y) or not (x == y or (x != x and y != y)):
                return False
    return True


# --- on-demand views: the frames Feast's pandas transformations see -------------------------------------

_NONE = type(None)


def pandas_frame(columns: dict[str, list]) -> Any:
    """`pyarrow.Table.from_pydict(columns).to_pandas()`, the frame Feast hands a pandas transformation, built directly.

    Lists of ints, of floats and ints with nulls, of strings with nulls and of nulls only become
    the numpy arrays Arrow gives pandas (int64; float64 with NaN; object with None); any other
    list (datetimes, booleans, lists, ...) goes through Arrow, one column at a time. Equal column
    for column, dtype for dtype, to the Arrow round trip (tests/unit/test_online_frames.py).
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    arrays: dict[str, Any] = {}
    for name, values in columns.items():
        kinds = set(map(type, values))
        if kinds == {int}:
            try:
                arrays[name] = np.array(values, dtype=np.int64)
                continue
            except OverflowError:
                pass  # beyond int64: Arrow says what it does with it
        elif kinds and kinds <= {float, int, _NONE} and kinds & {float, int}:
            arrays[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            continue
        elif kinds <= {str, _NONE}:  # strings with nulls, or only nulls: objects as they are
            arrays[name] = np.array(values, dtype=object) if values else np.array([], dtype=object)
            continue
        elif kinds == {datetime} and all(v.tzinfo is timezone.utc for v in values):  # request times
            ticks = np.array([(v - _EPOCH) // _MICROSECOND for v in values], dtype=np.int64)
            arrays[name] = pd.array(ticks, dtype=_utc_microseconds())
            continue
        arrays[name] = pa.array(values).to_pandas().array
    return pd.DataFrame(arrays)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


@functools.cache
def _utc_microseconds() -> Any:
    """The pandas dtype Arrow gives a column of UTC datetimes (datetime64[us, UTC], Arrow's own tz object)."""
    import pyarrow as pa

    return pa.array([_EPOCH]).to_pandas().dtype


def arrow_values(column: Any) -> Any:
    """A transformation's output column as Feast reads it: `pa.Table.from_pandas(frame)[name].to_numpy()`.

    float64 and int64 columns are their own numpy arrays (Arrow's NaN -> null -> NaN round trip
    changes nothing); any other dtype goes through Arrow."""
    import numpy as np
    import pyarrow as pa

    if isinstance(column.dtype, np.dtype) and column.dtype in (np.float64, np.int64):
        return column.to_numpy()
    return pa.array(column, from_pandas=True).to_numpy(zero_copy_only=False)


# --- SQLite: Feast's SQLite online store, read in one query -----------------------------------------------


@dataclass
class _SqliteQuery:
    """The query of one plan: the rows of its fields, and a row per user of any view keyed by user_id."""

    body: str  # SELECTs over the table `k(entity_key)` of the users' keys, UNION ALL
    params: list[str]  # parameters the SELECTs bind after the keys (none: every row of the users is read)
    # (SELECT number, feature name) -> (index into the plan's fields, sqlite_aad's feature part)
    slots: dict[tuple[int, str], tuple[int, bytes]]
    tables: list[str]  # the table each SELECT number reads (values are sealed for their table)
    width: int  # number of fields
    # encrypting store: per SELECT number, (field id in the sealed row, index into the plan's fields)
    row_fields: dict[int, list[tuple[bytes, int]]] = field(default_factory=dict)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class _SqliteRows:
    """Rows of Feast's SQLite online store, read with its own connection: one query per lookup.

    The connection is the one Feast's online store of `store` opened (`_feast.sqlite_connection`):
    the FeatureStore keeps it for its lifetime, and nothing here opens or closes one.
    """

    def __init__(self, store: Any, keyring: Any = None) -> None:
        from healthmate_features import _feast

        self.project = store.config.project
        self._keyring = keyring  # values sealed by stores.encrypted_online: opened with it
        self._conn = _feast.sqlite_connection(store)
        self._key_of = _feast.int64_entity_key(JOIN_KEY)
        self._lock = threading.Lock()
        # In WAL mode (our encrypting store sets it) a read never waits for a writer's lock.
        self.wal = str(self._conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal"

    def query(self, slots: list[tuple[Any, str]], known: list[Any]) -> _SqliteQuery:
        """The query reading `slots` ((view, feature) per field) and whether users have a row in any `known` view."""
        from healthmate_features._feast import redis_field, sqlite_table

        tables: dict[str, list[str]] = {}
        for view, name in slots:
            tables.setdefault(sqlite_table(self.project, view), []).append(name)
        selects: list[str] = []
        params: list[str] = []
        index: dict[tuple[int, str], int] = {}
        for number, table in enumerate(tables):
            # Every row of the users in the table (an index range per user), the features not
            # asked for skipped in Python: cheaper for SQLite than a list of names to probe.
            selects.append(
                f"SELECT {number}, entity_key, feature_name, value FROM {_quote(table)} WHERE entity_key IN k"
            )
        row_fields: dict[int, list[tuple[bytes, int]]] = {}
        for field_index, (view, name) in enumerate(slots):
            number = list(tables).index(sqlite_table(self.project, view))
            index[(number, name)] = field_index
            row_fields.setdefault(number, []).append((redis_field(view.name, name), field_index))
        for table in dict.fromkeys(sqlite_table(self.project, view) for view in known):
            if table not in tables:  # a row of the tables above says as much
                selects.append(
                    f"SELECT -1, entity_key, NULL, NULL FROM k WHERE EXISTS "
                    f"(SELECT 1 FROM {_quote(table)} AS t WHERE t.entity_key = k.entity_key)"
                )
        return _SqliteQuery(
            body=" UNION ALL ".join(selects),
            params=params,
            slots={key: (at, encrypted_online.sqlite_aad_feature(key[1])) for key, at in index.items()},
            width=len(slots),
            tables=list(tables),
            row_fields=row_fields,
        )

    def read(self, ids: list[int], query: _SqliteQuery) -> tuple[dict[int, list], dict[int, bool]]:
        """Per distinct user: the stored values of the query's fields (None where absent), and whether it is known.

        Raises OnlineReadError when a table is missing (a view applied without its table)."""
        unique = list(dict.fromkeys(ids))
        keys = {self._key_of(u): u for u in unique}
        values: dict[int, list] = {u: [None] * query.width for u in unique}
        found: set[int] = set()
        if not query.body:
            return values, dict.fromkeys(unique, False)
        batch = list(keys)
        for start in range(0, len(batch), SQLITE_USERS_PER_QUERY):
            chunk = batch[start : start + SQLITE_USERS_PER_QUERY]
            marks = ", ".join(["(?)"] * len(chunk))
            # The rows as they are (one fetchall): SQLite packing them as JSON with hex blobs, to
            # spare per-row GIL handoffs, cost twice as much once the API read on its event loop.
            sql = f"WITH k(entity_key) AS (VALUES {marks}) {query.body}"
            try:
                with self._lock:
                    rows = self._conn.execute(sql, [*chunk, *query.params]).fetchall()
            except sqlite3.OperationalError as exc:
                raise OnlineReadError(f"the SQLite online store cannot be read as Feast laid it out: {exc}") from exc
            if self._keyring is not None:
                found.update(self._open_rows(rows, keys, query, values))
                continue
            for number, key, name, value in rows:
                user = keys[key]
                found.add(user)
                if value is None:  # a SELECT -1 row (the user is known), or a null value
                    continue
                slot = query.slots.get((number, name))
                if slot is not None:
                    values[user][slot[0]] = value
        return values, {u: u in found for u in unique}

    def _open_rows(self, rows: list[tuple], keys: dict[bytes, int], query: _SqliteQuery, values: dict) -> set[int]:
        """Open the sealed rows among `rows` (one per entity and view) into `values`; the users seen."""
        assert self._keyring is not None
        found: set[int] = set()
        blobs: list[bytes] = []  # sealed rows, their associated data and (user, SELECT number)
        aads: list[bytes] = []
        places: list[tuple[int, int]] = []
        for number, key, name, value in rows:
            user = keys[key]
            found.add(user)
            if name != encrypted_online.ROW_FEATURE or value is None:  # a SELECT -1 row: the user is known
                continue
            blobs.append(value)
            aads.append(encrypted_online.sqlite_aad(query.tables[number], key))
            places.append((user, number))
        if blobs:
            opened = unseal_many(self._keyring, blobs, aads, what="a row in the SQLite online store")
            for (user, number), plain in zip(places, opened, strict=True):
                row = row_codec.decode_row(plain)
                for field_id, slot_index in query.row_fields.get(number, ()):
                    values[user][slot_index] = row.get(field_id)
        return found
