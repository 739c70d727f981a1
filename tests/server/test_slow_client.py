"""A client that stops reading is skipped, costs bounded memory, and is resynced exactly."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest

from synkworld import Limits, Server
from tests.reference_client import world_truth
from tests.server.conftest import Ship, WsClient, make_world

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
