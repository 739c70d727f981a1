"""permessage-deflate: compressed frames for clients that offer it, plain ones for the rest."""

from __future__ import annotations

import random
from typing import Any

import pytest

from bench.gridworld_loadgen import WireCounter
from synkworld import Server
from synkworld.testing import world_truth
from tests.server.support import Harness, Ship, WsClient, make_world

pytestmark = pytest.mark.timeout(120)


def _counter(c: WsClient) -> WireCounter:
    conn = c.ws._response.connection
    assert conn is not None and conn.transport is not None
    return WireCounter.install(conn.transport)


async def _run(h: Harness, clients: list[WsClient], ticks: int) -> None:
    rng = random.Random(5)
    ships = h.world.objects_under("main:0:0")
    for c in clients:
        await c.send({"m": "view", "map": "main", "rect": [0, 0, 1000, 1000], "margin": 0})
        await c.sync()
    for _ in range(ticks):
        for s in rng.sample(ships, 3):
            s.x = rng.uniform(0, 999)
            s.y = rng.uniform(0, 999)
        h.step()
    for c in clients:
        await c.sync()
        session = h.server.sessions[c.hello["sid"]]
        assert c.ref.view() == world_truth(h.world, session.held)


@pytest.mark.parametrize("enabled", [True, False])
async def test_frames_are_compressed_only_when_both_sides_want_it(
    serve: Any, enabled: bool
) -> None:
    server = Server(make_world(), freeze_gc=False, autotick=False, compression=enabled)
    for i in range(300):
        server.world.create(Ship(x=(i * 37) % 100, y=(i * 91) % 100, captain=f"captain {i % 7}"))
    async with serve(server) as h:
        h.step()
        offering = await h.connect(compress=15)
        plain = await h.connect()
        wire_offering, wire_plain = _counter(offering), _counter(plain)
        # Both hold the same cells, so both are sent the same frames.
        await _run(h, [offering, plain], ticks=20)
        assert offering.ws.compress == (15 if enabled else 0)
        assert plain.ws.compress == 0
        assert [f for f in offering.frames if f["m"] == "tick"] == [
            f for f in plain.frames if f["m"] == "tick"
        ]
        # Uncompressed, a frame costs its JSON and a few bytes of framing; with
        # deflate the link carries a fraction of that.
        ratio = wire_offering.n / wire_plain.n
        if enabled:
            assert ratio < 0.6
        else:
            assert ratio == pytest.approx(1.0, abs=0.01)
