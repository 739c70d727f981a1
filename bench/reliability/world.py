"""The busy world every scenario runs: walkers, the ledger, and what changes in a tick.

The world is the same for a seed, and the gold adds up to `GOLD_EACH` per walker
whatever happens: transfers move it, churn hands it on.
"""

from __future__ import annotations

import argparse
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from synkworld import GridMap, SynkObject, World

GOLD_EACH = 100
LEDGER_ID = "ledger"
LEDGER_KEY = "rel-ledger"


class Walker(SynkObject, type="rel-walker"):
    """An object of the busy world: it moves, its hp changes, it trades gold."""

    x: float
    y: float
    kind: str = "ant"
    hp: int = 100
    gold: int = GOLD_EACH


class Ledger(SynkObject, type="rel-ledger"):
    """One channel object changed every tick: its stored `ticks` says how far the store got."""

    ticks: int = 0


@dataclass(frozen=True, slots=True)
class WorldSpec:
    """The busy world: its size and what changes in each tick."""

    entities: int = 3000
    map_size: float = 10_000.0
    cell_size: float = 250.0
    seed: int = 1
    motion: float = 0.1  # the fraction of walkers that move in each tick
    step: float = 5.0  # how far a move goes (standard deviation, units)
    hp_fraction: float = 0.01
    transfers: int = 10  # gold transfers between two walkers per tick
    churn: int = 0  # walkers deleted and replaced by new ones per tick

    def flags(self) -> list[str]:
        """The `serve` command line that builds this world."""
        return [
            *("--entities", str(self.entities), "--map-size", str(self.map_size)),
            *("--cell-size", str(self.cell_size), "--seed", str(self.seed)),
            *("--motion", str(self.motion), "--step", str(self.step)),
            *("--hp-fraction", str(self.hp_fraction), "--transfers", str(self.transfers)),
            *("--churn", str(self.churn)),
        ]

    @property
    def total_gold(self) -> int:
        """The gold in the world, whatever happened: transfers and churn keep it."""
        return self.entities * GOLD_EACH


def spec_from_args(a: argparse.Namespace) -> WorldSpec:
    """The world the command line's world flags describe."""
    return WorldSpec(
        entities=a.entities,
        map_size=a.map_size,
        cell_size=a.cell_size,
        seed=a.seed,
        motion=a.motion,
        step=a.step,
        hp_fraction=a.hp_fraction,
        transfers=a.transfers,
        churn=a.churn,
    )


def new_world(spec: WorldSpec) -> World:
    """An empty world of the spec's map."""
    size = spec.map_size
    return World(
        GridMap(cell_size=spec.cell_size, bounds=(0, 0, size, size)),
        initial_capacity=spec.entities + 1024,
    )


def populate(world: World, spec: WorldSpec) -> None:
    """The spec's walkers at their seeded places, and the ledger: the same world every time."""
    rng = np.random.default_rng([spec.seed, 1])
    n = spec.entities
    hi = spec.map_size - 1e-3
    xs = rng.uniform(0, hi, n).tolist()
    ys = rng.uniform(0, hi, n).tolist()
    kinds = rng.integers(0, 6, n).tolist()
    hps = rng.integers(1, 100, n).tolist()
    for i in range(n):
        world.create(
            Walker(
                id=f"w{i}",
                x=xs[i],
                y=ys[i],
                kind=("ant", "bee", "cat", "dog", "elk", "fox")[kinds[i]],
                hp=hps[i],
            )
        )
    world.create(Ledger(id=LEDGER_ID), key=LEDGER_KEY)


class Busy:
    """The simulation step: a seeded random walk, hp changes, gold transfers and churn.

    Every change of one tick lands in one write batch, so a store that applies
    batches atomically always holds `spec.total_gold` gold and one object per
    walker: kill9 checks exactly that after every SIGKILL.
    """

    def __init__(self, world: World, spec: WorldSpec) -> None:
        self.world = world
        self.spec = spec
        self.walkers = sorted((o for o in world if isinstance(o, Walker)), key=lambda o: o.id)
        ledger = world.get(LEDGER_ID)
        if not isinstance(ledger, Ledger):
            ledger = world.create(Ledger(id=LEDGER_ID), key=LEDGER_KEY)
        self.ledger: Ledger = ledger
        self.rng = np.random.default_rng([spec.seed, 2])
        self.slots = world.slots(self.walkers)
        self.hi = spec.map_size - 1e-3

    def step(self, dt: float) -> None:
        """One tick's changes."""
        spec, rng, walkers, world = self.spec, self.rng, self.walkers, self.world
        n = len(walkers)
        if n == 0:
            return
        moving = min(n, round(n * spec.motion))
        if moving:
            xs, ys = world.positions(self.slots)
            idx = np.arange(n) if moving == n else rng.choice(n, moving, replace=False)
            xs[idx] = np.clip(xs[idx] + rng.normal(0, spec.step, moving), 0, self.hi)
            ys[idx] = np.clip(ys[idx] + rng.normal(0, spec.step, moving), 0, self.hi)
            world.set_positions(self.slots, xs, ys)
        for i in rng.integers(0, n, round(n * spec.hp_fraction)).tolist():
            walkers[i].hp = (walkers[i].hp + 1 + int(rng.integers(0, 98))) % 100
        for a, b, amount in rng.integers(0, n, (spec.transfers, 3)).tolist():
            if a != b:
                moved = min(walkers[a].gold, 1 + amount % 20)
                walkers[a].gold -= moved
                walkers[b].gold += moved
        for i in rng.integers(0, n, spec.churn).tolist():
            old = walkers[i]
            gold = old.gold
            world.delete(old)
            x, y = rng.uniform(0, self.hi, 2).tolist()
            new = world.create(Walker(id=f"c{uuid.uuid4().hex[:12]}", x=x, y=y, gold=gold))
            walkers[i] = new
            self.slots[i] = world.slots([new])[0]
        self.ledger.ticks += 1

    def gold(self) -> int:
        """The gold the walkers hold now."""
        return sum(w.gold for w in self.walkers)


def truth_of(world: World, held: set[str]) -> dict[str, Any]:
    """What a session holding `held` should hold, in `ClientCache.view()`'s form."""
    objs = {
        o.id: [o.synk_type, o.version, o.wire_state(), key]
        for key in held
        for o in world.objects_under(key)
    }
    return {"tick": world.tick, "held": sorted(held), "objs": objs}
