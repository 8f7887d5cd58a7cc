"""Connections to the production profile's Redis: timeouts, Feast's connection string, failures.

Redis uses the settings' connect timeout (HM_CONNECT_TIMEOUT_S) as `socket_connect_timeout` and
their Redis timeout (HM_REDIS_TIMEOUT_S) as `socket_timeout`, so an unreachable or silent server
fails within a bounded time instead of hanging. Our clients (`connect`) never retry: one
unanswered command fails after that timeout, and the error names the limit. `check_redis` pings
once within the connect timeout. The online reader's client (`connect(..., timeout_s=deadline)`)
waits no longer than the online lookup deadline (HM_ONLINE_DEADLINE_S). Feast's own client gets
the same timeouts through the connection string; `materialize` turns its retries off
(`_feast.online_store_without_retries`); the plain `feast` CLI keeps redis-py's default of 3
retries with backoff, so a Redis lost under it is reported after 4 timeouts and some seconds.

TLS: a `rediss://` URL connects over TLS, always verifying the server's certificate and host name
against HM_REDIS_CA_CERT (or the system's CAs when unset); an ACL user and password go in the
URL (`rediss://user:password@host:port/0`). Every client (ours, Feast's, the Celery broker's)
gets the same options (`tls_options`, `redis_connection_string`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

from healthmate_features.config import Settings
from healthmate_features.errors import ConfigError, ServiceUnavailableError

REDIS_HINT = "start it (`docker compose up -d redis`) or point HM_REDIS_URL at a running server"


def tls_options(url: str, ca_cert: str = "") -> dict[str, Any]:
    """redis-py's TLS options for `url` (empty for redis://): verify the certificate and host name, with `ca_cert`.

    Raises ConfigError when HM_REDIS_CA_CERT is set for a redis:// (plain TCP) URL."""
    if urlsplit(url).scheme != "rediss":
        if ca_cert:
            raise ConfigError(
                "HM_REDIS_CA_CERT is set but HM_REDIS_URL is not a rediss:// (TLS) URL; "
                "use rediss://user:password@host:port/0 or unset HM_REDIS_CA_CERT"
            )
        return {}
    return {"ssl_cert_reqs": "required", "ssl_check_hostname": True, **({"ssl_ca_certs": ca_cert} if ca_cert else {})}


def redis_connection_string(url: str, *, timeout_s: float, socket_timeout_s: float = 30.0, ca_cert: str = "") -> str:
    """Feast's Redis `connection_string` (`host:port,db=N,...`) for a `redis://` URL, with timeouts.

    `timeout_s` is the connect timeout, `socket_timeout_s` how long one command (a pipelined write
    batch) may go unanswered (HM_REDIS_TIMEOUT_S); a rediss:// URL adds TLS with certificate and
    host name verification against `ca_cert` (HM_REDIS_CA_CERT).

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
    for name, value in tls_options(url, ca_cert).items():
        if "," in str(value):
            raise ConfigError(f"HM_REDIS_CA_CERT {value!r} contains a comma, which Feast cannot read; move the file")
        params.append(f"{name}={str(value).lower() if isinstance(value, bool) else value}")
    params += [f"socket_connect_timeout={timeout_s:g}", f"socket_timeout={socket_timeout_s:g}"]
    return ",".join(params)


def redis_address(settings: Settings) -> str:
    """`host:port/db` of the settings' Redis, for messages (never the password)."""
    parts = urlsplit(settings.redis_url)
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}/{parts.path.lstrip('/') or '0'}"


def redis_unavailable(
    settings: Settings, exc: BaseException, *, timeout_s: float | None = None, setting: str = "HM_REDIS_TIMEOUT_S"
) -> ServiceUnavailableError:
    """The error for a Redis that cannot be reached or does not answer in time.

    A timeout (redis-py's TimeoutError) names the limit that expired: `timeout_s` and its
    `setting` (default: the settings' HM_REDIS_TIMEOUT_S); anything else names the connect timeout."""
    import redis

    if isinstance(exc, redis.exceptions.TimeoutError):
        limit = settings.redis_timeout_s if timeout_s is None else timeout_s
        what = f"did not answer within {limit:g} s ({setting})"
    elif isinstance(exc, redis.exceptions.AuthenticationError):
        return ServiceUnavailableError(
            f"Redis at {redis_address(settings)} (HM_REDIS_URL) refused the credentials: {exc}; "
            "check the ACL user and password in HM_REDIS_URL (rediss://user:password@host:port/0)"
        )
    elif "certificate" in str(exc).lower() or "ssl" in str(exc).lower():
        return ServiceUnavailableError(
            f"Redis at {redis_address(settings)} (HM_REDIS_URL) failed to set up TLS: {exc}; check HM_REDIS_CA_CERT "
            f"(now {'set' if settings.redis_ca_cert else 'unset'}): it must be the CA file that signed the server's "
            "certificate, and the URL's host a name the certificate names"
        )
    else:
        what = (
            f"is unreachable or did not answer as Redis within {settings.connect_timeout_s:g} s (HM_CONNECT_TIMEOUT_S)"
        )
    return ServiceUnavailableError(f"Redis at {redis_address(settings)} (HM_REDIS_URL) {what}: {exc}; {REDIS_HINT}")


