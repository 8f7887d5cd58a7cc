"""The Feast configuration of each profile, and the servers the production profile depends on.

`feature_store.production.yaml` holds `${HM_...}` placeholders instead of hosts and passwords.
`repo_config(settings)` fills them from the package's Settings (environment variables with
localhost defaults), so nothing secret is ever committed and one settings object configures
both the package and Feast. For the plain `feast` CLI, `healthmate-features env` prints the
same values as `export` lines (Feast substitutes `${VAR}` from the environment itself, but knows
no defaults).

Timeouts: Postgres connections use `connect_timeout` (HM_CONNECT_TIMEOUT_S, at least 2 s, a
libpq minimum); Redis uses it as `socket_connect_timeout` and REDIS_SOCKET_TIMEOUT_S as
`socket_timeout`, so an unreachable or silent server fails within a bounded time instead of
hanging. Every command first checks both servers once (`check_services`, no retries); Feast's
own Redis client keeps redis-py's default of 3 retries with exponential backoff (at most
1 + 2 + 4 s), so a Redis lost mid-run is reported after at most 4 timeouts plus 7 s.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import yaml

from healthmate_features.config import Settings
from healthmate_features.errors import ConfigError, FeatureRepoError, ServiceUnavailableError

REDIS_SOCKET_TIMEOUT_S = 30.0  # one pipelined write batch must complete within this
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
PG_HINT = "start it (`docker compose up -d postgres`) or point HM_PG_HOST/HM_PG_PORT at a running server"
REDIS_HINT = "start it (`docker compose up -d redis`) or point HM_REDIS_URL at a running server"


def connect_timeout(settings: Settings) -> int:
    """Whole seconds for libpq's connect_timeout (it accepts integers only; 2 s is its minimum)."""
    return max(2, math.ceil(settings.connect_timeout_s))


