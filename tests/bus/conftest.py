"""Fixtures of the bus tests: a redis-server of the session, and backends of each kind."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from synkworld.bus import BusBackend, MemoryHub
from synkworld.testing import FakeClock
from tests.bus.support import RedisServer, free_port


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis") / "redis.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_control(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The server, to stop and start in a test; started again afterwards whatever happens."""
    try:
        yield redis_server
    finally:
        if not redis_server.running:
            redis_server.start()


class Kind:
    """Makes backends of one kind over one shared medium, and moves its lease clock."""

    def __init__(self, name: str, make: Callable[[str], BusBackend], clock: FakeClock | None):
        self.name = name
        self._make = make
        self.clock = clock
        self.made: list[BusBackend] = []

    def backend(self, node: str = "n") -> BusBackend:
        made = self._make(node)
        self.made.append(made)
        return made

    async def pass_time(self, seconds: float) -> None:
        """Lets leases and heartbeats age by `seconds`."""
        if self.clock is not None:
            self.clock.advance(seconds)
        else:
            import asyncio

            await asyncio.sleep(seconds)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def kind(request: pytest.FixtureRequest) -> AsyncIterator[Kind]:
    if request.param == "memory":
        clock = FakeClock()
        hub = MemoryHub(clock=clock, maxlen=50)
        k = Kind("memory", hub.backend, clock)
        k.hub = hub  # type: ignore[attr-defined]
    else:
        from synkworld.bus import RedisBackend

        server: Any = request.getfixturevalue("redis_server")
        world = f"t{uuid.uuid4().hex[:10]}"
        k = Kind("redis", lambda node: RedisBackend(server.url, world, maxlen=50), None)
        k.server = server  # type: ignore[attr-defined]
    yield k
    for b in k.made:
        await b.close()
