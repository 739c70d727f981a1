"""The central invariant over both protocol versions: sessions of v1 and v2 on one world,
each checked after every tick against the truth, and against each other where they hold
the same keys (`tests/test_invariants.py` drives the same rules with v1 only)."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import initialize

from synkworld import Limits, Session
from synkworld._bus import _SnapshotsV2
from synkworld._frames import FrameEncoder, MixedFrames, SharedFrames, SharedFramesV2
from synkworld._mirror import Mirror
from synkworld._wire_v2 import encode_hello_v2, type_table
from synkworld._world import TickChanges, World
from synkworld.testing import ReferenceClient, ReferenceClientV2
from tests.test_invariants import WorldMachine, coord


def frames_encoder(world: World, changes: TickChanges, sessions: list[Session]) -> MixedFrames:
    """What the tick loop builds a tick's frames with when sessions of both versions hold keys."""
    v2 = changes.batches_v2
    assert v2 is not None
    v2.prepare(set().union(*(s.held for s in sessions if s.wire_version == 2)))
    return MixedFrames(
        SharedFrames(changes.batches.data, world),
        SharedFramesV2(v2.data, _SnapshotsV2(world), world.key_codes),
    )


class MixedWorldMachine(WorldMachine):
    """`WorldMachine` with every other session speaking protocol v2."""

    @initialize(
        n=st.integers(min_value=2, max_value=4),
        points=st.lists(st.tuples(coord, coord), min_size=5, max_size=30),
        views=st.lists(st.tuples(coord, coord), min_size=4, max_size=4),
        first_v2=st.booleans(),
    )
    def populate(
        self,
        n: int,
        points: list[tuple[float, float]],
        views: list[tuple[float, float]],
        first_v2: bool,
    ) -> None:
        from tests.test_invariants import Walker

        self.world.record_v2 = True
        for x, y in points:
            self.world.create(Walker(x=x, y=y))
        maps = self.world.grid.describe()
        for i in range(n):
            version = 2 if (i % 2 == 0) == first_v2 else 1
            s = Session(
                f"s{i}",
                self.world.grid,
                limits=Limits(max_keys=40, send_queue_max_frames=3),
                wire_version=version,
            )
            vx, vy = views[i]
            s.view("main", (vx, vy, vx + 20, vy + 15), 1)
            self.sessions.append(s)
            client: Mirror
            if version == 2:
                table = type_table()
                client = ReferenceClientV2()
                client.apply(encode_hello_v2(s.sid, 0, 20, self.world.grid, table))
                s.types_known = len(table)
            else:
                client = ReferenceClient(maps)
            self.clients.append(client)  # type: ignore[arg-type]
            self.reading.append(True)

    def frame_encoder(self, changes: TickChanges) -> FrameEncoder | None:
        return frames_encoder(self.world, changes, self.sessions)

    def check_clients(self) -> None:
        super().check_clients()
        self.check_twins()

    def check_twins(self) -> None:
        # A v1 and a v2 client holding the same keys hold the same objects, instance for instance.
        current = [
            (s, c)
            for s, c, reading in zip(self.sessions, self.clients, self.reading, strict=True)
            if reading and not s.lagging and not s.queued_frames
        ]
        for s, c in current:
            for t, d in current:
                if s.wire_version != t.wire_version and s.held == t.held:
                    assert c.view() == d.view()


MixedWorldMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMixedWorldInvariant = MixedWorldMachine.TestCase
