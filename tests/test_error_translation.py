"""Every redis-py error a consumer or a producing call can meet becomes an aioredq error at
one point, aioredq._connection.translate."""

from __future__ import annotations

import inspect

import pytest
import redis.exceptions as rexc

from aioredq import AioredqError, ConnectError, RedisCommandError
from aioredq._connection import is_connection_error, translate, translated

# A text every error type accepts (a cluster redirection parses "slot host:port").
MESSAGE = "3999 127.0.0.1:6381"


def _redis_errors() -> list[type[rexc.RedisError]]:
    found = [
        value
        for value in vars(rexc).values()
        if inspect.isclass(value) and issubclass(value, rexc.RedisError)
    ]
    return sorted(set(found), key=lambda cls: cls.__name__)


def test_redis_py_has_the_error_types_this_file_walks() -> None:
    names = {cls.__name__ for cls in _redis_errors()}
    assert {"ResponseError", "ConnectionError", "TimeoutError", "NoPermissionError"} <= names


@pytest.mark.parametrize("cls", _redis_errors(), ids=lambda cls: cls.__name__)
def test_every_redis_error_maps_to_an_aioredq_error(cls: type[rexc.RedisError]) -> None:
    error = cls(MESSAGE)
    result = translate(error, "enqueue on 'jobs'")
    assert isinstance(result, AioredqError)
    assert "enqueue on 'jobs'" in str(result) and cls.__name__ in str(result)
    # A lost connection is an outage (retried, ConnectError); anything else is a command error.
    expected = ConnectError if is_connection_error(error) else RedisCommandError
    assert type(result) is expected


@pytest.mark.parametrize("cls", _redis_errors(), ids=lambda cls: cls.__name__)
async def test_translated_chains_the_original(cls: type[rexc.RedisError]) -> None:
    error = cls(MESSAGE)

    async def call() -> None:
        raise error

    with pytest.raises(AioredqError) as caught:
        await translated("lag of 'events'", call)
    assert caught.value.__cause__ is error


def test_an_error_that_is_not_redis_py_s_is_left_alone() -> None:
    error = ValueError("bad")
    assert translate(error, "x") is error
