"""The lean Redis connection of the tick's bus calls, against a real redis-server."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from synkworld.bus._resp import RespConnection
from tests.bus.support import RedisServer, free_port

pytestmark = pytest.mark.redis


def _key() -> str:
    return f"resp:{uuid.uuid4().hex[:10]}"


def _connection(server: RedisServer, **options: object) -> RespConnection:
    return RespConnection(host="127.0.0.1", port=server.port, **options)  # type: ignore[arg-type]


async def test_replies_come_in_the_order_of_the_commands(redis_server: RedisServer) -> None:
    c = _connection(redis_server)
    key, stream = _key(), _key()
    try:
        replies = await c.call(
            ["SET", key, b"v\x00\xff"],
            ["GET", key],
            ["INCR", key + ":n"],
            ["XADD", stream, "7-0", "a", "1", "b", b"\x00"],
            ["XREAD", "COUNT", 10, "STREAMS", stream, "0-0"],
        )
        assert replies[:4] == [b"OK", b"v\x00\xff", 1, b"7-0"]
        # Stream fields come flat, as Redis sends them.
        assert replies[4] == [[stream.encode(), [[b"7-0", [b"a", b"1", b"b", b"\x00"]]]]]
        assert await c.call(["XREAD", "COUNT", 10, "STREAMS", stream, "7-0"]) == [None]
    finally:
        c.close()


async def test_an_error_reply_raises_and_the_connection_stays_in_step(
    redis_server: RedisServer,
) -> None:
    c = _connection(redis_server)
    key = _key()
    try:
        with pytest.raises(ResponseError, match="not an integer"):
            await c.call(["SET", key, "x"], ["INCR", key], ["SET", key + ":after", "y"])
        # The commands after the error ran, and the next call gets its own replies.
        assert await c.call(["GET", key + ":after"], ["GET", key]) == [b"y", b"x"]
        with pytest.raises(NoScriptError):
            await c.call(["EVALSHA", "0" * 40, 0])
        assert await c.call(["GET", key]) == [b"x"]
    finally:
        c.close()


async def test_a_late_reply_times_out_and_the_next_call_connects_again(
    redis_server: RedisServer,
) -> None:
    c = _connection(redis_server, timeout_s=0.1)
    key = _key()
    try:
        with pytest.raises(RedisTimeoutError):
            await c.call(["BLPOP", key, 2])
        # BLPOP's reply, should it come, would be out of step: this is a new connection.
        assert await c.call(["RPUSH", key, "x"], ["LPOP", key]) == [1, b"x"]
        # A blocking command is given its own time on top of the timeout.
        assert await c.call(["BLPOP", key, 0.3], extra_wait_s=0.5) == [None]
    finally:
        c.close()


async def test_nothing_to_connect_to_is_a_connection_error() -> None:
    c = RespConnection(host="127.0.0.1", port=free_port(), connect_timeout_s=1.0)
    with pytest.raises(RedisConnectionError, match="cannot connect"):
        await c.call(["PING"])


async def test_a_server_that_goes_away_fails_the_calls_waiting_and_is_reconnected(
    redis_control: RedisServer,
) -> None:
    c = _connection(redis_control)
    try:
        assert await c.call(["PING"]) == [b"PONG"]
        waiting = asyncio.ensure_future(c.call(["BLPOP", _key(), 5]))
        await asyncio.sleep(0.1)
        redis_control.stop()
        with pytest.raises(RedisConnectionError, match="lost"):
            await asyncio.wait_for(waiting, 3)
        with pytest.raises(RedisConnectionError):
            await c.call(["PING"])
        redis_control.start()
        assert await c.call(["PING"]) == [b"PONG"]
    finally:
        c.close()


async def test_it_selects_the_database_and_authenticates(redis_server: RedisServer) -> None:
    admin = aioredis.from_url(redis_server.url)
    user, key = f"u{uuid.uuid4().hex[:8]}", _key()
    await admin.execute_command("ACL", "SETUSER", user, "on", ">secret", "~*", "+@all")
    c = _connection(redis_server, db=3, username=user, password="secret")
    wrong = _connection(redis_server, username=user, password="wrong")
    try:
        await c.call(["SET", key, "in 3"])
        assert await admin.get(key) is None
        in_3 = aioredis.from_url(redis_server.url.rsplit("/", 1)[0] + "/3")
        assert await in_3.get(key) == b"in 3"
        await in_3.delete(key)
        await in_3.aclose()
        with pytest.raises(ResponseError, match="WRONGPASS"):
            await wrong.call(["PING"])
    finally:
        c.close()
        wrong.close()
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()


async def test_the_backend_appends_and_reads_over_a_unix_socket(redis_server: RedisServer) -> None:
    from synkworld._bus_backend import Append, AppendStatus
    from synkworld.bus import RedisBackend

    world = f"t{uuid.uuid4().hex[:10]}"
    b = RedisBackend(f"unix://{redis_server.socket_path}?db=0", world)
    try:
        assert b._fast is not None and b._fast.path == str(redis_server.socket_path)
        epoch = await b.acquire("r1", "a", 5000)
        assert epoch is not None
        (done,) = await b.append("a", [Append("r1", epoch, 1, {b"h": b"1"}, None, 5000)])
        assert done.status is AppendStatus.OK
        await b.want({"r1": ["main:0:0"]})
        assert await b.take_wanted(["r1"]) == {"r1": {"main:0:0"}}
        result = await b.read({"r1": -1}, 0.0)
        assert [(r.tick, r.fields) for r in result.records] == [(1, {b"h": b"1"})]
    finally:
        await b.close()
