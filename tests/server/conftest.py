"""A real synkworld server on 127.0.0.1 and real WebSocket clients (aiohttp's)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from synkworld import GridMap, Server, SynkObject, World
from tests.reference_client import ReferenceClient


class Ship(SynkObject, type="srv-ship"):
    x: float
    y: float
    hp: int = 10
    captain: str = ""


class Post(SynkObject, type="srv-post"):
    text: str


def make_world(objects: int = 0) -> World:
    n = iter(range(1, 10**9))
    world = World(
        GridMap(cell_size=100, bounds=(0, 0, 1000, 1000)), id_factory=lambda: f"o{next(n)}"
    )
    for i in range(objects):
        world.create(Ship(x=(i * 37) % 1000, y=(i * 91) % 1000))
    return world


class WsClient:
    """A WebSocket client that applies every frame to a strict reference client."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ref = ReferenceClient()
        self.frames: list[dict[str, Any]] = []
        self.hello: dict[str, Any] = {}
        self._pings = 0

    async def send(self, msg: dict[str, Any] | str | bytes) -> None:
        if isinstance(msg, dict):
            await self.ws.send_str(orjson.dumps(msg).decode())
        elif isinstance(msg, bytes):
            await self.ws.send_bytes(msg)
        else:
            await self.ws.send_str(msg)

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"got {msg.type!r} ({msg.data!r}, {msg.extra!r})")
        frame: dict[str, Any] = orjson.loads(msg.data)
        self.frames.append(frame)
        self.ref.apply(frame)
        return frame

    async def recv_until(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        while True:
            frame = await self.recv(timeout)
            if pred(frame):
                return frame

    async def sync(self) -> None:
        """Returns once every frame queued before now has arrived (pong comes after them)."""
        self._pings += 1
        t = self._pings
        await self.send({"m": "ping", "t": t})
        await self.recv_until(lambda f: f["m"] == "pong" and f["t"] == t)

    async def call(self, name: str, args: dict[str, Any], call_id: int = 1) -> dict[str, Any]:
        await self.send({"m": "call", "id": call_id, "name": name, "args": args})
        return await self.recv_until(
            lambda f: f["m"] in ("reply", "error") and f.get("id") == call_id
        )

    async def error(self) -> dict[str, Any]:
        return await self.recv_until(lambda f: f["m"] == "error")


class Harness:
    """A running server and a way to open clients to it."""

    def __init__(self, server: Server, url: str, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.url = url
        self.http = http
        self.clients: list[WsClient] = []

    @property
    def world(self) -> World:
        return self.server.world

    async def connect(self, **kw: Any) -> WsClient:
        ws = await self.http.ws_connect(self.url + "/ws", **kw)
        c = WsClient(ws)
        c.hello = await c.recv()
        self.clients.append(c)
        return c

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self.server.loop.step()


@pytest.fixture
def serve() -> Callable[..., contextlib.AbstractAsyncContextManager[Harness]]:
    @contextlib.asynccontextmanager
    async def run(server: Server | None = None, **kw: Any) -> AsyncIterator[Harness]:
        if server is None:
            kw.setdefault("autotick", False)
            server = Server(make_world(), freeze_gc=False, **kw)
        async with aiohttp.ClientSession() as http, server.running("127.0.0.1", 0) as url:
            h = Harness(server, url, http)
            try:
                yield h
            finally:
                for c in h.clients:
                    await c.ws.close()

    return run
