"""Thin helpers around Feast: open the store of a profile, apply, materialize, read online and offline.

Feast owns definitions, the registry, materialization and serving; these functions only pick
the right configuration, fill in sensible defaults (materialization window = the feature
tables' time range) and turn Feast's failures into messages that say what to run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import warnings
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from healthmate_features.backends import backend_for
from healthmate_features.config import Settings
from healthmate_features.errors import (
    FeatureRepoError,
    FeatureServiceNotFoundError,
    OnlineReadError,
    UserNotFoundError,
)
from healthmate_features.stores.online import OnlineResult, as_user_ids

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

    from healthmate_features.stores.online import OnlineReader

ROW_COLUMN = "_hm_store_row"  # entity-frame row number carried through a join to restore the order


def open_feature_store(settings: Settings) -> FeatureStore:
    """The Feast FeatureStore of the settings' profile. Raises FeatureRepoError if unusable.

    Production: the configuration's placeholders are filled from the settings, and Postgres and
    Redis must answer within the connect timeout (else ServiceUnavailableError).
    """
    warnings.filterwarnings("ignore", message=".*experimental feature.*")
    return backend_for(settings).open_feature_store()


def apply(settings: Settings) -> str:
    """Run `feast apply` for the repository (registers every definition under feature_repo/).

    Runs the real Feast CLI in a child process: Feast changes the working directory and
    imports feature_repo/ as modules, neither of which should leak into this process. The child
    sees the settings as HM_* variables (`features.definitions.source` picks each table's source
    by HM_PROFILE) and the values of the profile's `${...}` placeholders.
    Returns Feast's output; raises FeatureRepoError with it when apply fails, and (production)
    ServiceUnavailableError when Postgres or Redis does not answer.
    """
    backend = backend_for(settings)
    feast = Path(sys.executable).parent / "feast"
    command = [str(feast) if feast.exists() else (shutil.which("feast") or "feast")]
    command += ["--chdir", str(settings.repo_path), "--feature-store-yaml", str(backend.feature_store_yaml), "apply"]
    env = {**os.environ, **backend.feast_env()}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    forget_online_reader(settings)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
        raise FeatureRepoError(f"`feast apply` failed in {settings.repo_path}:\n{tail}")
    return result.stdout


def _require_registry(store) -> None:
    if not store.list_feature_views():
        raise FeatureRepoError(
            f"the Feast registry of {store.repo_path} has no feature views; run `feast apply` from the repository root"
        )


def materialize(
    settings: Settings,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    incremental: bool = False,
    views: list[str] | None = None,
) -> tuple[datetime | None, datetime]:
    """Load the latest feature values up to `end` into the online store; return the window used.

    Default window: the feature tables' whole time range (the generated data lies in the past,
    so Feast's default "now minus TTL" would find nothing). With `incremental`, Feast starts
    each view where its previous materialization ended.
    """
    backend = backend_for(settings)
    store = open_feature_store(settings)
    with backend.service_errors():
        _require_registry(store)
        if start is None or end is None:
            lo, hi = backend.feature_time_range([view.name for view in store.list_feature_views()])
            start = start or lo - timedelta(seconds=1)
            end = end or hi + timedelta(seconds=1)
        if incremental:
            store.materialize_incremental(end_date=end, feature_views=views)
            return None, end
        store.materialize(start_date=start, end_date=end, feature_views=views)
    return start, end


def feature_refs(store: FeatureStore, feature_service: str | None) -> list[str] | FeatureService:
    """The features to read: a feature service's, or every feature of every view."""
    if feature_service:
        try:
            return store.get_feature_service(feature_service)
        except Exception as exc:
            names = ", ".join(s.name for s in store.list_feature_services())
            raise FeatureServiceNotFoundError(
                f"feature service '{feature_service}' not found (have: {names}); run `feast apply` if it is new"
            ) from exc
    refs = [f"{fv.name}:{f.name}" for fv in store.list_feature_views() for f in fv.features]
    refs += [f"{v.name}:{f.name}" for v in store.list_on_demand_feature_views() for f in v.features]
    return refs


_NO_READER = object()  # cached for settings whose online store the fast reader does not serve
_readers: dict[Settings, object] = {}
_readers_lock = threading.Lock()


def online_reader(settings: Settings) -> OnlineReader | None:
    """The process's OnlineReader for the settings (created on first use), or None unless on Redis.

    Opening it checks the servers like open_feature_store; afterwards it follows Feast's registry
    cache (cache_ttl_seconds), and `apply` in this process drops it.
    """
    from healthmate_features.stores.online import OnlineReader

    with _readers_lock:
        reader = _readers.get(settings)
    if reader is None:
        store = open_feature_store(settings)
        reader = OnlineReader(settings, store=store) if OnlineReader.serves(store.config) else _NO_READER
        with _readers_lock:
            reader = _readers.setdefault(settings, reader)
    return reader if isinstance(reader, OnlineReader) else None


def forget_online_reader(settings: Settings) -> None:
    """Drop the cached OnlineReader of the settings (after an apply: the next lookup re-reads the registry)."""
    from healthmate_features.stores.online import OnlineReader

    with _readers_lock:
        reader = _readers.pop(settings, None)
    if isinstance(reader, OnlineReader):
        reader.close()


