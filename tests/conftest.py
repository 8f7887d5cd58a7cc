"""Shared fixtures: real servers when reachable, loud failure in CI when not."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

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


@pytest.fixture
def pg_dsn():
    """A fresh, empty Postgres database for one test; dropped afterwards. Yields its conninfo."""
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


@pytest.fixture
def redis_url():
    """A Redis URL plus a unique key prefix for one test; keys under the prefix are deleted afterwards.

    Yields (url, prefix)."""
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