def redis_connection_string(url: str, *, timeout_s: float) -> str:
    """Feast's Redis `connection_string` (`host:port,db=N,...`) for a `redis://` URL, with timeouts.

    Raises ConfigError for anything but a redis:// or rediss:// URL with a numeric database.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(f"HM_REDIS_URL {url!r} is not a redis:// or rediss:// URL; use e.g. redis://127.0.0.1:6379/0")
    db = parts.path.lstrip("/") or "0"
    if not db.isdigit():
        raise ConfigError(
            f"HM_REDIS_URL {url!r} names database {db!r}; Redis databases are numbers, e.g. redis://127.0.0.1:6379/0"
        )
    params = [f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}", f"db={db}"]
    if parts.username:
        params.append(f"username={unquote(parts.username)}")
    if parts.password:
        params.append(f"password={unquote(parts.password)}")
    if parts.scheme == "rediss":
        params.append("ssl=true")
    params += [f"socket_connect_timeout={timeout_s:g}", f"socket_timeout={REDIS_SOCKET_TIMEOUT_S:g}"]
    return ",".join(params)


def feast_variables(settings: Settings) -> dict[str, str]:
    """The values of every `${...}` placeholder of feature_store.production.yaml, from the settings."""
    return {
        "HM_PG_HOST": settings.pg_host,
        "HM_PG_PORT": str(settings.pg_port),
        "HM_PG_USER": settings.pg_user,
        "HM_PG_PASSWORD": settings.pg_password,
        "HM_PG_DATABASE": settings.pg_database,
        "HM_PG_SCHEMA": settings.pg_schema,
        "HM_PG_SSLMODE": settings.pg_sslmode,
        # Derived: the registry's SQLAlchemy URL needs a URL-quoted password and an integer timeout.
        "HM_FEAST_PG_PASSWORD_URL": quote(settings.pg_password, safe=""),
        "HM_FEAST_PG_CONNECT_TIMEOUT": str(connect_timeout(settings)),
        "HM_FEAST_REDIS": redis_connection_string(settings.redis_url, timeout_s=settings.connect_timeout_s),
    }


def _substitute(node: Any, variables: dict[str, str], where: str) -> Any:
    """Replace `${NAME}` in every string of a parsed YAML document (after parsing: no quoting issues)."""
    if isinstance(node, dict):
        return {k: _substitute(v, variables, where) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, variables, where) for v in node]
    if isinstance(node, str):

        def value(match: re.Match) -> str:
            name = match.group(1)
            if name not in variables:
                raise ConfigError(
                    f"{where} uses ${{{name}}}, which is not a setting (known: {', '.join(sorted(variables))}); "
                    "fix the placeholder"
                )
            return variables[name]

        return _PLACEHOLDER.sub(value, node)
    return node


def repo_config(settings: Settings, *, offline_store: dict[str, Any] | None = None):
    """Feast's RepoConfig for the settings' profile, placeholders filled from the settings.

    `offline_store` overrides keys of that section, e.g. `{"type": "postgres"}` for Feast's own
    Postgres store (what bench/ and the tests compare ours with).
    Raises FeatureRepoError if the profile's YAML file is missing, ConfigError if it is invalid.
    """
    from feast.repo_config import RepoConfig
    from pydantic import ValidationError

    path = settings.feature_store_yaml
    if not path.exists():
        raise FeatureRepoError(f"{path} not found; run from the repository root or set HM_REPO_PATH")
    raw = _substitute(yaml.safe_load(path.read_text()), feast_variables(settings), str(path))
    if offline_store:
        raw["offline_store"] = {**raw.get("offline_store", {}), **offline_store}
    try:
        config = RepoConfig(**raw)
    except ValidationError as exc:
        raise ConfigError(f"{path} is not a valid Feast configuration: {exc}") from exc
    config.repo_path = settings.repo_path
    return config


def env_lines(settings: Settings) -> list[str]:
    """`export` lines that let the plain `feast` CLI use the production profile like we do."""
    values = {"HM_PROFILE": "production", "HM_REPO_PATH": str(settings.repo_path), **feast_variables(settings)}
    return [f"export {k}={shlex.quote(v)}" for k, v in values.items()]


def _redis_address(settings: Settings) -> str:
    parts = urlsplit(settings.redis_url)
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}/{parts.path.lstrip('/') or '0'}"


def redis_unavailable(settings: Settings, exc: BaseException) -> ServiceUnavailableError:
    """The error for a Redis that cannot be reached or does not answer in time."""
    return ServiceUnavailableError(
        f"Redis at {_redis_address(settings)} (HM_REDIS_URL) is unreachable or did not answer as Redis "
        f"within {settings.connect_timeout_s:g} s: {exc}; {REDIS_HINT}"
    )


def postgres_unavailable(settings: Settings, exc: BaseException) -> ServiceUnavailableError:
    """The error for a Postgres that cannot be reached or refuses the connection."""
    reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return ServiceUnavailableError(
        f"PostgreSQL at {settings.pg_host}:{settings.pg_port} (database {settings.pg_database}, user "
        f"{settings.pg_user}; HM_PG_*) is unreachable within {connect_timeout(settings)} s: {reason}; {PG_HINT}"
    )


def check_redis(settings: Settings) -> None:
    """Ping Redis once within the connect timeout. Raises ServiceUnavailableError if it does not answer.

    No retries here (redis-py's default retries 3 times with up to 7 s of backoff): this check
    exists to fail fast before handing over to Feast, whose own client keeps those retries.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.connect_timeout_s,
        socket_timeout=settings.connect_timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:  # refused, timed out, or not speaking Redis at all
        raise redis_unavailable(settings, exc) from exc
    finally:
        client.close()


def check_services(settings: Settings) -> None:
    """Fail fast, within the connect timeouts, when Postgres or Redis of the production profile is down."""
    from healthmate_features.backends.postgres import connect

    with connect(settings):
        pass
    check_redis(settings)


@contextmanager
def service_errors(settings: Settings) -> Iterator[None]:
    """Turn connection failures raised inside Feast (psycopg, redis, SQLAlchemy) into ServiceUnavailableError."""
    import psycopg
    import redis

    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise redis_unavailable(settings, exc) from exc
    except psycopg.OperationalError as exc:
        raise postgres_unavailable(settings, exc) from exc
    except Exception as exc:
        from sqlalchemy.exc import OperationalError

        if isinstance(exc, OperationalError):
            raise postgres_unavailable(settings, exc) from exc
        raise
