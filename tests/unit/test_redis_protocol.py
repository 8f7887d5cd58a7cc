"""Commands packed once (backends.redis.resp_command) are byte for byte what redis-py sends; the
pipelined connection's connect (backends.redis.PipelinedConnection) against a socket that never answers."""

from __future__ import annotations

from redis.asyncio.connection import Connection

from healthmate_features.backends import redis as hm_redis


def test_packed_commands_are_redis_pys_own():
    fields = [b"\x01\x02\x03\x04", b"_ts:health_daily", b""]  # binary, text and empty arguments
    key = b"\x02\x00\x00\x00user_id\x04\x00\x00\x00\x08\x00\x00\x00\xff\xfe\x01\x00\x00\x00\x00\x00healthmate"
    packed = hm_redis.resp_command(
        b"HMGET", 1 + len(fields), hm_redis.resp_arguments(key), hm_redis.resp_arguments(*fields)
    )
    markers = [b"healthmate:online:healthmate:profile", "healthmate:online:healthmate:é".encode()]
    mget = hm_redis.resp_command(b"MGET", len(markers), hm_redis.resp_arguments(*markers))

    expected = b"".join(Connection().pack_commands([("HMGET", key, *fields), ("MGET", *markers)]))

    assert packed + mget == expected


def test_a_connect_every_caller_gave_up_on_is_not_reused_and_its_error_is_retrieved(tmp_path, caplog):
    """A TLS handshake that never completes (a socket that listens and never answers): the caller's
    own deadline cancels its wait; the abandoned connect fails on its own (its error retrieved, not
    logged as never retrieved), and the next caller connects afresh rather than taking that error."""
    import asyncio
    import gc
    import socket
    import time

    import pytest
    import redis

    from healthmate_features.config import Settings

    ping = hm_redis.resp_command(b"PING", 0, b"")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        settings = Settings.from_env(
            repo_path=tmp_path, redis_url=f"rediss://127.0.0.1:{port}/0", connect_timeout_s=0.3
        )

        async def scenario() -> float:
            connection = hm_redis.PipelinedConnection(settings, timeout_s=0.3)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(connection.send(ping, 1), 0.05)  # the caller's own deadline
            await asyncio.sleep(0.5)  # the abandoned connect times out meanwhile
            gc.collect()
            started = time.monotonic()
            with pytest.raises(redis.exceptions.TimeoutError, match="Timeout connecting"):
                await connection.send(ping, 1)
            await connection.close()
            return time.monotonic() - started

        waited = asyncio.run(scenario())
    assert waited > 0.2, waited  # a connect of its own, not the abandoned one's error at once
    assert "never retrieved" not in caplog.text, caplog.text
