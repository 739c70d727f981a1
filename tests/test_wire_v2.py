"""Protocol v2's encoding, unit by unit: varints, keys, every entry kind, the type table.

Each is encoded by the server's code and decoded by the reference applier
(`MirrorV2`), which must end equal to the v1 applier fed the same tick's v1 frame.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
import msgpack
import numpy as np
import pytest
from hypothesis import given, settings

from synkworld import Grid, GridMap, Session, SynkObject, World, deliver_frames
from synkworld._batch_v2 import encode_varints
from synkworld._mirror_v2 import Reader
from synkworld._wire_v2 import KeyCodes, encode_hello_v2, type_table, varint, zigzag
from synkworld.testing import ReferenceClient, ReferenceClientV2, world_truth
from tests.test_invariants_v2 import frames_encoder


class Crate(SynkObject, type="wire2-crate"):
    x: float
    y: float
    n: int = 0
    label: str = ""
    extra: Any | None = None


class Sign(SynkObject, type="wire2-sign"):
    text: str = ""
    tags: list[Any] = []


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_a_varint_reads_back(n: int) -> None:
    data = varint(n)
    r = Reader(data)
    assert r.varint() == n and r.done()
    assert len(data) == max(1, (n.bit_length() + 6) // 7)


@given(st.integers(min_value=-(2**62), max_value=2**62))
def test_a_zigzag_reads_back(n: int) -> None:
    r = Reader(zigzag(n))
    assert r.zigzag() == n and r.done()


def test_the_zigzag_and_varint_examples_of_the_spec() -> None:
    assert [varint(n).hex() for n in (0, 127, 128, 300)] == ["00", "7f", "8001", "ac02"]
    assert [zigzag(n).hex() for n in (0, -1, 1, -2, 25)] == ["00", "01", "02", "03", "32"]


@given(st.lists(st.integers(min_value=0, max_value=2**64 - 1), max_size=50))
def test_bulk_varints_are_the_single_ones_joined(values: list[int]) -> None:
    data, lengths = encode_varints(np.array(values, dtype=np.uint64))
    assert data == b"".join(map(varint, values))
    assert lengths.tolist() == [len(varint(v)) for v in values]


def test_keys_as_the_spec_writes_them() -> None:
    grid = Grid([GridMap("main", cell_size=10), GridMap("sea", cell_size=5)])
    codes = KeyCodes(grid)
    assert codes.binary("main:3:-2").hex() == "010603"
    assert codes.binary("sea:0:0").hex() == "020000"
    assert codes.binary("chat:lobby") == b"\x00\x0achat:lobby"


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
coord = st.floats(min_value=-30.0, max_value=60.0, allow_nan=False)


class _Pair:
    """A world with a v1 and a v2 session holding the same keys, and their appliers."""

    def __init__(self, world: World, keys: list[str]) -> None:
        self.world = world
        world.record_v2 = True
        self.v1 = Session("v1", world.grid)
        self.v2 = Session("v2", world.grid, wire_version=2)
        self.c1 = ReferenceClient(world.grid.describe())
        self.c2 = ReferenceClientV2()
        table = type_table()
        self.c2.apply(encode_hello_v2("v2", world.tick, 20, world.grid, table))
        self.v2.types_known = len(table)
        for s in (self.v1, self.v2):
            s.sub(keys)
        self.v2_bytes = 0

    def tick(self) -> None:
        sessions = [self.v1, self.v2]
        changes = self.world.commit()
        deliver_frames(
            changes.tick,
            changes.batches,
            sessions,
            self.world,
            now=0.0,
            lag_timeout_s=1e9,
            encoder=frames_encoder(self.world, changes, sessions),
        )
        while (f := self.v1.pop()) is not None:
            self.c1.apply(f)
        while (f := self.v2.pop()) is not None:
            self.v2_bytes += len(f)
            self.c2.apply(f)
        truth = world_truth(self.world, self.v1.held)
        assert self.c1.view() == truth
        assert self.c2.view() == truth


def _grid() -> Grid:
    return Grid([GridMap("main", cell_size=10, bounds=(-20, -20, 60, 60), precision=2)])


KEYS = [f"main:{cx}:{cy}" for cx in range(-2, 6) for cy in range(-2, 6)] + ["room:1"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(coord, coord, values, st.text(max_size=5)), min_size=1, max_size=12),
    st.data(),
)
def test_every_entry_kind_round_trips(
    crates: list[tuple[float, float, Any, str]], data: st.DataObject
) -> None:
    world = World(_grid())
    pair = _Pair(world, [*KEYS[: data.draw(st.integers(10, len(KEYS)))], "room:1"])
    objs = [world.create(Crate(x=x, y=y, extra=e, label=t)) for x, y, e, t in crates]
    sign = world.create(Sign(text="hi"), key="room:1")
    pair.tick()  # adds
    for step in range(4):
        for o in objs:
            kind = data.draw(st.sampled_from(["still", "motion", "cross", "fields", "both"]))
            if kind in ("motion", "both"):
                o.x += data.draw(st.floats(-2.0, 2.0))
            if kind == "cross":
                o.x, o.y = (
                    data.draw(coord),
                    data.draw(coord),
                )  # a mod with both positions, or a move
            if kind in ("fields", "both"):
                o.n += 1
                o.extra = data.draw(values)
        sign.tags = [step, data.draw(values)]
        pair.tick()
    for o in objs[: len(objs) // 2]:
        world.delete(o)  # rems
    pair.tick()


def test_a_jump_past_the_motion_range_goes_as_a_mod() -> None:
    world = World(Grid([GridMap("main", cell_size=1e9, precision=9)]))
    pair = _Pair(world, ["main:0:0"])
    c = world.create(Crate(x=0.0, y=0.0))
    pair.tick()
    c.x = 5.0  # 5e9 units of 1e-9: beyond 2**31
    pair.tick()
    c.x = 5.25
    pair.tick()
    assert pair.c2.objs[c.id].s["x"] == 5.25


def test_slots_past_one_byte_and_their_reuse() -> None:
    world = World(_grid())
    pair = _Pair(world, ["main:0:0", "main:1:0"])
    crates = [world.create(Crate(x=1.0 + i / 1000, y=1.0)) for i in range(300)]
    pair.tick()
    for c in crates[::3]:
        world.delete(c)
    for i in range(100):
        world.create(Crate(x=2.0, y=2.0 + i / 1000))  # into the freed slots, this same tick
    for c in crates[1::3]:
        c.x += 10  # into the next cell
    pair.tick()
    for c in crates[2::3]:
        c.y += 0.01
    pair.tick()


def test_a_type_registered_after_hello_reaches_the_client_before_its_objects() -> None:
    world = World(_grid())
    pair = _Pair(world, ["main:0:0"])
    pair.tick()

    class Late(SynkObject, type="wire2-late"):
        x: float
        y: float
        mood: str = "ok"

    world.create(Late(x=1.0, y=1.0))
    pair.tick()
    assert "wire2-late" in {d[1] for d in pair.c2.types.values()}
    assert pair.v2.types_known == len(type_table())


def test_motion_inside_a_cell_costs_three_bytes_an_object() -> None:
    world = World(_grid())
    pair = _Pair(world, ["main:0:0"])
    crates = [world.create(Crate(x=1.0 + i / 100, y=1.0)) for i in range(50)]
    pair.tick()
    pair.v2_bytes = 0
    for c in crates:
        c.x += 0.25
    pair.tick()
    # frame: kind, tick, parts, count; batch: key (3), head (2: 50 << 4 needs two bytes);
    # every object of the cell moves, so each is (dx, dy) without its slot
    assert pair.v2_bytes == 4 + 5 + 100
    pair.v2_bytes = 0
    for c in crates[:10]:
        c.x += 0.25
    pair.tick()
    # not the whole cell: each with its slot
    assert pair.v2_bytes == 4 + 5 + 30


def test_messages_are_msgpack_maps_after_the_kind_byte() -> None:
    world = World(_grid())
    frame = encode_hello_v2("sid1", 7, 20.0, world.grid, type_table())
    assert frame[0] == 3
    hello = msgpack.unpackb(frame[1:])
    assert hello["proto"] == 2 and hello["tick"] == 7 and hello["rate"] == 20
    assert hello["maps"]["main"]["num"] == 0
    crate = next(d for d in hello["types"] if d[1] == "wire2-crate")
    assert crate[2] == ["x", "y", "n", "label", "extra"] and crate[3] == [0, 1]


@pytest.mark.parametrize("channel", ["room:1", "a longer channel name ü"])
def test_channel_keys_travel_as_strings(channel: str) -> None:
    world = World(_grid())
    pair = _Pair(world, [channel])
    s = world.create(Sign(text="x"), key=channel)
    pair.tick()
    s.text = "y"
    pair.tick()
    assert pair.c2.objs[s.id].k == channel