def connect(settings: Settings, *, timeout_s: float | None = None) -> Any:
    """A redis-py client of the settings' Redis with our timeouts and no retries (connections open on first use).

    A command fails after `timeout_s` unanswered (default HM_REDIS_TIMEOUT_S), connecting after
    the smaller of that and HM_CONNECT_TIMEOUT_S."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    timeout = settings.redis_timeout_s if timeout_s is None else timeout_s
    return redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=min(settings.connect_timeout_s, timeout),
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        **tls_options(settings.redis_url, settings.redis_ca_cert),
    )


def resp_arguments(*arguments: bytes) -> bytes:
    """`arguments` in the Redis protocol (RESP bulk strings): a command's arguments, or the tail of
    them that does not change (see `send_packed`)."""
    return b"".join(b"$%d\r\n%b\r\n" % (len(argument), argument) for argument in arguments)


def resp_command(name: bytes, count: int, head: bytes, tail: bytes = b"") -> bytes:
    """One command in the Redis protocol: `name` and `count` arguments, given packed (`resp_arguments`)."""
    return b"*%d\r\n%b%b%b" % (count + 1, resp_arguments(name), head, tail)


class PipelinedConnection:
    """One connection to the settings' Redis on which concurrent callers' commands are pipelined.

    `send` writes a caller's commands (already in the Redis protocol: `resp_command`) at once and
    waits for its own replies; Redis answers a connection's commands in order, so each caller takes
    the next replies as they arrive (hiredis parses them), whoever else is waiting. No pool, no
    connection check and no lock per call: for the online reader's lookups (`OnlineReader.fetch_async`)
    redis-py's asyncio pool cost about 90 us of CPU per lookup, this about 15. Bound to the event
    loop it is first used on (keep one per loop); it connects on first use with the URL's TLS
    (verifying the certificate and host name against HM_REDIS_CA_CERT, as `tls_options` does), ACL
    user, password and database, within the smaller of HM_CONNECT_TIMEOUT_S and `timeout_s`.

    A caller not answered within `timeout_s`, or cancelled while it waits (its own deadline),
    closes the connection: the callers behind it wait for replies that come later still, so they
    fail at once with the same TimeoutError; the next `send` connects again. Raises redis-py's
    errors (ConnectionError, TimeoutError, AuthenticationError; ResponseError for an error reply),
    which `answered_within` turns into ServiceUnavailableError."""

    def __init__(self, settings: Settings, *, timeout_s: float | None = None) -> None:
        self.settings = settings
        self.timeout_s = settings.redis_timeout_s if timeout_s is None else timeout_s
        self._wire: _Wire | None = None
        self._opening: asyncio.Future[_Wire] | None = None

    async def send(self, commands: bytes, replies: int) -> list[Any]:
        """Write `commands` (RESP) and return their `replies` replies, in order."""
        wire = self._wire
        if wire is None or wire.closed:
            wire = await self._open()
        answered = await wire.exchange(commands, replies, self.timeout_s)
        for reply in answered:
            if isinstance(reply, Exception):
                raise reply
        return answered

    async def close(self) -> None:
        """Close the connection; callers still waiting get ConnectionError."""
        import redis

        if self._wire is not None:
            self._wire.close(redis.exceptions.ConnectionError("the connection was closed"))

    async def _open(self) -> _Wire:
        """Connect once for every caller arriving meanwhile; raises as `send` does.

        The connection is kept once made, even when every caller waiting for it has gone (their
        deadline), and a connect that failed is not reused: the next caller starts another."""
        if self._opening is None or self._opening.done():
            self._opening = asyncio.ensure_future(self._connect())
            self._opening.add_done_callback(self._opened)
        return await asyncio.shield(self._opening)

    def _opened(self, opening: asyncio.Future[_Wire]) -> None:
        if not opening.cancelled() and opening.exception() is None:  # an error is each waiter's to raise
            self._wire = opening.result()

    async def _connect(self) -> _Wire:
        import ssl

        import redis

        parts = urlsplit(self.settings.redis_url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
        context = None
        if parts.scheme == "rediss":  # verifies the chain and the host name
            context = ssl.create_default_context(cafile=self.settings.redis_ca_cert or None)
        loop = asyncio.get_running_loop()
        try:
            _, wire = await asyncio.wait_for(
                loop.create_connection(_Wire, host, port, ssl=context, server_hostname=host if context else None),
                min(self.settings.connect_timeout_s, self.timeout_s),
            )
        except asyncio.TimeoutError as exc:
            raise redis.exceptions.TimeoutError(f"Timeout connecting to {host}:{port}") from exc
        except ssl.SSLError as exc:
            raise redis.exceptions.ConnectionError(f"SSL error connecting to {host}:{port}: {exc}") from exc
        except OSError as exc:
            raise redis.exceptions.ConnectionError(f"Error connecting to {host}:{port}: {exc}") from exc
        hello = []
        if parts.password:
            user = [unquote(parts.username)] if parts.username else []
            hello.append((b"AUTH", [a.encode() for a in (*user, unquote(parts.password))]))
        db = parts.path.lstrip("/") or "0"
        if db != "0":
            hello.append((b"SELECT", [db.encode()]))
        if hello:
            packed = b"".join(resp_command(name, len(args), resp_arguments(*args)) for name, args in hello)
            replies = await wire.exchange(packed, len(hello), self.timeout_s)
            for (name, _), reply in zip(hello, replies, strict=True):
                if isinstance(reply, Exception):
                    error = (
                        redis.exceptions.AuthenticationError if name == b"AUTH" else redis.exceptions.ConnectionError
                    )
                    wire.close(error(str(reply)))
                    raise error(str(reply))
        return wire


class _Wire(asyncio.Protocol):
    """One TCP (or TLS) connection of a PipelinedConnection: its callers waiting in order, and its reply parser."""

    def __init__(self) -> None:
        import hiredis
        import redis

        self.closed = False
        self._transport: Any = None
        self._parser = hiredis.Reader(
            protocolError=redis.exceptions.InvalidResponse, replyError=redis.exceptions.ResponseError
        )
        self._waiting: deque[tuple[asyncio.Future[list[Any]], int, list[Any]]] = deque()

    async def exchange(self, commands: bytes, replies: int, timeout_s: float) -> list[Any]:
        """Write `commands` and wait for the next `replies` replies after those of the callers before."""
        import redis

        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Any]] = loop.create_future()
        if self.closed:
            raise redis.exceptions.ConnectionError("the connection was closed")
        self._waiting.append((done, replies, []))
        self._transport.write(commands)
        timer = loop.call_later(timeout_s, self._expire, done, timeout_s)
        try:
            return await done
        except asyncio.CancelledError:  # the caller's own deadline: the replies behind are late too
            self.close(_late(timeout_s))
            raise
        finally:
            timer.cancel()

    def close(self, error: Exception) -> None:
        """Drop the connection; every caller still waiting gets `error`."""
        self.closed = True
        waiting, self._waiting = self._waiting, deque()
        if self._transport is not None:
            self._transport.abort()
        for done, _, _ in waiting:
            if not done.done():
                done.set_exception(error)

    def _expire(self, done: asyncio.Future[list[Any]], timeout_s: float) -> None:
        if not done.done():
            self.close(_late(timeout_s))

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        import redis

        self._parser.feed(data)
        while (reply := self._parser.gets()) is not False:
            if not self._waiting:  # out of step (a closed connection's late bytes): never reused
                self.close(redis.exceptions.ConnectionError("Redis sent a reply nobody asked for"))
                return
            done, expected, got = self._waiting[0]
            got.append(reply)
            if len(got) == expected:
                self._waiting.popleft()
                if not done.done():
                    done.set_result(got)

    def connection_lost(self, exc: Exception | None) -> None:
        import redis

        if not self.closed:
            self.close(redis.exceptions.ConnectionError(f"Redis closed the connection: {exc or 'end of stream'}"))


def _late(timeout_s: float) -> Exception:
    import redis

    return redis.exceptions.TimeoutError(f"Timeout reading from Redis (no reply within {timeout_s:g} s)")


_timed_out_at: dict[str, float] = {}  # Redis address -> when a command under `answered_within` last timed out


@contextmanager
def answered_within(settings: Settings, *, timeout_s: float, setting: str, fail_fast: bool = False) -> Iterator[None]:
    """Turn redis-py's connection errors and timeouts inside into ServiceUnavailableError naming `setting`.

    With `fail_fast` (releasing a lock), a command within `timeout_s` after a command to the same
    Redis timed out, and none has succeeded since, fails at once instead of waiting again:
    releasing the several locks of a run on a hung Redis costs one timeout, not one each (the
    leases lapse by themselves)."""
    import redis

    address = redis_address(settings)
    if fail_fast and time.monotonic() - _timed_out_at.get(address, float("-inf")) < timeout_s:
        raise ServiceUnavailableError(
            f"Redis at {address} (HM_REDIS_URL) did not answer within {timeout_s:g} s ({setting}) a moment ago; "
            f"not waiting for it again; {REDIS_HINT}"
        )
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        if isinstance(exc, redis.exceptions.TimeoutError):
            _timed_out_at[address] = time.monotonic()
        raise redis_unavailable(settings, exc, timeout_s=timeout_s, setting=setting) from exc
    _timed_out_at.pop(address, None)


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
        **tls_options(settings.redis_url, settings.redis_ca_cert),
    )
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:  # refused, timed out, or not speaking Redis at all
        raise redis_unavailable(
            settings, exc, timeout_s=settings.connect_timeout_s, setting="HM_CONNECT_TIMEOUT_S"
        ) from exc
    finally:
        client.close()
