"""Unit tests of the per-key counters the tick keeps: bytes out, subscribers, the top k."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synkworld import ConfigError, GridMap, Session, SynkObject, TickLoop, World
from synkworld._cell_counters import CellCounters, CellFigures
from synkworld.testing import FakeClock


class Gnat(SynkObject, type="cells-gnat"):
    x: float
    y: float
    hp: int = 0


def make_world() -> World:
    return World(GridMap(cell_size=10, bounds=(0, 0, 100, 100)))


def viewer(world: World, sid: str, rect: tuple[float, float, float, float]) -> Session:
    s = Session(sid, world.grid)
    s.view("main", rect, 0)
    return s


def channel_session(sid: str, keys: set[str]) -> Session:
    s = Session(sid, make_world().grid)
    s.sub(add=keys)
    s.take_subscription_change()
    return s


def test_a_batch_counts_its_length_times_the_sessions_holding_its_key() -> None:
    world = make_world()
    clock = FakeClock()
    loop = TickLoop(world, tick_rate_hz=1, clock=clock)
    gnat = world.create(Gnat(x=5, y=5))  # main:0:0
    world.create(Gnat(x=55, y=55))  # main:5:5, held by nobody
    for sid in ("a", "b"):
        loop.attach(viewer(world, sid, (1, 1, 9, 9)))
    loop.attach(viewer(world, "c", (41, 41, 49, 49)))  # main:4:4: no batches
    loop.step()  # the sessions take their keys; nothing was held before this frame
    assert loop.cells.statistics().by_bytes == ()

    gnat.hp = 1
    clock.advance(2.0)
    changes = loop.step()
    batch = changes.batches.data["main:0:0"]
    st = loop.statistics().cells
    assert st.window_s == pytest.approx(2.0)
    assert st.by_bytes == (CellFigures("main:0:0", 2 * len(batch) / 2.0, 2),)
    assert st.keys_held == 2 and st.subscriptions == 3
    assert [(f.key, f.subscribers) for f in st.by_subscribers] == [("main:0:0", 2), ("main:4:4", 1)]


def test_the_rate_is_over_a_sliding_window_and_falls_to_zero_without_traffic() -> None:
    cells = CellCounters(window_s=10.0)
    cells.track([channel_session("s", {"k"})])
    cells.count({"k": b"x" * 100}, now=0.0)  # the first mark
    for t in range(1, 6):
        cells.count({"k": b"x" * 100}, now=float(t))
    assert cells.figures("k").bytes_per_s == pytest.approx(100.0)
    for t in range(6, 30):
        cells.count({}, now=float(t))
    assert cells.figures("k") == CellFigures("k", 0.0, 1)
    assert cells.statistics().by_bytes == ()  # nothing moved in the window
    assert cells.statistics().window_s == pytest.approx(10.0)


def test_a_view_change_moves_subscribers_and_a_detach_takes_them_away() -> None:
    world = make_world()
    loop = TickLoop(world, clock=FakeClock())
    s = viewer(world, "s", (1, 1, 19, 9))  # main:0:0 and main:1:0
    loop.attach(s)
    loop.step()
    assert {f.key for f in loop.cells.statistics().by_subscribers} == {"main:0:0", "main:1:0"}
    s.view("main", (21, 1, 29, 9), 0)
    loop.step()
    assert [f.key for f in loop.cells.statistics().by_subscribers] == ["main:2:0"]
    loop.detach(s)
    st = loop.cells.statistics()
    assert st.by_subscribers == () and st.subscriptions == 0 and st.keys_held == 0


def test_top_k_orders_by_value_then_key_and_keeps_k() -> None:
    cells = CellCounters(top_k=2)
    cells.track(
        [
            channel_session("1", {"a", "b", "c"}),
            channel_session("2", {"b", "c"}),
            channel_session("3", {"c", "d"}),
        ]
    )
    subs = cells.statistics().by_subscribers
    assert [(f.key, f.subscribers) for f in subs] == [("c", 3), ("b", 2)]
    assert [f.key for f in cells.statistics(top_k=4).by_subscribers] == ["c", "b", "a", "d"]
    cells.count({}, now=0.0)
    cells.count({"a": b"x" * 30, "d": b"x" * 30, "b": b"x" * 10}, now=1.0)
    # a and d tie at 30 B/s; b has 2 x 10; c had no batch.
    assert [(f.key, f.bytes_per_s) for f in cells.statistics(top_k=3).by_bytes] == [
        ("a", 30.0),
        ("d", 30.0),
        ("b", 20.0),
    ]


def test_compaction_keeps_the_held_keys_figures() -> None:
    cells = CellCounters(top_k=3)
    many = [channel_session(f"m{j}", {f"k{i}" for i in range(j, 600, 3)}) for j in range(3)]
    few = channel_session("few", {"k1", "k2", "k3"})
    cells.track([*many, few])
    cells.count({}, now=0.0)
    cells.count({"k1": b"x" * 10, "k2": b"x" * 20, "k3": b"x" * 30}, now=1.0)
    for s in many:
        s.sub(rem=s.held)
        s.take_subscription_change()
    cells.track([*many, few])
    assert len(cells._keys) == 3  # compacted: 597 keys nobody holds left their slots
    assert [(f.key, f.bytes_per_s, f.subscribers) for f in cells.statistics().by_bytes] == [
        ("k3", 60.0, 1),
        ("k2", 40.0, 1),
        ("k1", 20.0, 1),
    ]
    cells.count({"k1": b"x" * 10}, now=2.0)
    assert cells.figures("k1") == CellFigures("k1", 15.0, 1)  # (20 + 10) bytes over 2 s


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError):
        CellCounters(top_k=0)
    with pytest.raises(ConfigError):
        CellCounters(window_s=0)


KEYS = [f"ch{i}" for i in range(12)]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 5),  # which session
            st.sets(st.sampled_from(KEYS)),  # its new keys
            st.booleans(),  # detached instead
            st.dictionaries(st.sampled_from(KEYS), st.integers(1, 50)),  # the tick's batches
        ),
        max_size=40,
    )
)
def test_counters_agree_with_counting_every_session_and_key(
    steps: list[tuple[int, set[str], bool, dict[str, int]]],
) -> None:
    cells = CellCounters(top_k=len(KEYS), window_s=1e9)  # one window over every tick
    grid = make_world().grid
    sessions: dict[str, Session] = {}
    expected_bytes: Counter[str] = Counter()
    cells.count({}, now=0.0)
    for t, (i, keys, detach, sizes) in enumerate(steps, start=1):
        batches = {k: b"x" * n for k, n in sizes.items()}
        cells.count(batches, now=float(t))
        for s in sessions.values():  # what the frames of this tick carry
            for k in s.held & batches.keys():
                expected_bytes[k] += len(batches[k])
        sid = f"s{i}"
        if detach:
            if sessions.pop(sid, None) is not None:
                cells.forget(sid)
        else:
            s = sessions.setdefault(sid, Session(sid, grid))
            s.sub(add=keys - s.held, rem=s.held - keys)
            s.take_subscription_change()
        cells.track(list(sessions.values()))
        holders = Counter(k for s in sessions.values() for k in s.held)
        st_ = cells.statistics()
        assert {f.key: f.subscribers for f in st_.by_subscribers} == +holders
        assert st_.subscriptions == sum(holders.values())
        elapsed = float(t)
        assert {f.key: round(f.bytes_per_s * elapsed) for f in st_.by_bytes} == +expected_bytes
