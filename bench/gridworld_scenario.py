"""The grid-world scenario (bench/README.md): its parameters, its world and its motion.

Everything here is deterministic for a given seed: entity motion advances by a
fixed step per tick (speed / tick rate) and the hp changes come from a seeded
generator, so the world after N motion ticks is the same in every run, whatever
the timing. The client viewports pan as a function of time only; after the
motion stops each client sends its viewport at the virtual time of the last
motion tick, so that the final holdings of two runs (shared and naive frames)
can be compared object for object.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from synkworld._loadtest_pan import Panning, PanPath
from synkworld._loadtest_pan import view_phase as _view_phase

__all__ = [
    "Motion",
    "PanPath",
    "Scenario",
    "pan_path",
    "pan_rect",
    "runqueue_wait_s",
    "view_phase",
]

KINDS = ("ant", "bee", "cat", "dog", "elk", "fox")


@dataclass(frozen=True, slots=True)
class Scenario:
    """Every parameter of one grid-world run; the defaults are the scenario's."""

    map_size: float = 10_000.0
    cell_size: float = 250.0
    entities: int = 10_000
    speed: float = 50.0  # units per second
    hp_fraction: float = 0.01  # of the entities change hp each tick
    tick_rate_hz: float = 20.0
    warmup_s: float = 5.0
    seconds: float = 30.0
    clients: int = 500
    viewport_w: float = 1_000.0
    viewport_h: float = 750.0
    pan_speed: float = 100.0  # units per second
    view_interval_s: float = 1.0
    margin: int = 1
    seed: int = 1
    sample_clients: int = 20  # clients that decode and apply every frame
    loadgen_procs: int = 2
    mode: str = "shared"  # or "per-client": the naive baseline
    compression: bool = False  # permessage-deflate, offered by the clients, enabled by the server
    direct_writes: bool = True  # False: every frame through aiohttp's writer (to compare)
    proto: int = 1  # the protocol the clients speak: 1 (JSON), 2 (binary, docs/protocol-v2.md)

    @property
    def motion_ticks(self) -> int:
        """The number of ticks in which the entities move (warm-up and measured window)."""
        return round((self.warmup_s + self.seconds) * self.tick_rate_hz)

    def to_json(self) -> dict[str, Any]:
        """The parameters as a JSON object."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scenario:
        """The scenario a `to_json` object describes."""
        return cls(**data)

    def sampled(self) -> list[int]:
        """The indices of the sampled clients, spread evenly over all clients."""
        n = min(self.sample_clients, self.clients)
        if n <= 0:
            return []
        return sorted({(i * self.clients) // n for i in range(n)})


def panning(sc: Scenario) -> Panning:
    """The scenario's viewports over its map (the package's load-test panning, same draws)."""
    return Panning(
        (0.0, 0.0, sc.map_size, sc.map_size), sc.viewport_w, sc.viewport_h, sc.pan_speed, sc.seed
    )


def pan_path(sc: Scenario, index: int) -> PanPath:
    """Client `index`'s viewport path: a seeded start and direction."""
    return panning(sc).path(index)


def pan_rect(sc: Scenario, path: PanPath, t: float) -> list[float]:
    """The viewport rectangle [x0, y0, x1, y1] `t` seconds after the start, bouncing."""
    return panning(sc).rect(path, t)


def view_phase(sc: Scenario, index: int) -> float:
    """When, within each view interval, client `index` sends its `view` (spreads the load)."""
    return _view_phase(sc.seed, index, sc.view_interval_s)


def runqueue_wait_s(pid: int | str = "self") -> float:
    """Seconds the threads of a process have spent runnable but waiting for a CPU (Linux).

    On a shared machine this says how much of a window a process was starved by
    others; 0.0 where /proc/<pid>/task/*/schedstat is unavailable.
    """
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


class Motion:
    """The entities' motion: one fixed step per tick, bouncing at the map's edges."""

    def __init__(self, sc: Scenario) -> None:
        rng = np.random.default_rng([sc.seed, 1])
        n = sc.entities
        self.sc = sc
        self.hi = sc.map_size - 1e-3  # positions stay inside the map's last cell
        self.xs: npt.NDArray[np.float64] = rng.uniform(0, self.hi, n)
        self.ys: npt.NDArray[np.float64] = rng.uniform(0, self.hi, n)
        angle = rng.uniform(0, 2 * np.pi, n)
        step = sc.speed / sc.tick_rate_hz
        self.vx: npt.NDArray[np.float64] = np.cos(angle) * step
        self.vy: npt.NDArray[np.float64] = np.sin(angle) * step
        self.kinds = [KINDS[i] for i in rng.integers(0, len(KINDS), n).tolist()]
        self.colors: list[int] = rng.integers(0, 1 << 24, n).tolist()
        self.hps: list[int] = rng.integers(0, 100, n).tolist()
        self._hp_rng = np.random.default_rng([sc.seed, 2])
        self.hp_changes = max(0, round(n * sc.hp_fraction))

    def step(self) -> None:
        """Moves every entity by one tick's step, bouncing off the edges."""
        for pos, vel in ((self.xs, self.vx), (self.ys, self.vy)):
            pos += vel
            low = pos < 0
            if low.any():
                pos[low] = -pos[low]
                vel[low] = -vel[low]
            high = pos > self.hi
            if high.any():
                pos[high] = 2 * self.hi - pos[high]
                vel[high] = -vel[high]

    def hp_step(self) -> tuple[list[int], list[int]]:
        """The entities whose hp changes this tick and their new values (always different)."""
        n = self.sc.entities
        k = min(self.hp_changes, n)
        if k == 0:
            return [], []
        idx: list[int] = self._hp_rng.choice(n, size=k, replace=False).tolist()
        deltas: list[int] = self._hp_rng.integers(1, 100, k).tolist()
        hps = self.hps
        new = []
        for i, d in zip(idx, deltas, strict=True):
            hps[i] = (hps[i] + d) % 100
            new.append(hps[i])
        return idx, new
