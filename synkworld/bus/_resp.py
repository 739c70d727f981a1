"""A lean connection to Redis for the calls a cluster makes every tick.

Each process makes four round trips a tick (take the wanted keys, append its
entries, read the others', ask for snapshots). Through redis-py each costs about
100 µs of CPU (connection pool, retry and timeout wrappers, its parser's
Python side), which is a measurable share of a tick on a map shared by two
processes; here a round trip is hiredis packing the commands, one write, and
hiredis parsing the replies: about 15 µs.

It speaks RESP2 over TCP or a Unix socket, pipelines (replies come in the order
of the commands), and raises redis-py's exceptions, so the backend treats both
paths alike: `ConnectionError` when the connection is lost or cannot be made,
`TimeoutError` when a reply is late (the connection is then dropped, as its
replies can no longer be matched), `ResponseError` (`NoScriptError` for
NOSCRIPT) for an error reply. It connects again at the next call.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["RespConnection"]

Command = Sequence[str | bytes | int | float]


class _Replies(asyncio.Protocol):
    """Feeds what arrives to hiredis and completes the oldest waiting futures in order."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while waiting:
            reply = self.reader.gets()
            if reply is False:
                return
            future = waiting.popleft()
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)


class RespConnection:
    """One connection; `call` sends commands in one write and returns their replies."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.db, self.username, self.password = db, username, password
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._replies: _Replies | None = None
        self._connecting = asyncio.Lock()  # binds to a loop at first use, not here

    async def call(self, *commands: Command, extra_wait_s: float = 0.0) -> list[Any]:
        """The replies to the commands, in order; `extra_wait_s` for a command that blocks.

        An error reply raises once every reply has come, so the connection stays in step.
        """
        replies = await self._connected()
        transport = replies.transport
        assert transport is not None
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        replies.waiting.extend(futures)
        # hiredis's stub types the command as a tuple of one element.
        pack: Any = hiredis.pack_command
        transport.write(b"".join([pack(tuple(c)) for c in commands]))
        try:
            async with asyncio.timeout(self.timeout_s + extra_wait_s):
                out = [await f for f in futures]
        except TimeoutError:
            self.close()
            raise RedisTimeoutError("Redis did not answer in time") from None
        finally:
            for f in futures:
                if f.done() and not f.cancelled():
                    f.exception()  # the first failure is raised; the rest are the same loss
        for reply in out:
            if isinstance(reply, hiredis.ReplyError):
                text = str(reply)
                raise (NoScriptError if text.startswith("NOSCRIPT") else ResponseError)(text)
        return out

    async def _connected(self) -> _Replies:
        replies = self._replies
        if replies is not None and replies.lost is None:
            return replies
        async with self._connecting:
            replies = self._replies
            if replies is not None and replies.lost is None:
                return replies
            self._replies = None
            replies = await self._connect()
            self._replies = replies
            return replies

    async def _connect(self) -> _Replies:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if self.path is not None:
                    _, replies = await loop.create_unix_connection(_Replies, self.path)
                else:
                    _, replies = await loop.create_connection(_Replies, self.host, self.port)
        except (OSError, TimeoutError) as e:
            raise RedisConnectionError(f"cannot connect to Redis: {e or 'timed out'}") from e
        self._replies = replies
        setup: list[Command] = []
        if self.password is not None:
            auth: list[str] = ["AUTH", self.password]
            if self.username is not None:
                auth.insert(1, self.username)
            setup.append(auth)
        if self.db:
            setup.append(["SELECT", self.db])
        if setup:
            try:
                await self.call(*setup)
            except BaseException:
                self.close()
                raise
        return replies

    def close(self) -> None:
        """Drops the connection (replies still on their way are failed)."""
        replies, self._replies = self._replies, None
        if replies is not None and replies.transport is not None:
            replies.transport.close()
            if replies.lost is None:
                replies.connection_lost(None)
