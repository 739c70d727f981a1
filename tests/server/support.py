"""A real synkworld server on 127.0.0.1 and real WebSocket clients (aiohttp's, and raw sockets)."""

from __future__ import annotations

import base64
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from synkworld import GridMap, Server, SynkObject, World
from synkworld.testing import ReferenceClient, ReferenceClientV2


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
    """A WebSocket client that applies every frame to a strict reference client.

    A version 2 client's `frames` hold its messages as decoded MessagePack maps,
    and its tick and resync frames as ``{"m": kind, "n": tick}``.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, version: int = 1) -> None:
        self.ws = ws
        self.version = version
        self.ref: ReferenceClient | ReferenceClientV2 = (
            ReferenceClientV2() if version == 2 else ReferenceClient()
        )
        self.frames: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
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
        expected = aiohttp.WSMsgType.BINARY if self.version == 2 else aiohttp.WSMsgType.TEXT
        if msg.type is not expected:
            raise ConnectionError(f"got {msg.type!r} ({msg.data!r}, {msg.extra!r})")
        frame: dict[str, Any]
        if self.version == 2:
            self.raw.append(msg.data)
            frame = self.ref.apply_frame(msg.data)
        else:
            frame = orjson.loads(msg.data)
            self.ref.apply(frame)
        self.frames.append(frame)
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

    async def connect(self, version: int = 1, **kw: Any) -> WsClient:
        """A client of protocol `version` (2: it offers the subprotocol synkworld.v2)."""
        if version == 2:
            kw.setdefault("protocols", ("synkworld.v2",))
        ws = await self.http.ws_connect(self.url + "/ws", **kw)
        c = WsClient(ws, version)
        c.hello = await c.recv()
        self.clients.append(c)
        return c

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self.server.loop.step()


def raw_ws_connect(url: str, *, rcvbuf: int | None = None, timeout_s: float = 5.0) -> socket.socket:
    """A blocking WebSocket client socket after the opening handshake (RFC 6455 4.1).

    A raw socket, unlike aiohttp's client, reads only when told to: it stands
    for a peer that stops reading.
    """
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout_s)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(f"closed during the handshake: {head!r}")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"handshake refused: {head!r}")
    return sock


def raw_ws_send_text(sock: socket.socket, payload: bytes) -> None:
    """Sends one masked text frame (clients mask, RFC 6455 5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(header + mask + masked)
