"""Tick loops over one bus: one owns the world, one only fans its frames out.

After every tick, twin sessions (the same script, one on each loop) received
byte-identical frames, and every session's reference cache equals the truth.
With snapshots that arrive ticks late, a key joins `sub.add` in the frame
that carries its snapshot, and caches stay exact.
"""

from __future__ import annotations

import asyncio
import contextlib

import hypothesis.strategies as st
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from synkworld import (
    GridMap,
    LocalBus,
    Session,
    SynkObject,
    TickLoop,
    TooManyKeysError,
    World,
    WouldBlockError,
)
from synkworld._bus import owns_nothing
from synkworld.testing import ReferenceClient, world_truth

SIZE = 60.0
CELL = 10.0


class Rover(SynkObject, type="bus-rover"):
    x: float
    y: float
    hp: int = 0


class Flag(SynkObject, type="bus-flag"):
    text: str


coord = st.floats(min_value=-5.0, max_value=SIZE + 5.0, allow_nan=False, width=32)
CHANNELS = ["room:a", "room:b"]
KEYS = [*CHANNELS, *(f"main:{cx}:{cy}" for cx in range(-1, 7) for cy in range(-1, 7))]


def new_grid() -> GridMap:
    return GridMap("main", cell_size=CELL, bounds=(0, 0, SIZE, SIZE), holes=[(2, 2)])


class TwoLoops(RuleBasedStateMachine):
    """An owning loop and a fan-out loop on one bus, twin sessions on each."""

    delay = 0

    def __init__(self) -> None:
        super().__init__()
        bus = LocalBus(snapshot_delay_ticks=self.delay)
        self.world = World(new_grid())
        self.gateway_world = World(new_grid())
        self.owner = TickLoop(self.world, bus=bus)
        self.gateway = TickLoop(
            self.gateway_world, bus=bus.attach(self.gateway_world, owns=owns_nothing)
        )
        self.twins: list[tuple[Session, Session]] = []
        self.clients: dict[str, ReferenceClient] = {}
        self.frames: dict[str, list[bytes]] = {}

    @initialize(
        n=st.integers(min_value=1, max_value=3),
        points=st.lists(st.tuples(coord, coord), min_size=3, max_size=25),
    )
    def populate(self, n: int, points: list[tuple[float, float]]) -> None:
        for x, y in points:
            self.world.create(Rover(x=x, y=y))
        maps = self.world.grid.describe()
        for i in range(n):
            pair = (Session(f"a{i}", self.world.grid), Session(f"b{i}", self.gateway_world.grid))
            self.owner.attach(pair[0])
            self.gateway.attach(pair[1])
            self.twins.append(pair)
            for s in pair:
                self.clients[s.sid] = ReferenceClient(maps)
                self.frames[s.sid] = []

    # -- the owner's world ------------------------------------------------------------

    def _rovers(self) -> list[Rover]:
        return [o for o in self.world if isinstance(o, Rover)]

    @rule(x=coord, y=coord)
    def create(self, x: float, y: float) -> None:
        self.world.create(Rover(x=x, y=y))

    @rule(room=st.sampled_from(CHANNELS), text=st.text(max_size=3))
    def create_flag(self, room: str, text: str) -> None:
        self.world.create(Flag(text=text), key=room)

    @precondition(lambda self: len(self.world) > 0)
    @rule(data=st.data(), hp=st.integers(0, 5))
    def change(self, data: st.DataObject, hp: int) -> None:
        obj = data.draw(st.sampled_from(list(self.world)))
        if isinstance(obj, Rover):
            obj.hp = hp
        else:
            obj.text = str(hp)  # type: ignore[attr-defined]

    @precondition(lambda self: len(self._rovers()) > 0)
    @rule(seed=st.integers(0, 2**31), scale=st.sampled_from([0.5, 4.0, 20.0]))
    def move(self, seed: int, scale: float) -> None:
        rovers = self._rovers()
        rng = np.random.default_rng(seed)
        slots = self.world.slots(rovers)
        xs, ys = self.world.positions(slots)
        self.world.set_positions(
            slots,
            np.clip(xs + rng.normal(0, scale, len(xs)), -5, SIZE + 5),
            np.clip(ys + rng.normal(0, scale, len(ys)), -5, SIZE + 5),
        )

    @precondition(lambda self: len(self.world) > 0)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        self.world.delete(data.draw(st.sampled_from(list(self.world))))

    # -- the twins' subscriptions ------------------------------------------------------------

    @rule(
        data=st.data(),
        x=coord,
        y=coord,
        w=st.floats(0, 30, allow_nan=False),
        margin=st.integers(0, 2),
    )
    def view(self, data: st.DataObject, x: float, y: float, w: float, margin: int) -> None:
        for s in data.draw(st.sampled_from(self.twins)):
            with contextlib.suppress(TooManyKeysError):
                s.view("main", (x, y, x + w, y + w), margin)

    @rule(data=st.data())
    def sub(self, data: st.DataObject) -> None:
        pair = data.draw(st.sampled_from(self.twins))
        add = data.draw(st.lists(st.sampled_from(KEYS), max_size=4, unique=True))
        rem = data.draw(
            st.lists(st.sampled_from(sorted(pair[0].wanted) or KEYS), max_size=3, unique=True)
        )
        for s in pair:
            s.sub(add, [k for k in rem if k not in add])

    # -- the tick ---------------------------------------------------------------------------

    @rule()
    def tick(self) -> None:
        with pytest.raises(WouldBlockError):  # the owner has not published this tick yet
            self.gateway.port.delivery_nowait(self.world.tick + 1)
        self.owner.step()
        self.gateway.step()
        for pair in self.twins:
            for s in pair:
                frames = self.frames[s.sid]
                while (f := s.pop()) is not None:
                    frames.append(f)
                    self._apply(s, f)
        self.check()

    def _apply(self, session: Session, frame: bytes) -> None:
        msg = orjson.loads(frame)
        if msg["m"] == "tick":
            snapped = {snap["k"] for snap in msg.get("snap", ())}
            assert set(msg.get("sub", {}).get("add", ())) == snapped
        self.clients[session.sid].apply(msg)

    def check(self) -> None:
        for a, b in self.twins:
            if not self.delay:
                assert self.frames[a.sid] == self.frames[b.sid]
            for s in (a, b):
                client = self.clients[s.sid]
                assert client.held == s.held
                assert client.view() == world_truth(self.world, s.held)


