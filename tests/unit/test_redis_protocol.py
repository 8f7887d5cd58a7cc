"""Commands packed once (backends.redis.resp_command) are byte for byte what redis-py sends."""

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
