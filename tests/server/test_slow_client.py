"""A client that stops reading is skipped, costs bounded memory, and is resynced exactly."""

from __future__ import annotations

import asyncio
import random
import socket
import time

import aiohttp
import pytest

from synkworld import Limits, Server
from synkworld.testing import world_truth
from tests.server.support import Ship, WsClient, make_world, raw_ws_connect, raw_ws_send_text

pytestmark = pytest.mark.timeout(120)

LIMITS = Limits(send_queue_max_frames=8, send_queue_max_bytes=512 * 1024, lag_timeout_s=60)


async def test_slow_client_is_skipped_then_resynced() -> None:
    world = make_world()
    rng = random.Random(5)
    ships = [world.create(Ship(x=rng.uniform(0, 999), y=rng.uniform(0, 999))) for _ in range(3000)]
    server = Server(world, tick_rate_hz=50, limits=LIMITS, freeze_gc=False)
    moving = True

    @server.simulation
    def wander(dt: float) -> None:
        if moving:
            for s in ships:
                world.move(
                    s,
                    min(999, max(0, s.x + rng.uniform(-5, 5))),
                    min(999, max(0, s.y + rng.uniform(-5, 5))),
                )

    view = {"m": "view", "rect": [0, 0, 999, 999], "margin": 0}
    async with aiohttp.ClientSession() as http, server.running() as url:
        fast = WsClient(await http.ws_connect(url + "/ws"))
        slow = WsClient(await http.ws_connect(url + "/ws", max_msg_size=0))
        fast.hello, slow.hello = await fast.recv(), await slow.recv()
        await fast.send(view)
        await slow.send(view)
        await slow.sync()

        async def read_fast() -> None:
            while True:
                await fast.recv()

        reader = asyncio.create_task(read_fast())
        slow_session = server.sessions[slow.hello["sid"]]
        tick0 = world.tick
        peak_queue = 0
        # Not reading until the kernel's socket buffers (several MB on loopback)
        # and then the session's queue are full: a few seconds, bounded at 30 s.
        waited = 0
        while waited < 600 and (not slow_session.lagging or waited < 80):
            await asyncio.sleep(0.05)
            waited += 1
            peak_queue = max(peak_queue, slow_session.queued_bytes)
        ticks = world.tick - tick0
        assert slow_session.lagging, "the slow client should have been skipped"
        assert peak_queue <= LIMITS.send_queue_max_bytes
        assert slow_session.frames_dropped > 10
        # Neither the loop nor the fast client waited for the slow one: the loop
        # kept ticking while the slow socket was full, and the fast client got
        # (nearly) every tick's frame. Not a timing test: the counts are relative.
        assert ticks >= 40
        fast_ticks = [f["n"] for f in fast.frames if f["m"] == "tick"]
        assert len(fast_ticks) >= 0.9 * ticks

        moving = False
        await asyncio.sleep(0.1)
        reader.cancel()  # waiting in receive(): no frame is lost by cancelling there
        # The slow client reads again: first the frames that were queued, then one resync.
        await slow.recv_until(lambda f: f["m"] == "resync", timeout=20)
        await slow.sync()
        await fast.sync()
        for client in (fast, slow):
            held = server.sessions[client.hello["sid"]].held
            assert client.ref.view() == world_truth(world, held)
        assert slow.ref.resyncs == 1
        assert len(slow.ref.objs) == 3000


def _never_reading_server(lag_timeout_s: float) -> tuple[Server, list[Ship]]:
    world = make_world()
    rng = random.Random(6)
    ships = [world.create(Ship(x=rng.uniform(0, 999), y=rng.uniform(0, 999))) for _ in range(2000)]
    limits = Limits(
        send_queue_max_frames=4,
        send_queue_max_bytes=256 * 1024,
        socket_buffer_max_bytes=32 * 1024,
        lag_timeout_s=lag_timeout_s,
        close_timeout_s=1.0,
    )
    server = Server(world, tick_rate_hz=50, limits=limits, freeze_gc=False)

    @server.simulation
    def wander(dt: float) -> None:
        for s in ships:
            world.move(s, (s.x + rng.uniform(0, 3)) % 999, (s.y + rng.uniform(0, 3)) % 999)

    return server, ships


def _drain_until_closed(sock: socket.socket, timeout_s: float) -> bool:
    """Reads what the server sent until the connection ends; True if it ended in time."""
    sock.settimeout(0.5)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if not sock.recv(1 << 20):
                return True
        except TimeoutError:
            continue
        except ConnectionError:
            return True
    return False


async def test_a_never_reading_client_is_gone_within_the_lag_timeout() -> None:
    """Regression: the 1013 close of a lagging client awaited a drain that never ended.

    The connection stayed counted, lagging, with its fd and megabytes of send
    buffer, for as long as the peer stayed.
    """
    lag_timeout_s = 1.5
    server, _ = _never_reading_server(lag_timeout_s)
    async with aiohttp.ClientSession() as http, server.running() as url:
        sock = await asyncio.to_thread(raw_ws_connect, url, rcvbuf=4096)
        raw_ws_send_text(sock, b'{"m":"view","rect":[0,0,999,999],"margin":0}')
        for _ in range(200):
            if server.sessions:
                break
            await asyncio.sleep(0.02)
        ((sid, session),) = server.sessions.items()
        transport = server._connections[sid]._transport
        assert transport is not None
        for _ in range(600):
            if session.lagging:
                break
            await asyncio.sleep(0.05)
        assert session.lagging
        lagging_at = time.monotonic()
        while sid in server.sessions and time.monotonic() - lagging_at < lag_timeout_s + 10:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        gone_after = time.monotonic() - lagging_at
        print(f"\nnever-reading client gone {gone_after:.2f}s after it went lagging")
        assert sid not in server.sessions, "the never-reading client is still connected"
        assert gone_after < lag_timeout_s + 3.0
        async with http.get(url + "/healthz") as r:
            assert (await r.json())["clients"] == 0
        assert transport.is_closing()
        assert transport.get_write_buffer_size() == 0
        assert transport.get_extra_info("socket").fileno() == -1
        assert server.metrics.closed_slow_total == 1
        assert await asyncio.to_thread(_drain_until_closed, sock, 10.0)
        sock.close()


async def _shutdown_seconds(never_reading: int) -> float:
    server, _ = _never_reading_server(lag_timeout_s=60)
    socks: list[socket.socket] = []
    async with aiohttp.ClientSession() as http:
        cm = server.running()
        url = await cm.__aenter__()
        try:
            fine = WsClient(await http.ws_connect(url + "/ws"))
            fine.hello = await fine.recv()
            for _ in range(never_reading):
                sock = await asyncio.to_thread(raw_ws_connect, url, rcvbuf=4096)
                raw_ws_send_text(sock, b'{"m":"view","rect":[0,0,999,999],"margin":0}')
                socks.append(sock)
            # Long enough for the never-reading sockets' buffers to fill.
            await asyncio.sleep(1.5)
        finally:
            started = time.monotonic()
            await cm.__aexit__(None, None, None)
            took = time.monotonic() - started
        for sock in socks:
            sock.close()
    return took


async def test_shutdown_with_never_reading_clients_takes_no_longer_than_without() -> None:
    """Regression: each never-reading client added some 10 s to shutdown."""
    without = await _shutdown_seconds(0)
    with_them = await _shutdown_seconds(3)
    print(f"\nshutdown: {without:.2f}s without, {with_them:.2f}s with 3 never-reading clients")
    # Not reading, they get no closing handshake: their connections are dropped.
    assert with_them <= without + 0.5, (without, with_them)
