"""Connections to the production profile's Redis: timeouts, Feast's connection string, failures.

Redis uses the settings' connect timeout (HM_CONNECT_TIMEOUT_S) as `socket_connect_timeout` and
REDIS_SOCKET_TIMEOUT_S as `socket_timeout`, so an unreachable or silent server fails within a
bounded time instead of hanging. `check_redis` pings once without retries; Feast's own Redis
client keeps redis-py's default of 3 retries with exponential backoff (at most 1 + 2 + 4 s), so
a Redis lost mid-run is reported after at most 4 timeouts plus 7 s.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from healthmate_features.config import Settings
from healthmate_features.errors import ConfigError, ServiceUnavailableError

REDIS_SOCKET_TIMEOUT_S = 30.0  # one pipelined write batch must complete within this
REDIS_HINT = "start it (`docker compose up -d redis`) or point HM_REDIS_URL at a running server"


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


def redis_address(settings: Settings) -> str:
    """`host:port/db` of the settings' Redis, for messages (never the password)."""
    parts = urlsplit(settings.redis_url)
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}/{parts.path.lstrip('/') or '0'}"


def redis_unavailable(settings: Settings, exc: BaseException) -> ServiceUnavailableError:
    """The error for a Redis that cannot be reached or does not answer in time."""
    return ServiceUnavailableError(
        f"Redis at {redis_address(settings)} (HM_REDIS_URL) is unreachable or did not answer as Redis "
        f"within {settings.connect_timeout_s:g} s: {exc}; {REDIS_HINT}"
    )


def connect(settings: Settings) -> Any:
    """A redis-py client of the settings' Redis with our timeouts (connections open on first use)."""
    import redis

    return redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=settings.connect_timeout_s, socket_timeout=REDIS_SOCKET_TIMEOUT_S
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
