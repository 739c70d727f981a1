"""The tick loop with sessions of both protocol versions: what it encodes, and for whom.

`tests/test_invariants_v2.py` drives the frame builders directly; these go
through `TickLoop`, which decides per tick whether v1 is encoded at all, which
keys' v2 batches are, and keeps the count of v2 holders per key.
"""

from __future__ import annotations

import numpy as np

from synkworld import GridMap, Session, SynkObject, TickLoop, World
from synkworld._wire_v2 import encode_hello_v2, type_table
from synkworld.testing import ReferenceClient, ReferenceClientV2, world_truth


class Rover(SynkObject, type="tick2-rover"):
    x: float
    y: float
    fuel: int = 100


def _loop() -> tuple[World, TickLoop, list[Rover]]:
    world = World(GridMap(cell_size=100, bounds=(0, 0, 1000, 1000)))
    rng = np.random.default_rng(5)
    rovers = [world.create(Rover(x=float(x), y=float(y))) for x, y in rng.uniform(0, 999, (300, 2))]
    return world, TickLoop(world), rovers


def _client(s: Session, world: World) -> ReferenceClient | ReferenceClientV2:
    if s.wire_version == 1:
        return ReferenceClient(world.grid.describe())
    c = ReferenceClientV2()
    c.apply(encode_hello_v2(s.sid, world.tick, 20, world.grid, type_table()))
    s.types_known = len(type_table())
    return c


def test_sessions_of_both_versions_through_the_tick_loop() -> None:
    world, loop, rovers = _loop()
    sessions = [Session(f"s{i}", world.grid, wire_version=1 + i % 2) for i in range(6)]
    clients = [_client(s, world) for s in sessions]
    for i, s in enumerate(sessions):
        s.view("main", (i * 120.0, 100.0, i * 120.0 + 300, 400.0), 1)
        loop.attach(s)
    rng = np.random.default_rng(6)
    for t in range(40):
        for r in rovers:
            r.x = float(np.clip(r.x + rng.normal(0, 8), 0, 999))
        rovers[t].fuel -= 1
        if t == 20:
            sessions[1].view("main", (600.0, 600.0, 900.0, 900.0), 1)
        loop.step()
        for s, c in zip(sessions, clients, strict=True):
            while (f := s.pop()) is not None:
                c.apply(f)
            assert c.view() == world_truth(world, s.held)
        # The v2 holders the loop counts are the keys its v2 sessions hold.
        v2_keys = [k for s in sessions if s.wire_version == 2 for k in s.held]
        assert loop._v2_held == {k: v2_keys.count(k) for k in set(v2_keys)}
    assert world.encode_v1


def test_a_loop_with_only_v2_sessions_encodes_no_v1_and_only_the_held_keys() -> None:
    world, loop, rovers = _loop()
    v1 = Session("one", world.grid)
    v2 = Session("two", world.grid, wire_version=2)
    c2 = _client(v2, world)
    for s in (v1, v2):
        s.view("main", (0.0, 0.0, 250.0, 250.0), 0)
        loop.attach(s)
    loop.step()
    loop.detach(v1)
    for r in rovers:
        r.y = min(999.0, r.y + 1.0)
    changes = loop.step()
    assert not world.encode_v1 and not changes.batches.data
    assert changes.batches_v2 is not None
    touched = changes.batches_v2.touched
    assert len(touched) > 60  # motion all over the map, encoded for the 9 held cells only
    assert set(changes.batches_v2.data) == v2.held & touched
    while (f := v2.pop()) is not None:
        c2.apply(f)
    assert c2.view() == world_truth(world, v2.held)
    loop.detach(v2)
    assert loop._v2_held == {}
    loop.attach(Session("three", world.grid))
    loop.step()
    assert world.encode_v1
