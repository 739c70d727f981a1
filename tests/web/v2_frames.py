"""Recorded protocol v2 frames, with what a client must hold after each, for the JS tests.

`record_mixed` runs a small world through every kind of v2 entry (creations,
field changes of every value type, motion, moves across cells and maps,
channel keys, deletions, slot reuse, subscription changes with a move into a
key being added, a type registered after hello, a resync); `record_grid_world`
records the frames one client of the bench's default scenario receives (10k
objects, a 1,000 x 750 view). Each writes ``{"hello", "frames", "views"}``:
frames base64, and after each frame the reference applier's view
``{id: [type, version, state, key]}``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np

from synkworld import GridMap, Limits, Session, SynkObject, World, deliver_frames
from synkworld._wire_v2 import encode_hello_v2, type_table
from synkworld.testing import ReferenceClientV2, world_truth
from tests.test_invariants_v2 import frames_encoder


class FixShip(SynkObject, type="fix-ship"):
    x: float
    y: float
    hp: int = 10
    name: str = ""
    cargo: Any | None = None


class FixBuoy(SynkObject, type="fix-buoy", position=("px", "py")):
    px: float
    py: float
    lit: bool = False
    depth: float = 0.5


class FixNote(SynkObject, type="fix-note"):
    text: str = ""


class FixEntity(SynkObject, type="fix-entity"):
    x: float
    y: float
    kind: str = "a"
    color: int = 0
    hp: int = 100


class _Recorder:
    def __init__(self, world: World, session: Session) -> None:
        self.world = world
        self.session = session
        world.record_v2 = True
        table = type_table()
        self.hello = encode_hello_v2(session.sid, world.tick, 20, world.grid, table)
        session.types_known = len(table)
        self.client = ReferenceClientV2()
        self.client.apply(self.hello)
        self.frames: list[bytes] = []
        self.views: list[dict[str, Any]] = []
        self.reading = True

    def tick(self) -> None:
        changes = self.world.commit()
        deliver_frames(
            changes.tick,
            changes.batches,
            [self.session],
            self.world,
            now=float(changes.tick),
            lag_timeout_s=1e9,
            encoder=frames_encoder(self.world, changes, [self.session]),
        )
        if not self.reading:
            return
        while (frame := self.session.pop()) is not None:
            self.client.apply(frame)
            self.frames.append(frame)
            # Copied now: the applier keeps changing the same state dicts.
            self.views.append(json.loads(json.dumps(self.client.view())))
        s = self.session
        if not s.lagging and not s.resync_owed:
            assert self.client.view() == world_truth(self.world, s.held)

    def write(self, path: Path) -> None:
        b64 = base64.b64encode
        out = {
            "hello": b64(self.hello).decode(),
            "frames": [b64(f).decode() for f in self.frames],
            "views": self.views,
        }
        path.write_text(json.dumps(out))


def record_mixed(path: Path) -> None:
    """A short run through every entry kind, written to `path`."""
    world = World(
        [
            GridMap("main", cell_size=100, bounds=(0, 0, 1000, 1000)),
            GridMap(
                "sea",
                cell_size=50,
                origin=(-500, -500),
                bounds=(-500, -500, 0, 0),
                pos_fields=("px", "py"),
                precision=0,
            ),
        ],
        id_factory=iter(f"o{i}" for i in range(1, 10**6)).__next__,
    )
    s = Session("fix", world.grid, limits=Limits(send_queue_max_frames=2), wire_version=2)
    rec = _Recorder(world, s)
    s.sub(["main:0:0", "main:1:0", "main:2:0", "sea:-10:-10", "room"])
    rng = np.random.default_rng(7)
    ships = [
        world.create(
            FixShip(x=float(rng.uniform(0, 300)), y=float(rng.uniform(0, 99)), name=f"s{i}")
        )
        for i in range(40)
    ]
    buoys = [world.create(FixBuoy(px=-480.0 + i, py=-480.0), map="sea") for i in range(5)]
    note = world.create(FixNote(text="hello"), key="room")
    rec.tick()
    for t in range(30):
        for ship in ships:
            if ship.world is None:
                continue
            r = rng.random()
            if r < 0.5:
                ship.x = float(np.clip(ship.x + rng.normal(0, 3), 0, 999))
            elif r < 0.6:
                ship.x = float(rng.uniform(0, 400))  # maybe into a cell the client does not hold
            elif r < 0.7:
                ship.hp -= 1
                ship.cargo = [t, {"k": "v"}, None, 1.5] if t % 2 else "crate"
        for b in buoys:
            b.px += 1.0
            b.lit = not b.lit
        note.text = f"t{t}"
        if t == 5:
            s.sub(["main:3:0"], ["main:2:0"])
        if t == 8:
            world.delete(ships[0])
            world.delete(ships[1])
            world.create(FixShip(x=50.0, y=50.0, name="new"))
        if t == 12:

            class FixLate(SynkObject, type="fix-late"):
                x: float
                y: float
                mood: str = "late"

            world.create(FixLate(x=150.0, y=50.0))
        if t == 15:
            rec.reading = False  # the queue fills: a resync follows
        if t == 19:
            rec.reading = True
        rec.tick()
    rec.write(path)


def record_grid_world(path: Path, ticks: int = 140, entities: int = 10_000) -> None:
    """What one client of the default bench scenario receives, written to `path`."""
    world = World(GridMap("main", cell_size=250, bounds=(0, 0, 10_000, 10_000)))
    rng = np.random.default_rng(3)
    n = entities
    objs = [
        world.create(
            FixEntity(x=float(x), y=float(y), kind="abc"[i % 3], color=int(rng.integers(0, 2**24)))
        )
        for i, (x, y) in enumerate(rng.uniform(0, 10_000, (n, 2)))
    ]
    s = Session("grid", world.grid, wire_version=2)
    rec = _Recorder(world, s)
    slots = world.slots(objs)
    heading = rng.uniform(0, 2 * np.pi, n)
    step = 50.0 / 20
    vx, vy = np.cos(heading) * step, np.sin(heading) * step
    view = np.array([4500.0, 4500.0])
    pan = np.array([5.0, 2.0])
    for t in range(ticks):
        xs, ys = world.positions(slots)
        xs, ys = xs + vx, ys + vy
        vx = np.where((xs < 0) | (xs >= 10_000), -vx, vx)
        vy = np.where((ys < 0) | (ys >= 10_000), -vy, vy)
        world.set_positions(slots, np.clip(xs, 0, 9_999.9), np.clip(ys, 0, 9_999.9))
        for i in rng.choice(n, n // 100, replace=False).tolist():
            objs[i].hp -= 1
        view += pan
        if t % 20 == 0:
            s.view("main", (view[0], view[1], view[0] + 1000, view[1] + 750), 1)
        rec.tick()
    rec.write(path)
