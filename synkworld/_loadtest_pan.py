"""Where a load-test client's viewport is: a seeded start and direction, panning and bouncing.

The viewport's position is a function of time only (no state), so that a client
can say where its viewport was at any instant, and two runs with the same seed
pan the same way whatever their timing. Used by `synkworld loadtest` and by the
grid-world benchmark's load generator (bench/gridworld_loadgen.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["PanPath", "Panning", "view_phase"]


@dataclass(frozen=True, slots=True)
class PanPath:
    """Where a client's viewport starts (its lower corner) and its velocity (units per second)."""

    x0: float
    y0: float
    vx: float
    vy: float


@dataclass(frozen=True, slots=True)
class Panning:
    """Viewports of `view_w` x `view_h` panning at `speed` over `extent` (x0, y0, x1, y1)."""

    extent: tuple[float, float, float, float]
    view_w: float
    view_h: float
    speed: float
    seed: int = 1

    @property
    def span(self) -> tuple[float, float]:
        """How far the viewport's lower corner can travel on each axis (0 if it is too big)."""
        x0, y0, x1, y1 = self.extent
        return max(x1 - x0 - self.view_w, 0.0), max(y1 - y0 - self.view_h, 0.0)

    def path(self, index: int) -> PanPath:
        """Client `index`'s path: a seeded start inside the extent and a seeded direction."""
        # These draws (and their order) are the grid-world benchmark's: its
        # results, and the caches its runs compare by digest, depend on them.
        rng = np.random.default_rng([self.seed, 7, index])
        sx, sy = self.span
        x0 = self.extent[0] + float(rng.uniform(0, sx))
        y0 = self.extent[1] + float(rng.uniform(0, sy))
        a = float(rng.uniform(0, 2 * math.pi))
        return PanPath(x0, y0, math.cos(a) * self.speed, math.sin(a) * self.speed)

    def rect(self, path: PanPath, t: float) -> list[float]:
        """The viewport [x0, y0, x1, y1] `t` seconds after the start, bouncing off the edges."""
        ex, ey = self.extent[0], self.extent[1]
        sx, sy = self.span
        x = ex + _bounce(path.x0 - ex + path.vx * t, sx)
        y = ey + _bounce(path.y0 - ey + path.vy * t, sy)
        return [round(x, 1), round(y, 1), round(x + self.view_w, 1), round(y + self.view_h, 1)]


def view_phase(seed: int, index: int, interval: float) -> float:
    """When, within each interval, client `index` sends its `view` (spreads the load over time)."""
    return float(np.random.default_rng([seed, 11, index]).uniform(0, interval))


def _bounce(p: float, span: float) -> float:
    """`p` folded into [0, span] as a point bouncing between the two ends."""
    if span <= 0:
        return 0.0
    p = math.fmod(p, 2 * span)
    if p < 0:
        p += 2 * span
    return 2 * span - p if p > span else p