settings_ = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TwoLoops.TestCase.settings = settings_
TestTwoLoopsOneBus = TwoLoops.TestCase


class TwoLoopsLateSnapshots(TwoLoops):
    """The fan-out loop gets its snapshots two ticks after it asks."""

    delay = 2


TwoLoopsLateSnapshots.TestCase.settings = settings_
TestLateSnapshots = TwoLoopsLateSnapshots.TestCase


def test_the_local_bus_passes_the_committed_batches_by_reference() -> None:
    world = World(new_grid())
    world.create(Rover(x=1, y=1))
    loop = TickLoop(world)
    seen = []
    original = loop.frame_encoder
    loop.frame_encoder = lambda delivery: (seen.append(delivery), original(delivery))[1]  # type: ignore[method-assign]
    changes = loop.step()
    assert seen[0].batches is changes.batches.data
    assert seen[0].snapshots is world


async def test_a_fan_out_loop_waits_for_the_owner_in_step_async() -> None:
    bus = LocalBus()
    world, gateway_world = World(new_grid()), World(new_grid())
    owner = TickLoop(world, bus=bus)
    gateway = TickLoop(gateway_world, bus=bus.attach(gateway_world, owns=owns_nothing))
    world.create(Rover(x=1, y=1))
    session = Session("g", gateway_world.grid)
    session.sub(["main:0:0"])
    gateway.attach(session)
    waiting = asyncio.ensure_future(gateway.step_async())
    await asyncio.sleep(0)
    assert not waiting.done()
    await owner.step_async()
    await asyncio.wait_for(waiting, 1)
    frame = orjson.loads(session.pop() or b"")
    assert frame["sub"] == {"add": ["main:0:0"]}
    assert [o["t"] for o in frame["snap"][0]["objs"]] == ["bus-rover"]


def test_a_tick_is_kept_only_until_every_loop_has_built_its_frames() -> None:
    """Regression: the bus kept 64 ticks of batches alive (some 30 MB at the defaults)."""
    bus = LocalBus()
    world, gateway_world = World(new_grid()), World(new_grid())
    owner = TickLoop(world, bus=bus)
    gateway = TickLoop(gateway_world, bus=bus.attach(gateway_world, owns=owns_nothing))
    world.create(Rover(x=1, y=1))
    for _ in range(5):
        owner.step()
        assert len(bus._published) == 1  # the gateway has not built this tick yet
        gateway.step()
        assert not bus._published
