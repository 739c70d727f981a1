"""A small world for the tests of several real processes: walkers bouncing in an 8 x 8 grid.

``synkworld serve tests.cluster.walkers_app:make --redis URL --world NAME``
with ``SYNKWORLD_TEST_DB`` naming the SQLite file that every process shares
(the test seeds it with `seed_documents`).
"""

from __future__ import annotations

import os

from synkworld import Call, GridMap, ServeOptions, Server, SynkObject, World
from synkworld.store import SQLiteStore

SIZE = 800.0
CELL = 100.0


class Walker(SynkObject, type="walker"):
    x: float
    y: float
    vx: float = 0.0
    vy: float = 0.0


def seed_documents(count: int) -> list[dict[str, object]]:
    """Walkers spread over the map, each with its own steady velocity."""
    docs: list[dict[str, object]] = []
    for i in range(count):
        x = (i * 37.3) % SIZE
        y = (i * 91.7) % SIZE
        docs.append(
            {
                "_id": f"w{i}",
                "t": "walker",
                "key": f"main:{int(x // CELL)}:{int(y // CELL)}",
                "v": 1,
                "x": x,
                "y": y,
                "vx": float((i % 7) - 3) * 20.0 + 5.0,
                "vy": float((i % 5) - 2) * 20.0 + 5.0,
            }
        )
    return docs


def make(_options: ServeOptions) -> Server:
    world = World(GridMap("main", cell_size=CELL, bounds=(0, 0, SIZE, SIZE), precision=1))
    server = Server(world)
    server.persist(SQLiteStore(os.environ["SYNKWORLD_TEST_DB"]), write_interval_s=0.2)

    @server.simulation
    def walk(dt: float) -> None:
        for obj in list(world):
            if not isinstance(obj, Walker):
                continue
            x, y = obj.x + obj.vx * dt, obj.y + obj.vy * dt
            if not 0 <= x < SIZE:
                obj.vx = -obj.vx
                x = min(SIZE - 0.1, max(0.0, x))
            if not 0 <= y < SIZE:
                obj.vy = -obj.vy
                y = min(SIZE - 0.1, max(0.0, y))
            world.move(obj, x, y)

    @server.handler("count")
    def count(call: Call) -> int:
        """How many walkers this process's world holds."""
        return len(world)

    @server.handler("debug")
    def debug(call: Call, ids: list = []) -> dict[str, object]:  # noqa: B006
        state = _debug_state(server, call.session.sid)
        port = server.cluster.port if server.cluster else None
        if port is not None:
            state["where"] = {
                oid: {
                    "world": (o := world.get(oid)) is not None and (o.key, world.published_key(o)),
                    "outbox": oid in port._outbox
                    and (port._outbox[oid].key, port._outbox[oid].resends),
                    "limbo": any(h.id == oid for hs in port._limbo.values() for h in hs),
                    "undecided": oid in world._undecided,
                    "departed": oid in port.departed,
                }
                for oid in ids
            }
        return state

    return server


def _debug_state(server: Server, sid: str) -> dict[str, object]:
    port = server.cluster.port if server.cluster else None
    session = server.sessions.get(sid)
    return {
        "tick": server.world.tick,
        "owed": session.resync_owed if session else None,
        "lagging": session.lagging if session else None,
        "held": len(session.held) if session else None,
        "wanted": len(session.wanted) if session else None,
        "late": sorted(port._late) if port else None,
        "holders": len(port.holders) if port else None,
        "owned": len(port.owned) if port else None,
    }
