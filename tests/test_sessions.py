"""Unit tests of a session's subscription and its bounded queue, and of frame building."""

from __future__ import annotations

import orjson
import pytest

from synkworld import (
    BadMessageError,
    ConfigError,
    Grid,
    GridMap,
    Limits,
    Session,
    SynkObject,
    TooManyKeysError,
    World,
    deliver_frames,
)
from synkworld.testing import ReferenceClient, world_truth


class Dot(SynkObject, type="sess-dot"):
    x: float
    y: float


def grid() -> Grid:
    return Grid(GridMap(cell_size=10, bounds=(0, 0, 100, 100)))


def test_view_replaces_grid_keys_and_keeps_channel_keys() -> None:
    s = Session("s", grid())
    s.sub(["room", "main:9:9"])
    s.view("main", (0, 0, 5, 5), 1)
    assert s.wanted == {"room", "main:0:0", "main:1:0", "main:0:1", "main:1:1"}
    s.view("main", (50, 50, 50, 50), 0)
    assert s.wanted == {"room", "main:5:5"}
    assert s.held == set()


def test_margin_is_capped() -> None:
    s = Session("s", grid(), limits=Limits(max_margin=1))
    s.view("main", (50, 50, 50, 50), 5)
    assert len(s.wanted) == 9


def test_too_many_keys_changes_nothing() -> None:
    s = Session("s", grid(), limits=Limits(max_keys=4))
    s.sub(["a", "b"])
    with pytest.raises(TooManyKeysError, match="limit is 4"):
        s.view("main", (0, 0, 50, 50), 0)
    with pytest.raises(TooManyKeysError):
        s.sub(["c", "d", "e"])
    assert s.wanted == {"a", "b"}


def test_sub_refuses_what_cannot_be_meant() -> None:
    s = Session("s", grid())
    with pytest.raises(BadMessageError, match="both added and removed"):
        s.sub(["a"], ["a"])
    with pytest.raises(BadMessageError, match="no map"):
        s.sub(["nomap:1:1"])
    with pytest.raises(BadMessageError, match="unknown map"):
        s.view("nomap", (0, 0, 1, 1))
    with pytest.raises(ConfigError):
        Session("s", grid(), limits=Limits(max_keys=0))


def test_subscription_change_applies_after_the_batches() -> None:
    g = grid()
    w = World(g)
    d = w.create(Dot(x=5, y=5))
    s = Session("s", g)
    c = ReferenceClient(g.describe())
    s.sub(["main:0:0"])
    ch = w.commit()
    deliver_frames(ch.tick, ch.batches, [s], w, now=0, lag_timeout_s=1)
    first = orjson.loads(s.pop() or b"")
    # The add of this tick is not sent as a batch: the client did not hold the key yet.
    assert "b" not in first
    assert first["sub"] == {"add": ["main:0:0"]}
    assert first["snap"][0]["objs"][0]["id"] == d.id
    c.apply(first)
    # Same tick: the object leaves for (1,0) and the client switches to it.
    w.move(d, 15, 5)
    s.sub(["main:1:0"], ["main:0:0"])
    ch = w.commit()
    deliver_frames(ch.tick, ch.batches, [s], w, now=0, lag_timeout_s=1)
    frame = orjson.loads(s.pop() or b"")
    assert [b["k"] for b in frame["b"]] == ["main:0:0"]
    assert frame["b"][0]["mod"][0]["to"] == "main:1:0"
    assert frame["sub"] == {"add": ["main:1:0"], "rem": ["main:0:0"]}
    c.apply(frame)
    assert c.view() == world_truth(w, s.held)
    assert c.teardowns == []  # the object kept its identity across the switch


def test_slow_session_is_skipped_then_resynced() -> None:
    g = grid()
    w = World(g)
    dots = [w.create(Dot(x=i * 10 + 1, y=1)) for i in range(5)]
    s = Session("s", g, limits=Limits(send_queue_max_frames=2))
    c = ReferenceClient(g.describe())
    s.view("main", (0, 0, 99, 9), 0)
    for t in range(6):
        for d in dots:
            d.x += 0.5
        if t == 3:
            w.delete(dots[0])
        ch = w.commit()
        deliver_frames(ch.tick, ch.batches, [s], w, now=float(t), lag_timeout_s=100)
    assert s.lagging and s.queued_frames == 2 and s.frames_dropped == 4
    c.apply(s.pop() or b"")
    c.apply(s.pop() or b"")
    ch = w.commit()
    deliver_frames(ch.tick, ch.batches, [s], w, now=7, lag_timeout_s=100)
    resync = s.pop() or b""
    assert resync.startswith(b'{"m":"resync"')
    c.apply(resync)
    assert not s.lagging and s.resyncs == 1
    assert c.view() == world_truth(w, s.held)
    assert dots[0].id in c.teardowns


def test_lagging_past_the_limit_is_reported() -> None:
    g = grid()
    w = World(g)
    d = w.create(Dot(x=1, y=1))
    s = Session("s", g, limits=Limits(send_queue_max_frames=1))
    s.view("main", (0, 0, 1, 1), 0)
    expired = ()
    for t in range(5):
        d.x += 1
        ch = w.commit()
        expired = deliver_frames(
            ch.tick, ch.batches, [s], w, now=float(t), lag_timeout_s=2.5
        ).expired
    assert expired == (s,)


def test_queue_bounds_bytes() -> None:
    s = Session("s", grid(), limits=Limits(send_queue_max_bytes=100))
    assert s.offer(b"x" * 60, 0)
    assert not s.offer(b"x" * 60, 0)
    assert s.lagging and s.queued_bytes == 60
    s.push_control(b"y" * 60)  # replies are never dropped
    assert s.queued_frames == 2
    assert s.pop() == b"x" * 60
    st = s.statistics()
    assert st.frames_sent == 1 and st.frames_dropped == 1 and st.lagging
