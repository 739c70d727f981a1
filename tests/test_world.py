"""Unit tests of the world and its tick outcomes: exactly the batches docs/protocol.md describes."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

import synkworld._batch
import synkworld._world
from synkworld import (
    DuplicateIdError,
    FieldError,
    GridMap,
    Session,
    SynkObject,
    UnknownObjectError,
    World,
    WorldError,
    deliver_frames,
)


class Ship(SynkObject, type="world-ship"):
    x: float
    y: float
    hp: int = 5


class Chat(SynkObject, type="world-chat"):
    text: str


def new_world(**kw: Any) -> World:
    n = iter(range(1, 10_000))
    return World(
        GridMap(cell_size=10, bounds=(0, 0, 100, 100), **kw), id_factory=lambda: f"o{next(n)}"
    )


def batches(world: World) -> dict[str, dict[str, Any]]:
    return {k: orjson.loads(b.data) for k, b in world.commit().batches.items()}


def test_create_change_move_delete_outcomes() -> None:
    w = new_world()
    s = w.create(Ship(x=1, y=1))
    assert batches(w) == {
        "main:0:0": {
            "k": "main:0:0",
            "add": [{"id": "o1", "t": "world-ship", "v": 1, "s": {"hp": 5, "x": 1.0, "y": 1.0}}],
        }
    }
    s.hp = 4
    assert batches(w) == {
        "main:0:0": {"k": "main:0:0", "mod": [{"id": "o1", "v": 2, "d": {"hp": 4}}]}
    }
    s.x = 2
    assert batches(w) == {"main:0:0": {"k": "main:0:0", "mv": [["o1"], [2.0], [1.0]]}}
    s.x = 15
    assert batches(w) == {
        "main:0:0": {
            "k": "main:0:0",
            "mod": [{"id": "o1", "v": 4, "d": {"x": 15.0, "y": 1.0}, "to": "main:1:0"}],
        },
        "main:1:0": {
            "k": "main:1:0",
            "add": [
                {
                    "id": "o1",
                    "t": "world-ship",
                    "v": 4,
                    "s": {"hp": 4, "x": 15.0, "y": 1.0},
                    "from": "main:0:0",
                }
            ],
        },
    }
    w.delete(s)
    assert batches(w) == {"main:1:0": {"k": "main:1:0", "rem": [{"id": "o1"}]}}
    assert batches(w) == {}
    assert w.keys() == []


def test_created_and_deleted_in_one_tick_is_not_sent() -> None:
    w = new_world()
    s = w.create(Ship(x=1, y=1))
    s.hp = 1
    w.move(s, 50, 50)
    w.delete(s)
    assert batches(w) == {}
    assert len(w) == 0


def test_moved_then_deleted_is_removed_where_clients_know_it() -> None:
    w = new_world()
    s = w.create(Ship(x=1, y=1))
    w.commit()
    w.move(s, 55, 55)
    s.hp = 0
    w.delete(s)
    assert batches(w) == {"main:0:0": {"k": "main:0:0", "rem": [{"id": "o1"}]}}


def test_move_out_and_back_in_one_tick_is_a_plain_motion() -> None:
    w = new_world()
    s = w.create(Ship(x=1, y=1))
    w.commit()
    w.move(s, 55, 55)
    w.move(s, 3, 3)
    assert batches(w) == {"main:0:0": {"k": "main:0:0", "mv": [["o1"], [3.0], [3.0]]}}


def test_versions_grow_once_per_tick() -> None:
    w = new_world()
    s = w.create(Ship(x=1, y=1))
    w.commit()
    for i in range(5):
        s.hp = i
        s.x = 1 + i / 10
    w.commit()
    assert s.version == 2
    w.commit()
    assert s.version == 2


def test_channel_objects() -> None:
    w = new_world()
    c = w.create(Chat(text="hi"), key="room:1")
    assert batches(w)["room:1"]["add"][0]["s"] == {"text": "hi"}
    c.text = "bye"
    assert batches(w) == {
        "room:1": {"k": "room:1", "mod": [{"id": "o1", "v": 2, "d": {"text": "bye"}}]}
    }
    with pytest.raises(WorldError, match="give a channel key"):
        w.create(Chat(text="x"))
    with pytest.raises(WorldError, match="looks like a grid key"):
        w.create(Chat(text="x"), key="main:1:1")
    with pytest.raises(WorldError, match="positioned"):
        w.create(Ship(x=1, y=1), key="room:1")


def test_ids_and_errors() -> None:
    w = new_world()
    a = w.create(Ship(id="fixed", x=1, y=1))
    with pytest.raises(DuplicateIdError):
        w.create(Ship(id="fixed", x=1, y=1))
    w.commit()
    w.delete("fixed")
    with pytest.raises(DuplicateIdError, match="deleted in this tick"):
        w.create(Ship(id="fixed", x=1, y=1))
    with pytest.raises(UnknownObjectError):
        w.delete("fixed")
    with pytest.raises(UnknownObjectError):
        w["fixed"]
    w.commit()
    assert a.world is None and a.x == 1.0
    w.create(Ship(id="fixed", x=2, y=2))
    with pytest.raises(FieldError, match="range"):
        w.create(Ship(x=1e300, y=0))
    with pytest.raises(FieldError, match="finite"):
        w.set_positions(w.slots([w["fixed"]]), np.array([np.nan]), np.array([1.0]))


def test_positions_round_on_the_wire_only() -> None:
    w = new_world(precision=0)
    s = w.create(Ship(x=1.26, y=1.5))
    assert batches(w)["main:0:0"]["add"][0]["s"] == {"hp": 5, "x": 1.0, "y": 2.0}
    assert s.x == 1.26
    s.x = 2.5
    assert batches(w)["main:0:0"]["mv"] == [["o1"], [2.0], [2.0]]


def _run(bulk: bool) -> list[dict[str, bytes]]:
    w = new_world()
    rng = np.random.default_rng(7)
    ships = [w.create(Ship(x=float(x), y=float(y))) for x, y in rng.uniform(0, 100, (200, 2))]
    out = [{k: b.data for k, b in w.commit().batches.items()}]
    slots = w.slots(ships)
    for t in range(30):
        xs, ys = w.positions(slots)
        step = rng.normal(0, 3, (2, len(ships)))
        nx, ny = np.clip(xs + step[0], 0, 99.9), np.clip(ys + step[1], 0, 99.9)
        still = rng.random(len(ships)) < 0.2
        nx[still], ny[still] = xs[still], ys[still]
        if bulk:
            w.set_positions(slots, nx, ny)
        else:
            for s, x, y in zip(ships, nx.tolist(), ny.tolist(), strict=True):
                s.x = x
                s.y = y
        ships[t].hp = t  # a field change on a moving object turns its mv into a mod
        out.append({k: b.data for k, b in w.commit().batches.items()})
    return out


def test_bulk_motion_and_per_object_motion_give_identical_frames() -> None:
    per_object, bulk = _run(False), _run(True)
    assert per_object == bulk
    assert any(b"mv" in data for frame in bulk for data in frame.values())
    assert any(b'"to"' in data for frame in bulk for data in frame.values())


def test_each_batch_is_encoded_once_per_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = orjson.dumps

    def counting(obj: Any, *a: Any, **kw: Any) -> bytes:
        data = real(obj, *a, **kw)
        calls.append(data)
        return data

    monkeypatch.setattr(synkworld._batch.orjson, "dumps", counting)
    w = new_world()
    for i in range(10):
        w.create(Ship(x=i * 10 + 1, y=1))
    sessions = [Session(f"s{i}", w.grid) for i in range(50)]
    for s in sessions:
        s.view("main", (0, 0, 99, 5), 0)
    changes = w.commit()
    deliver_frames(changes.tick, changes.batches, sessions, w, now=0, lag_timeout_s=1)
    calls.clear()
    for o in w:
        w.move(o, o.x + 1, 2)  # type: ignore[attr-defined]
    changes = w.commit()
    report = deliver_frames(changes.tick, changes.batches, sessions, w, now=0, lag_timeout_s=1)
    assert report.frames == 50
    assert len(calls) == len(changes.batches) == 10
    frame = sessions[0]._queue[-1]
    for b in changes.batches.values():
        assert b.data in frame


def test_snapshot_encoded_once_per_tick_however_many_subscribe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = new_world()
    w.create(Ship(x=1, y=1))
    w.commit()
    calls = 0
    real = synkworld._world.encode_snapshot

    def counting(snapshot: dict[str, Any]) -> bytes:
        nonlocal calls
        calls += 1
        return real(snapshot)

    monkeypatch.setattr(synkworld._world, "encode_snapshot", counting)
    sessions = [Session(f"s{i}", w.grid) for i in range(100)]
    for s in sessions:
        s.sub(["main:0:0"])
    changes = w.commit()
    deliver_frames(changes.tick, changes.batches, sessions, w, now=0, lag_timeout_s=1)
    assert calls == 1
    # Unchanged key: the cached bytes serve the next tick too; a change invalidates them.
    assert w.snapshot("main:0:0") is w.snapshot("main:0:0")
    next(iter(w)).hp = 1  # type: ignore[attr-defined]
    w.commit()
    w.snapshot("main:0:0")
    assert calls == 2


def test_documents_round_trip() -> None:
    w = new_world()
    s = w.create(Ship(x=12, y=1, hp=3))
    c = w.create(Chat(text="t"), key="room")
    w.commit()
    s.hp = 2
    w.commit()
    docs = w.documents([s.id, c.id, "gone"])
    assert docs == {
        s.id: {
            "_id": s.id,
            "t": "world-ship",
            "key": "main:1:0",
            "v": 2,
            "hp": 2,
            "x": 12.0,
            "y": 1.0,
        },
        c.id: {"_id": c.id, "t": "world-chat", "key": "room", "v": 1, "text": "t"},
        "gone": None,
    }
    w2 = new_world()
    for d in docs.values():
        if d is not None:
            w2.load(d)
    assert batches(w2) == {}
    assert w2.documents([s.id, c.id]) == {k: v for k, v in docs.items() if k != "gone"}
    assert {o.id for o in w2.objects_under("main:1:0")} == {s.id}


def test_snapshots_of_empty_keys_are_not_kept() -> None:
    """Regression: every key a client ever asked for kept a cached snapshot, for good."""
    world = new_world()
    for i in range(1000):
        assert world.snapshot(f"room-{i}") == b'{"k":"room-%d","objs":[]}' % i
    assert not world._snapshots


def test_get_with_a_type_returns_that_type_or_says_why_not() -> None:
    class Rock(SynkObject, type="test-rock"):
        x: float
        y: float

    class Reed(SynkObject, type="test-reed"):
        x: float
        y: float

    world = World(GridMap(cell_size=10, bounds=(0, 0, 100, 100)))
    rock = world.create(Rock(id="r1", x=1, y=1))
    world.create(Reed(id="d1", x=2, y=2))
    got: Rock = world.get("r1", Rock)
    assert got is rock
    assert world.get("nothing") is None
    with pytest.raises(UnknownObjectError, match="no object 'nothing'"):
        world.get("nothing", Rock)
    with pytest.raises(TypeError, match="'d1' is a Reed, not a Rock"):
        world.get("d1", Rock)
