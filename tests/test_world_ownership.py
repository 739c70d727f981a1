"""A world owning part of a map: objects leave for keys owned elsewhere, or wait at a border."""

from __future__ import annotations

import orjson

from synkworld import GridMap, SynkObject, World


class Boat(SynkObject, type="own-boat"):
    x: float
    y: float
    hp: int = 0


class Half:
    """Owns the cells with cx < 5 (or >= 5); `open` says whether the other side takes objects."""

    def __init__(self, west: bool) -> None:
        self.west = west
        self.open = True

    def owns(self, key: str) -> bool:
        cx = int(key.split(":")[1])
        return (cx < 5) == self.west

    def can_enter(self, key: str) -> bool:
        return self.open


def worlds() -> tuple[World, World, Half, Half]:
    west, east = Half(True), Half(False)
    a = World(GridMap(cell_size=10, bounds=(0, 0, 100, 100)))
    b = World(GridMap(cell_size=10, bounds=(0, 0, 100, 100)))
    a.ownership, b.ownership = west, east
    return a, b, west, east


def batches(changes: object) -> dict[str, dict[str, object]]:
    return {k: orjson.loads(v) for k, v in changes.batches.data.items()}  # type: ignore[attr-defined]


def test_an_object_crossing_into_a_foreign_cell_leaves_with_its_add_and_document() -> None:
    a, b, _, _ = worlds()
    boat = a.create(Boat(id="b1", x=45, y=5))
    a.commit()
    boat.x = 52
    boat.hp = 3
    changes = a.commit()
    assert batches(changes) == {
        "main:4:0": {
            "k": "main:4:0",
            "mod": [{"id": "b1", "v": 2, "d": {"hp": 3, "x": 52.0, "y": 5.0}, "to": "main:5:0"}],
        }
    }
    (h,) = changes.outgoing
    assert h.key == "main:5:0"
    assert h.entry == {
        "id": "b1",
        "t": "own-boat",
        "v": 2,
        "s": {"hp": 3, "x": 52.0, "y": 5.0},
        "from": "main:4:0",
    }
    assert h.document["key"] == "main:5:0" and h.document["v"] == 2
    assert changes.released_ids == ["b1"] and "b1" not in changes.changed_ids
    assert "b1" not in a and a.objects_under("main:4:0") == []
    adopted = b.adopt(h.document)
    assert adopted is not None and adopted.version == 2 and adopted.key == "main:5:0"
    assert b.adopt(h.document) is None  # idempotent
    assert b.commit().changed_ids == ["b1"]  # the new owner writes it from now on
    assert [o.id for o in b.objects_under("main:5:0")] == ["b1"]


def test_an_object_waits_at_the_border_while_the_other_side_is_closed() -> None:
    a, _, west, _ = worlds()
    boat = a.create(Boat(id="b1", x=45, y=5))
    a.commit()
    west.open = False
    boat.x = 55
    changes = a.commit()
    assert batches(changes)["main:4:0"]["mod"][0]["d"]["x"] == 55.0  # type: ignore[index]
    assert not changes.outgoing and boat.key == "main:5:0"
    assert [o.id for o in a.objects_under("main:4:0")] == ["b1"]
    v = boat.version
    assert not a.commit().batches  # still pinned, and nothing to say
    assert boat.version == v
    west.open = True
    changes = a.commit()  # tried again without moving
    assert [h.id for h in changes.outgoing] == ["b1"]
    assert "b1" not in a


def test_an_object_created_in_a_foreign_cell_goes_there_as_a_creation() -> None:
    a, b, west, _ = worlds()
    west.open = False
    a.create(Boat(id="n1", x=90, y=90))
    changes = a.commit()
    assert not changes.outgoing and "n1" in a and not changes.created_ids
    west.open = True
    changes = a.commit()
    (h,) = changes.outgoing
    assert "from" not in h.entry and h.entry["v"] == 1
    assert not changes.batches and "n1" not in a
    assert b.adopt(h.document) is not None


def test_a_region_migrates_without_a_word_to_clients() -> None:
    a, b, _, _ = worlds()
    boats = [a.create(Boat(x=i * 4, y=5)) for i in range(5)]
    a.commit()
    docs = a.release(boats)
    assert len(a) == 0 and not a.commit().batches
    for doc in docs:
        b.adopt(doc)
    assert not b.commit().batches
    assert len(b) == 5


def test_a_handover_the_bus_did_not_carry_comes_back_to_the_border() -> None:
    a, b, _, _ = worlds()
    boat = a.create(Boat(id="b1", x=45, y=5))
    a.create(Boat(id="n1", x=90, y=90))  # created in a foreign cell
    a.commit()  # n1 leaves at once
    a.settle_handovers(failed=["n1"])
    assert "n1" in a and a.get("n1") is not None
    boat.x = 52
    changes = a.commit()
    assert {h.id for h in changes.outgoing} == {"b1", "n1"}
    assert a.settle_handovers(failed=["b1", "n1"]) and "b1" in a
    assert [o.id for o in a.objects_under("main:4:0")] == ["b1"]
    assert orjson.loads(a.snapshot("main:4:0"))["objs"][0]["id"] == "b1"
    changes = a.commit()  # tried again, without moving
    assert {h.id for h in changes.outgoing} == {"b1", "n1"}
    a.settle_handovers()
    assert "b1" not in a and "n1" not in a and len(a) == 0
    for h in changes.outgoing:
        assert b.adopt(h.document) is not None
    assert {o.id for o in b} == {"b1", "n1"}