def online_lookup(
    settings: Settings,
    user_ids: Sequence[int],
    *,
    feature_service: str | None = None,
    at: datetime | Sequence[datetime] | None = None,
) -> OnlineResult:
    """Online features of users, and per user whether the online store knows them (`found`).

    `features` is shaped like Feast's `get_online_features(...).to_dict()` (full `view__feature`
    names without a service). A user is found when the online store holds a row of any feature
    view for them; an unknown user's stored features are None like missing values, so read
    `found`. `at` is the request time fed to the on-demand temporal features: one for all users
    or one per user (default: now, UTC).
    On Redis: read by healthmate_features.stores.online.OnlineReader, which returns what Feast
    returns; otherwise, and for what that reader does not serve, through Feast, whose per-value
    statuses say which users have a row (a second, small read decides users without one in the
    views asked for).
    """
    at = at if at is not None else datetime.now(timezone.utc)
    ids = as_user_ids(user_ids)
    times = list(at) if isinstance(at, Sequence) and not isinstance(at, str) else [at] * len(ids)
    if len(times) != len(ids):
        raise OnlineReadError(f"`at` has {len(times)} times for {len(ids)} user ids; pass one time or one per user")
    backend = backend_for(settings)
    reader = online_reader(settings)
    if reader is not None:
        try:
            with backend.service_errors():
                if feature_service:
                    return reader.read(ids, feature_service=feature_service, at=times)
                return reader.read(ids, features=reader.feature_refs(), at=times, full_feature_names=True)
        except OnlineReadError:
            pass  # a selection the fast reader does not serve: Feast's path below
    store = open_feature_store(settings)
    with backend.service_errors():
        _require_registry(store)
        features = feature_refs(store, feature_service)
        full_feature_names = feature_service is None
        rows = [{"user_id": u, "event_timestamp": pd.Timestamp(t)} for u, t in zip(ids, times, strict=True)]
        response = store.get_online_features(features=features, entity_rows=rows, full_feature_names=full_feature_names)
        if reader is not None:  # Feast's Redis read marks absent values PRESENT: ask Redis itself
            found = reader.known(ids)
        else:
            found = _found(store, response, features, full_feature_names, ids)
    return OnlineResult(features=response.to_dict(), found=found)


def _found(store: FeatureStore, response, features, full_feature_names: bool, ids: list[int]) -> list[bool]:
    """Per user of a Feast online response: whether any feature view holds a row for them.

    A stored feature's status is NOT_FOUND exactly when its view has no row for the user; users
    with no row in the views asked for are then looked up in every view keyed by user_id."""
    from healthmate_features import _feast

    context = _feast.online_request_context(store.registry, store.project, features, full_feature_names)
    stored = {
        f"{view.projection.name_to_use()}__{name}" if full_feature_names else name
        for view, names in context.grouped_refs
        for name in names
    }
    present = [values for name, values in _feast.stored_in_response(response).items() if name in stored]
    found = [any(values[i] for values in present) for i in range(len(ids))]
    unsure = sorted({u for u, known in zip(ids, found, strict=True) if not known})
    if unsure:
        views = [
            v for v in store.list_feature_views(allow_cache=True) if list(v.join_keys) == ["user_id"] and v.features
        ]
        probe = store.get_online_features(
            features=[f"{v.name}:{v.features[0].name}" for v in views],
            entity_rows=[{"user_id": u} for u in unsure],
            full_feature_names=True,
        )
        columns = [values for name, values in _feast.stored_in_response(probe).items() if name != "user_id"]
        known = {u for i, u in enumerate(unsure) if any(values[i] for values in columns)}
        found = [known_ or u in known for u, known_ in zip(ids, found, strict=True)]
    return found


def online_features(
    settings: Settings,
    user_id: int,
    *,
    feature_service: str | None = None,
    at: datetime | None = None,
) -> dict[str, object]:
    """One user's online features as a flat dict (full `view__feature` names without a service).

    `at` is the request time fed to the on-demand temporal features (default: now, UTC).
    Raises UserNotFoundError when the online store holds no row of any feature view for the
    user (see `online_lookup`), so an unknown user never reads as a user whose values are missing.
    """
    result = online_lookup(settings, [user_id], feature_service=feature_service, at=at)
    if not result.found[0]:
        raise UserNotFoundError(
            f"user {user_id} is not in the online store: no feature view holds a row for them "
            "(an id the feature tables do not know, not materialized yet, or expired from Redis); "
            "check the id, or run `healthmate-features materialize`"
        )
    return {name: values[0] for name, values in result.features.items()}


def historical_features(
    settings: Settings,
    entity_df: pd.DataFrame,
    *,
    feature_service: str | None = None,
    features: list[str] | None = None,
    full_feature_names: bool = False,
    filter_by_created_timestamp: bool = False,
) -> pd.DataFrame:
    """Point-in-time join of `entity_df` (user_id, event_timestamp, ...) through Feast.

    Rows come back in the order of `entity_df`, with its own entity columns (values and dtypes):
    Feast's DuckDB and Postgres stores return rows in no guaranteed order, and the Postgres store
    drops the time zone of `event_timestamp`. A row-number column carried through the join restores both.
    """
    store = open_feature_store(settings)
    with backend_for(settings).service_errors():
        _require_registry(store)
        refs = features if features is not None else feature_refs(store, feature_service)
        entities = entity_df.reset_index(drop=True)
        numbered = entities.assign(**{ROW_COLUMN: range(len(entities))})
        job = store.get_historical_features(
            entity_df=numbered,
            features=refs,
            full_feature_names=full_feature_names,
            filter_by_created_timestamp=filter_by_created_timestamp,
        )
        frame = job.to_df()
    if len(frame) != len(entities):
        raise FeatureRepoError(
            f"Feast returned {len(frame)} rows for an entity frame of {len(entities)}; "
            "duplicate feature rows per user and timestamp?"
        )
    frame = frame.sort_values(ROW_COLUMN, kind="stable").reset_index(drop=True)
    frame[list(entities.columns)] = entities
    return frame.drop(columns=ROW_COLUMN)
