"""Every bad input gets its docs/protocol.md error, and the server keeps serving the others."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest

from synkworld import Limits
from tests.server.support import Harness, Ship, WsClient, raw_ws_connect, raw_ws_send_text

pytestmark = pytest.mark.timeout(60)


async def still_serving(h: Harness, bystander: WsClient) -> None:
    """The bystander still gets its frames and answers."""
    await bystander.send({"m": "view", "rect": [0, 0, 50, 50], "margin": 0})
    await bystander.sync()
    h.step()
    await bystander.sync()
    ship = h.world.create(Ship(x=5, y=5))
    h.step()
    frame = await bystander.recv_until(lambda f: f["m"] == "tick")
    assert any(a["id"] == ship.id for b in frame["b"] for a in b.get("add", []))
    await bystander.sync()


# Every rule for bad frames is tested without a network in tests/test_client_protocol.py;
# these show that an error goes out on the wire and the connection stays up.
@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("this is not json", "bad_json"),
        ('{"m": "teleport"}', "unknown_message"),
        ('{"m": "view", "rect": [10, 10, 0, 0]}', "bad_message"),
        ('{"m": "sub", "add": ["main:00:0"]}', "bad_message"),
    ],
)
async def test_bad_frames(serve: Any, frame: str, code: str) -> None:
    async with serve() as h:
        bad, bystander = await h.connect(), await h.connect()
        await bad.send(frame)
        err = await bad.error()
        assert err["code"] == code
        assert err["id"] is None
        assert isinstance(err["msg"], str) and err["msg"]
        await bad.sync()  # the connection stays open
        await still_serving(h, bystander)


async def test_binary_frame(serve: Any) -> None:
    async with serve() as h:
        c = await h.connect()
        await c.send(b'{"m":"ping","t":1}')
        assert (await c.error())["code"] == "bad_json"
        await c.sync()


async def test_too_many_keys_changes_nothing(serve: Any) -> None:
    async with serve(limits=Limits(max_keys=10)) as h:
        c = await h.connect()
        await c.send({"m": "view", "rect": [0, 0, 150, 150], "margin": 0})
        await c.sync()
        await c.send({"m": "view", "rect": [0, 0, 1000, 1000], "margin": 0})
        assert (await c.error())["code"] == "too_many_keys"
        await c.send({"m": "sub", "add": [f"k{i}" for i in range(7)]})
        assert (await c.error())["code"] == "too_many_keys"
        h.step()
        frame = await c.recv()
        assert sorted(frame["sub"]["add"]) == ["main:0:0", "main:0:1", "main:1:0", "main:1:1"]


async def test_oversized_frame_closes_with_1009(serve: Any) -> None:
    async with serve() as h:
        c, bystander = await h.connect(), await h.connect()
        await c.send('{"m":"ping","t":1,"pad":"' + "x" * 70_000 + '"}')
        msg = await c.ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == 1009
        await still_serving(h, bystander)


async def test_flood_is_rate_limited_then_closed_with_1008(serve: Any) -> None:
    limits = Limits(rate_limit_per_s=5, rate_limit_burst=10, max_errors=8)
    async with serve(limits=limits) as h:
        c, bystander = await h.connect(), await h.connect()
        for i in range(40):
            await c.send({"m": "ping", "t": i})
        codes = []
        while True:
            msg = await c.ws.receive(timeout=5)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            frame = msg.json()
            if frame["m"] == "error":
                codes.append(frame["code"])
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == 1008
        assert codes[0] == "rate_limited"
        assert len(codes) == 9
        await still_serving(h, bystander)


async def test_repeated_bad_frames_close_with_1008(serve: Any) -> None:
    async with serve(limits=Limits(max_errors=3)) as h:
        c = await h.connect()
        for _ in range(5):
            await c.send("garbage")
        seen = 0
        while True:
            msg = await c.ws.receive(timeout=5)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            seen += 1
        assert seen == 4
        assert msg.data == 1008


def _close_code(sock: socket.socket) -> int:
    """Reads the server's frames until its close frame; returns the close code."""
    buf = b""
    while True:
        while len(buf) < 2:
            buf += sock.recv(65536)
        opcode, length = buf[0] & 0x0F, buf[1] & 0x7F
        start = 2 + {126: 2, 127: 8}.get(length, 0)
        while len(buf) < start:
            buf += sock.recv(65536)
        if length >= 126:
            length = int.from_bytes(buf[2:start], "big")
        while len(buf) < start + length:
            buf += sock.recv(65536)
        if opcode == 0x8:
            return int.from_bytes(buf[start : start + 2], "big")
        buf = buf[start + length :]


async def test_a_text_frame_that_is_not_utf8_closes_with_1007(serve: Any) -> None:
    async with serve() as h:
        bystander = await h.connect()
        sock = await asyncio.to_thread(raw_ws_connect, h.url)
        with sock:
            raw_ws_send_text(sock, b"\xff\xfe")
            assert await asyncio.to_thread(_close_code, sock) == 1007
        await still_serving(h, bystander)
