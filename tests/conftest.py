"""Shared fixtures: real servers when reachable, loud failure in CI when not; test data and repositories.

Tiers: tests/unit (no servers, no `feast apply`, no Feast CLI) and tests/integration (real
Feast, Postgres, Redis, CLI subprocesses and worker processes). The helpers under tests/helpers
reach the tests only through the fixtures below.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from healthmate_features.config import Settings
from tests.helpers.files import read_frame

from .helpers import frames, repos, temporal
from .helpers import small as small_data
from .helpers import tiny as tiny_data
from .helpers.settings import settings_for_dsn as _settings_for_dsn

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

PG_HINT = (
    "start PostgreSQL (pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start, "
    "or `docker compose up -d postgres`) or point HM_PG_HOST/HM_PG_PORT at one"
)
REDIS_HINT = (
    "start Redis (redis-server --daemonize yes --port 6379 --save '', "
    "or `docker compose up -d redis`) or point HM_REDIS_URL at one"
)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _require(host: str, port: int, what: str, hint: str) -> None:
    if _reachable(host, port):
        return
    message = f"{what} at {host}:{port} is unreachable; {hint}"
    if IN_CI:
        pytest.fail(f"CI=true requires {message}", pytrace=False)
    pytest.skip(message)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty Postgres database, dropped afterwards; yields its conninfo.

    Skips when the server is unreachable (fails under CI=true)."""
    host = os.environ.get("HM_PG_HOST", "127.0.0.1")
    port = int(os.environ.get("HM_PG_PORT", "5432"))
    user = os.environ.get("HM_PG_USER", "postgres")
    _require(host, port, "PostgreSQL", PG_HINT)
    import psycopg

    admin = f"host={host} port={port} user={user} dbname=postgres connect_timeout=5"
    name = f"hm_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"host={host} port={port} user={user} dbname={name} connect_timeout=5"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def redis_prefix() -> Iterator[tuple[str, str]]:
    """A Redis URL plus a unique key prefix; keys under the prefix are deleted afterwards.

    Skips when the server is unreachable (fails under CI=true). Yields (url, prefix)."""
    url = os.environ.get("HM_REDIS_URL", "redis://127.0.0.1:6379/0")
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    host = client.connection_pool.connection_kwargs.get("host", "127.0.0.1")
    port = int(client.connection_pool.connection_kwargs.get("port", 6379))
    _require(host, port, "Redis", REDIS_HINT)
    prefix = f"hm_test_{uuid.uuid4().hex[:12]}:"
    try:
        yield url, prefix
    finally:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture(scope="session")
def fresh_postgres_database():
    """The `postgres_database()` context manager, for fixtures that hold a database longer than one test."""
    return postgres_database


@pytest.fixture(scope="session")
def fresh_redis_prefix():
    """The `redis_prefix()` context manager, for fixtures that hold Redis keys longer than one test."""
    return redis_prefix


@pytest.fixture
def pg_dsn():
    """A fresh, empty Postgres database for one test; dropped afterwards. Yields its conninfo."""
    with postgres_database() as dsn:
        yield dsn


@pytest.fixture
def redis_url():
    """A Redis URL plus a unique key prefix for one test; keys under the prefix are deleted afterwards.

    Yields (url, prefix)."""
    with redis_prefix() as found:
        yield found


# -- settings --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def settings_for_dsn():
    """settings_for_dsn(dsn, repo_path): production-profile Settings over a libpq conninfo's database."""
    return _settings_for_dsn


@pytest.fixture
def sqlite_settings(tmp_path) -> Settings:
    """Settings of an empty embedded SQL store: SQLite under tmp_path."""
    return Settings.from_env(repo_path=tmp_path, profile="embedded")


@pytest.fixture
def postgres_settings(pg_dsn, tmp_path) -> Settings:
    """Settings of an empty production SQL store: a fresh Postgres database (conftest `pg_dsn`)."""
    return _settings_for_dsn(pg_dsn, tmp_path)


# -- test data -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny():
    """The tiny hand-made dataset (tests/helpers/tiny.py): raw_tables(), write_raw(), day(), rhr(), LAST_DAY."""
    return tiny_data


@pytest.fixture(scope="session")
def incremental_arrivals():
    """Raw data delivered in random steps (tests/helpers/arrivals.py): Arrivals(source, rng)."""
    from .helpers import arrivals

    return arrivals


@pytest.fixture(scope="session")
def population(tmp_path_factory) -> Path:
    """Raw tables of a generated population (14 users, 80 days, seed 3): read only."""
    from healthmate_features.raw.generate import generate

    out = tmp_path_factory.mktemp("population")
    generate(out, users=14, days=80, seed=3, progress=False)
    return out


@pytest.fixture(scope="session")
def small():
    """The small seeded random dataset (tests/helpers/small.py): raw_tables(users=12, days=75, seed=5)."""
    return small_data


@pytest.fixture(scope="session")
def rich_frame():
    """rich_frame(): a fresh frame with one column of every dtype the builder can produce."""
    return frames.rich_frame


@pytest.fixture(scope="session")
def dt_temporal_reference():
    """The temporal view as written with pandas' `.dt` accessors before issue 11 (tests/helpers/temporal.py):
    `.dt_reference(inputs)` and `.as_feast_pandas_mode(udf, table)`, Feast's pandas-mode call of a UDF."""
    return temporal


@pytest.fixture(scope="session")
def make_dataset():
    """make_dataset(seed=0, rows=40, columns=("a", "b", "c"), **metadata): a small ProcessedDataset."""
    from .helpers import datasets  # scikit-learn: imported by the tests that use it only

    return datasets.make_dataset


@pytest.fixture(scope="session")
def training_config():
    """training_config(name, **changes): configs/<name>.yaml as a dict, with changes applied."""
    return repos.training_config


# -- repositories ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def repo_root():
    """The root of this checkout (README, Makefile, configs/, feature_repo/)."""
    return repos.ROOT


@pytest.fixture(scope="session")
def copy_repo():
    """copy_repo(dest): a copy of the feature repository (YAML, .feastignore, feature_repo/) at dest."""
    return repos.copy_repo


@pytest.fixture(scope="session")
def build_tiny():
    """build_tiny(root, tables=None): Settings of a repository copy at root with the tiny dataset
    (or `tables`) ingested and built into feature tables; not applied."""
    return repos.build_tiny


@pytest.fixture(scope="session")
def tiny_built(tmp_path_factory) -> Settings:
    """The tiny dataset ingested and built into feature tables in a repository copy (not applied).

    Shared by the whole run: read it, never change it (tests/integration copies it to apply)."""
    return repos.build_tiny(tmp_path_factory.mktemp("tiny_built"))


@pytest.fixture(scope="session")
def feature_table():
    """feature_table(settings, name, user_id=1): one user's rows of a built feature table, by event time."""

    def read(settings: Settings, name: str, user_id: int = 1) -> pd.DataFrame:
        df = read_frame(settings, settings.features_dir / f"{name}.parquet")
        return df[df.user_id == user_id].set_index("event_timestamp").sort_index()

    return read
