"""Thin helpers around Feast: open the store of a profile, apply, materialize, read online and offline.

Feast owns definitions, the registry, materialization and serving; these functions only pick
the right configuration, fill in sensible defaults (materialization window = the feature
tables' time range) and turn Feast's failures into messages that say what to run.
"""

from __future__ import annotations

import sys
import threading
import warnings
from datetime import datetime, timedelta, timezone
from typing import Any

import pandas as pd

from healthmate_features.backends import profiles
from healthmate_features.config import Settings
from healthmate_features.errors import FeatureRepoError, FeatureServiceNotFoundError

ROW_COLUMN = "_hm_store_row"  # entity-frame row number carried through a join to restore the order


def open_store(settings: Settings):
    """The Feast FeatureStore of the settings' profile. Raises FeatureRepoError if unusable.

    Production: the configuration's placeholders are filled from the settings, and Postgres and
    Redis must answer within the connect timeout (else ServiceUnavailableError).
    """
    from feast import FeatureStore

    if not settings.feature_store_yaml.exists():
        raise FeatureRepoError(
            f"{settings.feature_store_yaml} not found; run from the repository root or set HM_REPO_PATH"
        )
    warnings.filterwarnings("ignore", message=".*experimental feature.*")
    if settings.profile == "production":
        config = profiles.repo_config(settings)
        profiles.check_services(settings)
        return FeatureStore(repo_path=str(settings.repo_path), config=config)
    return FeatureStore(repo_path=str(settings.repo_path), fs_yaml_file=settings.feature_store_yaml)


def apply(settings: Settings) -> str:
    """Run `feast apply` for the repository (registers every definition under feature_repo/).

    Runs the real Feast CLI in a child process: Feast changes the working directory and
    imports feature_repo/ as modules, neither of which should leak into this process. The child
    sees the settings as HM_* variables: `repo.source` picks each table's source by HM_PROFILE,
    and Feast fills the placeholders of feature_store.production.yaml from them.
    Returns Feast's output; raises FeatureRepoError with it when apply fails, and (production)
    ServiceUnavailableError when Postgres or Redis does not answer.
    """
    import os
    import shutil
    import subprocess
    from pathlib import Path

    feast = Path(sys.executable).parent / "feast"
    command = [str(feast) if feast.exists() else (shutil.which("feast") or "feast")]
    command += ["--chdir", str(settings.repo_path), "--feature-store-yaml", str(settings.feature_store_yaml), "apply"]
    env = {**os.environ, **settings.to_env()}
    if settings.profile == "production":
        profiles.repo_config(settings)  # a bad setting fails here, with our message
        profiles.check_services(settings)
        env.update(profiles.feast_variables(settings))
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


def feature_time_range(settings: Settings) -> tuple[datetime, datetime]:
    """Earliest and latest event_timestamp over the embedded profile's feature tables."""
    import duckdb

    files = sorted(settings.features_dir.glob("*.parquet"))
    if not files:
        raise FeatureRepoError(
            f"no feature tables in {settings.features_dir}; run `healthmate-features build-features --raw DIR`"
        )
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    union = " UNION ALL ".join(
        f"SELECT min(event_timestamp) lo, max(event_timestamp) hi FROM read_parquet('{f}')" for f in files
    )
    row = con.execute(f"SELECT min(lo), max(hi) FROM ({union})").fetchone()
    con.close()
    assert row is not None  # an aggregate without GROUP BY returns one row
    lo, hi = row
    return lo.astimezone(timezone.utc), hi.astimezone(timezone.utc)


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
    store = open_store(settings)
    with profiles.service_errors(settings):
        _require_registry(store)
        if start is None or end is None:
            if settings.profile == "production":
                from healthmate_features.backends.postgres import feature_time_range as pg_feature_time_range

                lo, hi = pg_feature_time_range(settings)
            else:
                lo, hi = feature_time_range(settings)
            start = start or lo - timedelta(seconds=1)
            end = end or hi + timedelta(seconds=1)
        if incremental:
            store.materialize_incremental(end_date=end, feature_views=views)
            return None, end
        store.materialize(start_date=start, end_date=end, feature_views=views)
    return start, end


def feature_refs(store, feature_service: str | None) -> list[str] | object:
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


_readers: dict[tuple, Any] = {}  # settings key -> OnlineReader
_readers_lock = threading.Lock()


def _reader_key(settings: Settings) -> tuple:
    return (
        str(settings.repo_path),
        settings.profile,
        settings.redis_url,
        settings.pg_host,
        settings.pg_port,
        settings.pg_database,
        settings.pg_schema,
        settings.pg_user,
    )


def online_reader(settings: Settings):
    """The process's OnlineReader for the settings (created on first use), or None unless on Redis.

    Opening it checks the servers like open_store; afterwards it follows Feast's registry cache
    (cache_ttl_seconds), and `apply` in this process drops it.
    """
    from healthmate_features.stores.online import OnlineReader

    key = _reader_key(settings)
    with _readers_lock:
        reader = _readers.get(key)
    if reader is None:
        store = open_store(settings)
        if getattr(store.config.online_store, "type", None) != "redis":
            return None
        reader = OnlineReader(settings, store=store)
        with _readers_lock:
            reader = _readers.setdefault(key, reader)
    return reader


def forget_online_reader(settings: Settings) -> None:
    """Drop the cached OnlineReader of the settings (after an apply: the next lookup re-reads the registry)."""
    with _readers_lock:
        reader = _readers.pop(_reader_key(settings), None)
    if reader is not None:
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
    Production (Redis): read by healthmate_features.stores.online.OnlineReader, which returns what
    Feast returns; otherwise, and for what that reader does not serve, through Feast.
    """
    at = at or datetime.now(timezone.utc)
    if settings.profile == "production":
        from healthmate_features.errors import OnlineReadError

        reader = online_reader(settings)
        if reader is not None:
            try:
                with profiles.service_errors(settings):
                    if feature_service:
                        response = reader.get([user_id], feature_service=feature_service, at=at)
                    else:
                        response = reader.get([user_id], features=reader.feature_refs(), at=at, full_feature_names=True)
                return {name: values[0] for name, values in response.items()}
            except OnlineReadError:
                pass  # a selection the fast reader does not serve: Feast's path below
    store = open_store(settings)
    with profiles.service_errors(settings):
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
    store = open_store(settings)
    with profiles.service_errors(settings):
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
            f"Feast returned {len(frame)} rows for an entity frame of {len(entities)}; duplicate feature rows per user and timestamp?"
        )
    frame = frame.sort_values(ROW_COLUMN, kind="stable").reset_index(drop=True)
    frame[list(entities.columns)] = entities
    return frame.drop(columns=ROW_COLUMN)
