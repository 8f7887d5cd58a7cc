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
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from healthmate_features.backends import backend_for
from healthmate_features.config import Settings
from healthmate_features.errors import FeatureRepoError, FeatureServiceNotFoundError, OnlineReadError

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
    each view where its previous materialization ended. No two materializations of one view
    overlap, in any process: each view's lock `materialize:<view>` (Backend.lock) is held, in
    name order, for the whole run.
    """
    backend = backend_for(settings)
    store = open_feature_store(settings)
    with backend.service_errors():
        _require_registry(store)
        names = sorted(views if views is not None else [view.name for view in store.list_feature_views()])
        if start is None or end is None:
            lo, hi = backend.feature_time_range([view.name for view in store.list_feature_views()])
            start = start or lo - timedelta(seconds=1)
            end = end or hi + timedelta(seconds=1)
        with ExitStack() as locks:
            for name in dict.fromkeys(names):
                locks.enter_context(backend.lock(f"materialize:{name}"))
            if incremental:
                store.refresh_registry()  # where the previous run (maybe another process's) ended
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


def online_features(
    settings: Settings,
    user_id: int,
    *,
    feature_service: str | None = None,
    at: datetime | None = None,
) -> dict[str, object]:
    """One user's online features as a flat dict (full `view__feature` names without a service).

    `at` is the request time fed to the on-demand temporal features (default: now, UTC).
    On Redis: read by healthmate_features.stores.online.OnlineReader, which returns what Feast
    returns; otherwise, and for what that reader does not serve, through Feast.
    """
    at = at or datetime.now(timezone.utc)
    backend = backend_for(settings)
    reader = online_reader(settings)
    if reader is not None:
        try:
            with backend.service_errors():
                if feature_service:
                    response = reader.get([user_id], feature_service=feature_service, at=at)
                else:
                    response = reader.get([user_id], features=reader.feature_refs(), at=at, full_feature_names=True)
            return {name: values[0] for name, values in response.items()}
        except OnlineReadError:
            pass  # a selection the fast reader does not serve: Feast's path below
    store = open_feature_store(settings)
    with backend.service_errors():
        _require_registry(store)
        features = feature_refs(store, feature_service)
        response = store.get_online_features(
            features=features,
            entity_rows=[{"user_id": int(user_id), "event_timestamp": pd.Timestamp(at)}],
            full_feature_names=feature_service is None,
        ).to_dict()
    return {name: values[0] for name, values in response.items()}


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
