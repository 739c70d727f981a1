"""The central invariant, property-tested: every client holds exactly what the server has
under the keys it holds, with the same versions and states, after every tick, whatever
the order of creates, changes, moves, deletes and subscription changes."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from synkworld import (
    Grid,
    GridMap,
    Limits,
    Session,
    SynkObject,
    TooManyKeysError,
    World,
    deliver_frames,
)
from synkworld._frames import FrameEncoder
from synkworld._world import TickChanges
from synkworld.testing import ReferenceClient, world_truth

CELL = 10.0
SIZE = 60.0  # 6 x 6 cells, with a hole at (2, 2)


class Walker(SynkObject, type="inv-walker"):
    x: float
    y: float
    hp: int = 10
    tag: str = ""


class Note(SynkObject, type="inv-note"):
    text: str


coord = st.floats(min_value=-5.0, max_value=SIZE + 5.0, allow_nan=False, width=32)
small_step = st.floats(min_value=-3.0, max_value=3.0, allow_nan=False, width=32)
CHANNELS = ["room:a", "room:b"]


class WorldMachine(RuleBasedStateMachine):
    """Drives a world, its tick and several sessions with reference clients."""

    def __init__(self) -> None:
        super().__init__()
        gmap = GridMap("main", cell_size=CELL, bounds=(0, 0, SIZE, SIZE), holes=[(2, 2)])
        self.world = World(Grid(gmap))
        self.gmap = gmap
        self.sessions: list[Session] = []
        self.clients: list[ReferenceClient] = []
        self.reading: list[bool] = []
        self.ticks = 0

    @initialize(
        n=st.integers(min_value=2, max_value=4),
        points=st.lists(st.tuples(coord, coord), min_size=5, max_size=30),
        views=st.lists(st.tuples(coord, coord), min_size=4, max_size=4),
    )
    def populate(
        self, n: int, points: list[tuple[float, float]], views: list[tuple[float, float]]
    ) -> None:
        for x, y in points:
            self.world.create(Walker(x=x, y=y))
        maps = self.world.grid.describe()
        for i in range(n):
            # Small queues, so that a client that stops reading is resynced.
            s = Session(
                f"s{i}", self.world.grid, limits=Limits(max_keys=40, send_queue_max_frames=3)
            )
            vx, vy = views[i]
            s.view("main", (vx, vy, vx + 20, vy + 15), 1)
            self.sessions.append(s)
            self.clients.append(ReferenceClient(maps))
            self.reading.append(True)

    # -- objects ------------------------------------------------------------------------

    def _walkers(self) -> list[Walker]:
        return [o for o in self.world if isinstance(o, Walker)]

    @rule(x=coord, y=coord, hp=st.integers(0, 5))
    def create(self, x: float, y: float, hp: int) -> None:
        self.world.create(Walker(x=x, y=y, hp=hp))

    @rule(room=st.sampled_from(CHANNELS), text=st.text(max_size=3))
    def create_note(self, room: str, text: str) -> None:
        self.world.create(Note(text=text), key=room)

    @precondition(lambda self: len(self.world) > 0)
    @rule(data=st.data(), hp=st.integers(0, 5), tag=st.sampled_from(["", "a", "b"]))
    def change(self, data: st.DataObject, hp: int, tag: str) -> None:
        obj = data.draw(st.sampled_from(list(self.world)))
        if isinstance(obj, Walker):
            obj.hp = hp
            obj.tag = tag
        else:
            obj.text = tag

    @precondition(lambda self: len(self.world) > 0)
    @rule(data=st.data(), dx=small_step, dy=small_step)
    def nudge(self, data: st.DataObject, dx: float, dy: float) -> None:
        walkers = self._walkers()
        if walkers:
            w = data.draw(st.sampled_from(walkers))
            self.world.move(w, w.x + dx, w.y + dy)

    @precondition(lambda self: len(self.world) > 0)
    @rule(data=st.data(), x=coord, y=coord)
    def jump(self, data: st.DataObject, x: float, y: float) -> None:
        walkers = self._walkers()
        if walkers:
            w = data.draw(st.sampled_from(walkers))
            w.x = x
            w.y = y

    @precondition(lambda self: len(self.world) > 0)
    @rule(data=st.data(), seed=st.integers(0, 2**31), scale=st.sampled_from([0.5, 4.0, 20.0]))
    def bulk_move(self, data: st.DataObject, seed: int, scale: float) -> None:
        walkers = self._walkers()
        if not walkers:
            return
        rng = np.random.default_rng(seed)
        chosen = [w for w in walkers if rng.random() < 0.7]
        slots = self.world.slots(chosen)
        xs, ys = self.world.positions(slots)
        xs = np.clip(xs + rng.normal(0, scale, len(xs)), -5, SIZE + 5)
        ys = np.clip(ys + rng.normal(0, scale, len(ys)), -5, SIZE + 5)
        self.world.set_positions(slots, xs, ys)

    @precondition(lambda self: len(self.world) > 0)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        obj = data.draw(st.sampled_from(list(self.world)))
        self.world.delete(obj)

    @precondition(lambda self: len(self.world) > 0)
    @rule(data=st.data(), x=coord, y=coord)
    def move_then_delete(self, data: st.DataObject, x: float, y: float) -> None:
        walkers = self._walkers()
        if walkers:
            w = data.draw(st.sampled_from(walkers))
            self.world.move(w, x, y)
            self.world.delete(w)

    @rule(x=coord, y=coord)
    def create_then_delete(self, x: float, y: float) -> None:
        w = self.world.create(Walker(x=x, y=y))
        w.hp = 3
        self.world.delete(w)

    # -- subscriptions ----------------------------------------------------------------------

    @rule(
        data=st.data(),
        x=coord,
        y=coord,
        w=st.floats(0, 30, allow_nan=False),
        h=st.floats(0, 30, allow_nan=False),
        margin=st.integers(0, 2),
    )
    def view(
        self, data: st.DataObject, x: float, y: float, w: float, h: float, margin: int
    ) -> None:
        s = data.draw(st.sampled_from(self.sessions))
        before = set(s.wanted)
        try:
            s.view("main", (x, y, x + w, y + h), margin)
        except TooManyKeysError:
            assert s.wanted == before

    @rule(data=st.data())
    def sub(self, data: st.DataObject) -> None:
        s = data.draw(st.sampled_from(self.sessions))
        keys = [*CHANNELS, *(f"main:{cx}:{cy}" for cx in range(-1, 7) for cy in range(-1, 7))]
        add = data.draw(st.lists(st.sampled_from(keys), max_size=4, unique=True))
        rem = data.draw(
            st.lists(st.sampled_from(sorted(s.wanted) or keys), max_size=3, unique=True)
        )
        rem = [k for k in rem if k not in add]
        before = set(s.wanted)
        try:
            s.sub(add, rem)
        except TooManyKeysError:
            assert s.wanted == before

    @rule(data=st.data(), reading=st.booleans())
    def set_reading(self, data: st.DataObject, reading: bool) -> None:
        i = data.draw(st.integers(0, len(self.sessions) - 1))
        self.reading[i] = reading

    # -- the tick -------------------------------------------------------------------------------

    @rule()
    def tick(self) -> None:
        changes = self.world.commit()
        deliver_frames(
            changes.tick,
            changes.batches,
            self.sessions,
            self.world,
            now=self.ticks,
            lag_timeout_s=1e9,
            encoder=self.frame_encoder(changes),
        )
        self.ticks += 1
        for s, c, reading in zip(self.sessions, self.clients, self.reading, strict=True):
            if reading:
                while (frame := s.pop()) is not None:
                    c.apply(frame)
        self.check_clients()

    def frame_encoder(self, changes: TickChanges) -> FrameEncoder | None:
        """What builds the frames (None: `deliver_frames`' own, protocol v1's)."""
        return None

    def check_clients(self) -> None:
        # Checked right after a tick: between ticks the world holds uncommitted changes.
        for s, c, reading in zip(self.sessions, self.clients, self.reading, strict=True):
            if not reading or s.lagging or s.queued_frames:
                continue
            # As of the last frame, the client holds the server's held set, and exactly its objects.
            assert c.held == s.held
            assert c.view() == world_truth(self.world, s.held)


WorldMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestWorldInvariant = WorldMachine.TestCase
