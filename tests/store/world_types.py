"""Object types shared by the persistence tests and the process that reloads their world."""

from __future__ import annotations

from synkworld import Grid, GridMap, SynkObject, World


class Crate(SynkObject, type="persist-crate"):
    x: float
    y: float
    hp: int = 10
    label: str = ""
    tags: list[str] = []


class Notice(SynkObject, type="persist-notice"):
    text: str


def new_world() -> World:
    return World(
        Grid(
            [
                GridMap(cell_size=100, bounds=(0, 0, 1000, 1000)),
                GridMap("sea", cell_size=50, origin=(5000, 0), bounds=(5000, 0, 5500, 500)),
            ]
        )
    )
