"""The application the browser test serves, in its own process.

    python -m synkworld serve tests.browser.app:make_server --port P

A seeded world on one map: most ships wobble inside their own cell, a few roam
across the map, and signs sit in the channel "lobby". Every change is a function of
the tick number, so a restarted process rebuilds the same world and replays the same
motion. It serves the test page at / (the library is at /synkworld/client.js), and answers the
call "truth" with what the calling session should hold: the objects under its held
keys as of the last tick, which is what its cache must equal once the reply (queued
after that tick's frame) has arrived.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from synkworld import Call, GridMap, Server, SynkObject, World

ROOT = Path(__file__).resolve().parents[2]
PAGE = Path(__file__).resolve().parent / "page"
CELL = 100.0
BOUNDS = (0.0, 0.0, 2000.0, 2000.0)
SEED = 4242
STEADY = 400  # ships that stay in their cell
ROAMERS = 20  # ships that cross the map


class Ship(SynkObject, type="brw-ship"):
    x: float
    y: float
    hp: int = 100
    roams: bool = False


class Sign(SynkObject, type="brw-sign"):
    text: str


def make_map() -> GridMap:
    return GridMap("main", cell_size=CELL, bounds=BOUNDS)


def make_server() -> Server:
    rng = random.Random(SEED)
    n = iter(range(1, 10**9))
    world = World(make_map(), id_factory=lambda: f"b{next(n)}")
    # id -> (home x, home y, phase, amplitude)
    paths: dict[str, tuple[float, float, float, float]] = {}
    for _ in range(STEADY):
        # At most 30 units from a home at least 35 units inside its cell: never leaves it.
        cx, cy = rng.randrange(20), rng.randrange(20)
        hx = cx * CELL + rng.uniform(35, CELL - 35)
        hy = cy * CELL + rng.uniform(35, CELL - 35)
        ship = world.create(Ship(x=hx, y=hy))
        paths[ship.id] = (hx, hy, rng.uniform(0, math.tau), rng.uniform(0, 30))
    for _ in range(ROAMERS):
        hx, hy = rng.uniform(400, 1600), rng.uniform(400, 1600)
        ship = world.create(Ship(x=hx, y=hy, roams=True))
        paths[ship.id] = (hx, hy, rng.uniform(0, math.tau), rng.uniform(150, 350))
    for i in range(3):
        world.create(Sign(text=f"sign {i}"), key="lobby")
    ships = [s for s in world if isinstance(s, Ship)]

    server = Server(
        world,
        tick_rate_hz=20,
        web_root=PAGE,
        freeze_gc=False,
    )

    @server.simulation
    def wobble(dt: float) -> None:
        t = world.tick + 1  # the tick being made
        for i, ship in enumerate(ships):
            if (i + t) % 3:
                continue  # a third of the ships move in each tick
            hx, hy, phase, amp = paths[ship.id]
            a = phase + t * (0.02 if ship.roams else 0.1)
            world.move(ship, hx + amp * math.cos(a), hy + amp * math.sin(a))
            if (i + t) % 17 == 0:
                ship.hp = (ship.hp + 7) % 101

    @server.handler("truth")
    def truth(call: Call) -> dict[str, Any]:
        held = sorted(call.session.held)
        objects = {
            o.id: [o.synk_type, o.version, o.wire_state(), key]
            for key in held
            for o in call.world.objects_under(key)
        }
        return {"tick": call.world.tick, "held": held, "objects": objects}

    return server
