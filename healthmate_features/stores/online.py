"""A fast online read path for the Redis online store: Feast's answer, without Feast's per-call work.

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
  timestamps it then drops;
- values are decoded straight from the protobuf wire format for doubles (the bulk of our
  features), with `ValueProto` + Feast's `feast_value_type_to_python_type` for every other kind;
  Feast's key, field and value layout is known to `healthmate_features._feast` only;
- on-demand views run their own transformation (`transform_arrow`) on the same inputs Feast
  gives them, and their outputs go through Feast's own type conversion.

Like Feast's online read, no view TTL is applied: a value stays readable until the next
materialization replaces it or Redis expires the user's key (`key_ttl_seconds`).

`read` also says per user whether the online store knows them (`OnlineResult.found`): whether
the user's hash holds a row of any feature view (the `_ts:<view>` field Feast writes with every
row), read in the same HMGET. An unknown user and a known user whose values are all null give
the same features; only `found` tells them apart. (Feast's own Redis read cannot: it marks every
value PRESENT, even for a key that does not exist.)
The same pipeline reads the materialization markers of the views it reads
(`stores.online_marks`): a view the registry records as materialized whose marker Redis no longer
holds raises OnlineStoreLostError instead of answering with its values missing. The reader's Redis
client waits at most the online deadline (HM_ONLINE_DEADLINE_S) per command, without retries.
Only views keyed by the single INT64 join key `user_id` are served; anything else raises
OnlineReadError (`store.online_features` then falls back to Feast).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from healthmate_features.backends import backend_for, redis
from healthmate_features.config import Settings
from healthmate_features.errors import FeatureRepoError, FeatureServiceNotFoundError, OnlineReadError
from healthmate_features.stores import online_marks

JOIN_KEY = "user_id"
UNKNOWN_REFRESH_S = 5.0  # an unknown feature service refreshes the registry at most this often


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


@dataclass
class _Odfv:
    """One requested on-demand view: the view, its output names, the input columns it needs."""

    view: Any
    outputs: list[str]
    types: dict[str, Any]
    inputs: list[str]  # response names of the source features the transformation reads


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
    markers: list[online_marks.Marker] = field(default_factory=list)  # of the views read that were materialized


class OnlineReader:
    """Online features from the Redis online store, equal to Feast's get_online_features, faster.

    One reader per process: it keeps a Feast FeatureStore (for the registry), a Redis connection
    pool and the resolved plans. Thread-safe for concurrent `get` calls.
    """

    @staticmethod
    def serves(config: Any) -> bool:
        """Whether a Feast RepoConfig's online store is one this reader reads (Redis)."""
        return getattr(config.online_store, "type", None) == "redis"

    def __init__(self, settings: Settings, *, store: Any = None) -> None:
        """Open the profile's Feast store (or use `store`); raises OnlineReadError unless it is on Redis."""
        from healthmate_features import _feast

        self.settings = settings
        self.backend = backend_for(settings)
        self.store = store if store is not None else self.backend.open_feature_store()
        config = self.store.config
        if not self.serves(config):
            raise OnlineReadError(
                f"the online store of {self.backend.feature_store_yaml.name} is "
                f"{getattr(config.online_store, 'type', '?')!r}; "
                "the fast reader serves Redis only; use store.online_features (Feast) for it"
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
        self._plans: dict[tuple, _Plan] = {}
        self._plans_registry_ts = None
        self._lock = threading.Lock()
        self._unknown_refresh_at = float("-inf")

    # --- registry -------------------------------------------------------------------------

    def refresh(self) -> None:
        """Reload the registry now and drop every plan (e.g. right after an apply)."""
        self.store.refresh_registry()
        with self._lock:
            self._plans.clear()

    def _refreshed_recently(self) -> bool:
        """Refresh the registry for an unknown name, at most once per UNKNOWN_REFRESH_S; True if it did."""
        now = time.monotonic()
        if now - self._unknown_refresh_at < UNKNOWN_REFRESH_S:
            return False
        self._unknown_refresh_at = now
        self.store.registry.refresh(self.project)
        return True

    def _plan(self, feature_service: str | None, features: list[str] | None, full_feature_names: bool) -> _Plan:
        from healthmate_features._feast import registry_cache_stamp

        registry_ts = registry_cache_stamp(self.store.registry)  # Feast's own TTL: changes when its cache reloads
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
            odfv_plans.append(_Odfv(view=view, outputs=outputs[view_name], types=types, inputs=inputs))

        request = sorted(context.request_data)
        stored = [name for name, _ in columns]
        order = [JOIN_KEY] + request + stored
        order = [name for name in order if name in context.result_names or name == JOIN_KEY]
        # ODFV outputs follow in the order each transformation returns them: known after its first run.
        recorded = {v.name: v for v in registry.list_feature_views(self.project, allow_cache=True)}
        read = [recorded[name] for name in dict.fromkeys(v.name for v, _ in context.grouped_refs) if name in recorded]
        return _Plan(
            markers=online_marks.recorded_markers(self.settings, self.project, read),
            fields=fields,
            columns=columns,
            request_data=request,
            odfvs=odfv_plans,
            order=order,
            known=self._known_fields(),
            full_feature_names=full_feature_names,
            generic=generic,
        )

    def _known_fields(self) -> list[bytes]:
        """The `_ts:<view>` field of every feature view keyed by user_id (cached registry)."""
        from healthmate_features._feast import redis_timestamp_field

        views = self.store.registry.list_feature_views(self.project, allow_cache=True)
        return [redis_timestamp_field(v.name) for v in views if list(v.join_keys) == [JOIN_KEY]]

    def feature_refs(self) -> list[str]:
        """Every feature of every feature view and on-demand view, as 'view:feature' refs (cached registry)."""
        registry = self.store.registry
        views = registry.list_feature_views(self.project, allow_cache=True)
        odfvs = registry.list_on_demand_feature_views(self.project, allow_cache=True)
        return [f"{v.name}:{f.name}" for v in [*views, *odfvs] for f in v.features]

    # --- redis ----------------------------------------------------------------------------

    def _redis(self):
        if self._client is None:
            self._client = redis.connect(self.settings, timeout_s=self.settings.online_deadline_s)
        return self._client

    def redis_key(self, user_id: int) -> bytes:
        """The Redis key Feast writes a user's features under (serialize_entity_key v3 + project)."""
        return self._key_of(user_id)

    def close(self) -> None:
        """Close the Redis connection pool (the Feast store's own connections are Feast's)."""
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
        if (feature_service is None) == (features is None):
            raise OnlineReadError("pass exactly one of feature_service and features")
        ids = as_user_ids(user_ids)
        plan = self._plan(feature_service, features, full_feature_names)

        fields = plan.fields
        replies = self._hmget(ids, [*fields, *plan.known], markers=plan.markers)
        rows = [replies[u][: len(fields)] for u in ids]
        found = [any(value is not None for value in replies[u][len(fields) :]) for u in ids]

        from healthmate_features._feast import decode_values

        response: dict[str, list] = {JOIN_KEY: ids}
        decoded: dict[int, list] = {}
        for index in range(len(fields)):
            decoded[index] = decode_values([row[index] for row in rows], generic=index in plan.generic)
        for name, index in plan.columns:
            response[name] = decoded[index]
        if plan.odfvs:
            response.update(self._on_demand(plan, response, ids, at))
        return OnlineResult(features={name: response[name] for name in plan.order}, found=found)

    def known(self, user_ids: Sequence[int]) -> list[bool]:
        """Per user: whether the online store holds a row of any feature view for them (one HMGET each)."""
        ids = as_user_ids(user_ids)
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
            key_of = self._key_of
            for user_id in unique if fields else ():
                pipe.hmget(key_of(user_id), fields)
            if markers:
                pipe.mget([key for _, key, _ in markers])
            replies = pipe.execute()
        if markers:
            online_marks.check(self.settings, markers, replies.pop())
        if not fields:
            return {u: [] for u in unique}
        return dict(zip(unique, replies, strict=True))

    def _on_demand(self, plan: _Plan, response: dict[str, list], ids: list[int], at) -> dict[str, list]:
        """Run each requested on-demand view's own transformation; extend plan.order on first use."""
        import pandas as pd
        import pyarrow as pa
        from feast.value_type import ValueType

        from healthmate_features._feast import as_feast_values

        if at is None:
            at = datetime.now(timezone.utc)
        times = list(at) if isinstance(at, (list, tuple)) else [at] * len(ids)
        if len(times) != len(ids):
            raise OnlineReadError(f"`at` has {len(times)} times for {len(ids)} user ids; pass one time or one per user")
        # The request time goes through the same proto round trip as in Feast (whole seconds, UTC).
        distinct = {t: None for t in times}
        converted = as_feast_values([pd.Timestamp(t) for t in distinct], ValueType.UNKNOWN)
        as_feast = dict(zip(distinct, converted, strict=True))
        request = {name: [as_feast[t] for t in times] for name in plan.request_data}

        out: dict[str, list] = {}
        extra_order: list[str] = []
        for odfv in plan.odfvs:
            table = pa.Table.from_pydict({JOIN_KEY: ids, **request, **{name: response[name] for name in odfv.inputs}})
            result = odfv.view.transform_arrow(table, plan.full_feature_names)
            for name in result.column_names:
                if name not in odfv.outputs:
                    continue
                short = name.split("__", 1)[1] if "__" in name else name
                vtype = odfv.types.get(short, ValueType.UNKNOWN)
                out[name] = as_feast_values(result[name].to_numpy(), vtype)
                extra_order.append(name)
        if not set(extra_order) <= set(plan.order):
            plan.order.extend(n for n in extra_order if n not in plan.order)
        return out
