"""Unit tests of SynkObject: declarations, field checks, dirty tracking and diffs."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from synkworld import (
    DeclarationError,
    DocumentError,
    FieldError,
    GridMap,
    SynkObject,
    World,
    object_type,
)


class Boat(SynkObject, type="obj-boat"):
    name: str
    x: float
    y: float
    hp: int = 100
    cargo: list[Any] = []
    note: str | None = None
    speed: ClassVar[float] = 2.0


class Sign(SynkObject, type="obj-sign"):
    text: str


def test_declared_fields_and_registry() -> None:
    assert list(Boat.synk_fields) == ["name", "x", "y", "hp", "cargo", "note"]
    assert Boat.synk_position == ("x", "y")
    assert Sign.synk_position is None
    assert object_type("obj-boat") is Boat
    assert Boat.speed == 2.0


def test_construction_checks_fields() -> None:
    b = Boat(name="a", x=1, y=2)
    assert b.x == 1.0 and isinstance(b.x, float)
    assert b.hp == 100 and b.note is None
    with pytest.raises(FieldError, match="missing field 'name'"):
        Boat(x=1, y=2)
    with pytest.raises(FieldError, match="unknown field 'colour'"):
        Boat(name="a", x=1, y=2, colour=3)
    with pytest.raises(FieldError, match=r"obj-boat\.hp must be an int, not str"):
        Boat(name="a", x=1, y=2, hp="3")
    with pytest.raises(FieldError, match="must be finite"):
        Boat(name="a", x=float("nan"), y=2)
    with pytest.raises(FieldError, match="must be an int, not bool"):
        Boat(name="a", x=1, y=2, hp=True)


def test_mutable_defaults_are_not_shared() -> None:
    a, b = Boat(name="a", x=0, y=0), Boat(name="b", x=0, y=0)
    a.cargo.append(1)
    assert b.cargo == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("id: str", "reserved"),
        ("key: str", "reserved"),
        ("pos: tuple[int, int]", "unsupported field type"),
        ("a: int | str", "only 'T | None'"),
        ("x: int\n    y: int", "must be declared as float"),
    ],
)
def test_declaration_errors(body: str, message: str) -> None:
    src = f"class Bad(SynkObject, type='obj-bad'):\n    {body}\n"
    with pytest.raises(DeclarationError, match=message):
        exec(src, {"SynkObject": SynkObject})


def test_type_key_taken_and_abstract_classes() -> None:
    with pytest.raises(DeclarationError, match="taken"):
        exec("class Other(SynkObject, type='obj-boat'):\n    a: int\n", {"SynkObject": SynkObject})

    class Base(SynkObject):
        hp: int = 1

    with pytest.raises(DeclarationError, match="no type key"):
        Base()

    class Concrete(Base, type="obj-concrete"):
        name: str = ""

    assert list(Concrete(name="z").state()) == ["hp", "name"]


def test_position_field_names_can_be_chosen() -> None:
    class Plane(SynkObject, type="obj-plane", position=("lon", "lat")):
        lon: float
        lat: float

    assert Plane.synk_position == ("lon", "lat")
    with pytest.raises(DeclarationError, match="not declared"):
        exec(
            "class P(SynkObject, type='obj-p2', position=('a', 'b')):\n    a: float\n",
            {"SynkObject": SynkObject},
        )


def test_dirty_tracking_and_diff() -> None:
    w = World(GridMap(cell_size=10, bounds=(0, 0, 100, 100)))
    b = w.create(Boat(name="a", x=1, y=2))
    w.commit()
    assert b.diff() == {}
    b.hp = 100  # same value: not a change
    assert b.diff() == {}
    b.hp = 7
    b.x = 3.5
    assert b.diff() == {"hp": 7, "x": 3.5, "y": 2.0}
    b.cargo.append("fish")
    b.touch("cargo")
    assert b.diff()["cargo"] == ["fish"]
    w.commit()
    assert b.diff() == {}
    assert b.version == 2
    with pytest.raises(FieldError, match="no field"):
        b.touch("nope")


def test_state_key_and_wire_state() -> None:
    w = World(GridMap(cell_size=10, bounds=(0, 0, 100, 100), precision=1))
    b = w.create(Boat(name="a", x=12.345, y=2))
    assert b.key == "main:1:0"
    assert b.state()["x"] == 12.345
    assert b.wire_state()["x"] == 12.3
    s = w.create(Sign(text="hi"), key="lobby")
    assert s.key == "lobby"


def test_from_state_names_document_and_field() -> None:
    with pytest.raises(
        DocumentError, match=r"document 'd1' of type 'obj-boat': missing field 'name'"
    ):
        Boat.from_state("d1", {"x": 1.0, "y": 1.0})
    with pytest.raises(DocumentError, match=r"'d2' .*hp must be an int") as e:
        Boat.from_state("d2", {"name": "n", "x": 1.0, "y": 1.0, "hp": 1.5})
    assert e.value.doc_id == "d2"
    with pytest.raises(DocumentError, match="unknown field 'wings'"):
        Boat.from_state("d3", {"name": "n", "x": 1.0, "y": 1.0, "wings": 2})
    b = Boat.from_state("d4", {"name": "n", "x": 1.0, "y": 1.0}, version=9)
    assert b.version == 9 and b.id == "d4"
