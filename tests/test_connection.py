"""The clients aioredq makes: every scheme packs commands with hiredis, with redis-py's own
packing as the fallback, and what goes over the wire is the same either way."""

from __future__ import annotations

import ssl

import pytest
import redis.asyncio
from redis.asyncio.connection import Connection as PlainConnection
from redis.exceptions import DataError

from aioredq._connection import Connection
from aioredq._url import parse_url


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("redis://127.0.0.1:1/0", "Connection"),
        ("rediss://127.0.0.1:1/0", "SSLConnection"),
        ("unix:///tmp/aioredq-none.sock", "UnixDomainSocketConnection"),
    ],
)
def test_each_scheme_keeps_its_connection_class_and_packs_with_hiredis(url: str, base: str) -> None:
    cls = Connection(parse_url(url)).command.connection_pool.connection_class
    assert cls.__name__ == f"Packed{base}"
    assert base in [c.__name__ for c in cls.__mro__[1:]]


async def test_packed_commands_are_the_same_bytes_and_round_trip(redis_url: str) -> None:
    conn = Connection(parse_url(redis_url))
    client = conn.command
    packed = client.connection_pool.make_connection()
    plain = PlainConnection()
    for args in [
        ("SET", "k", b"\xff\x00 raw", 3, 1.5),
        ("CLIENT SETNAME", "x"),
        ("RPUSH", "k", "é" * 5000, b"y" * 7000),
    ]:
        assert b"".join(packed.pack_command(*args)) == b"".join(plain.pack_command(*args))
    with pytest.raises(DataError):
        packed.pack_command("SET", "k", True)
    await client.set("packed", b"\xff\x00 raw")
    assert await client.get("packed") == b"\xff\x00 raw"
    await client.delete("packed")
    await conn.aclose()


def test_an_encoding_other_than_utf8_is_left_to_redis_py() -> None:
    client = redis.asyncio.Redis.from_url("redis://127.0.0.1:1/0", encoding="latin-1")
    conn = Connection(parse_url("redis://127.0.0.1:1/0"))
    packed_cls = conn.command.connection_pool.connection_class
    packed = packed_cls(**client.connection_pool.connection_kwargs)
    assert b"\xe9" in b"".join(packed.pack_command("SET", "k", "é"))


def test_an_ssl_context_keeps_hiredis_packing() -> None:
    context = ssl.create_default_context()
    conn = Connection(parse_url("rediss://127.0.0.1:1/0", context))
    cls = conn.command.connection_pool.connection_class
    assert cls.__name__ == "PackedContextSSLConnection"
    assert cls(host="127.0.0.1", port=1, ssl_context=context)._connection_arguments() == {
        "host": "127.0.0.1",
        "port": 1,
        "ssl": context,
    }
