"""Regions: the pieces of a map that processes own, computed the same way on every process.

A region is a square of `region_cells` x `region_cells` cells of one map, named
``"<map>/<rx>/<ry>"`` with ``rx = floor(cx / region_cells)``; channel keys
fall into ``channel_regions`` regions named ``"#<n>"`` by a stable hash of the
key (CRC-32: the same on every process and every run, unlike `hash`). Nothing
here is stored or exchanged: every process computes the same table from the
same grid configuration.

`assign` shares the regions out among the processes that own regions: in
contiguous runs of the regions in row-major order, so that most moves stay
inside one owner's part of the map.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from synkworld._errors import ConfigError
from synkworld._grid import Grid, GridMap

__all__ = ["RegionBox", "RegionMap", "assign"]


@dataclass(frozen=True, slots=True)
class RegionBox:
    """Where a region of a map lies: the half-open box of its cells, in map units."""

    map: str
    x0: float
    y0: float
    x1: float
    y1: float
    pos_fields: tuple[str, str]


class RegionMap:
    """Which region every key belongs to."""

    def __init__(self, grid: Grid, *, region_cells: int = 8, channel_regions: int = 4) -> None:
        if region_cells < 1 or channel_regions < 1:
            raise ConfigError("region_cells and channel_regions must be at least 1")
        self.grid = grid
        self.region_cells = region_cells
        self.channel_regions = channel_regions
        self._of: dict[str, str] = {}

    def region_of(self, key: str) -> str:
        """The region of a key (a grid key, or a channel key)."""
        region = self._of.get(key)
        if region is None:
            parsed = self.grid.parse_key(key)
            if parsed is None:
                region = f"#{zlib.crc32(key.encode()) % self.channel_regions}"
            else:
                gmap, cx, cy = parsed
                r = self.region_cells
                region = f"{gmap.name}/{cx // r}/{cy // r}"
            if len(self._of) < 1 << 20:
                self._of[key] = region
        return region

    def regions(self) -> list[str]:
        """Every region of the maps' cells, then the channel regions, in a fixed order."""
        out: list[str] = []
        for gmap in self.grid.maps.values():
            out.extend(self._map_regions(gmap))
        out.extend(f"#{i}" for i in range(self.channel_regions))
        return out

    def _map_regions(self, gmap: GridMap) -> list[str]:
        r = self.region_cells
        seen = {(cx // r, cy // r) for cx, cy in gmap.cells()}
        # Row-major (y, then x): neighbours in the list are neighbours on the map.
        return [f"{gmap.name}/{rx}/{ry}" for rx, ry in sorted(seen, key=lambda p: (p[1], p[0]))]

    def box(self, region: str) -> RegionBox | None:
        """Where a map's region lies (None for a channel region)."""
        if region.startswith("#"):
            return None
        name, rx, ry = region.rsplit("/", 2)
        gmap = self.grid.map(name)
        size = gmap.cell_size * self.region_cells
        ox, oy = gmap.origin
        x0, y0 = ox + int(rx) * size, oy + int(ry) * size
        return RegionBox(name, x0, y0, x0 + size, y0 + size, gmap.pos_fields)

    def keys_in(self, region: str) -> list[str]:
        """The keys of the cells of a map's region that exist (none for a channel region)."""
        if region.startswith("#"):
            return []
        name, rx_s, ry_s = region.rsplit("/", 2)
        gmap = self.grid.map(name)
        r = self.region_cells
        rx, ry = int(rx_s), int(ry_s)
        return [
            gmap.key(cx, cy)
            for cx in range(rx * r, rx * r + r)
            for cy in range(ry * r, ry * r + r)
            if gmap.has_cell(cx, cy)
        ]


def assign(regions: Iterable[str], owners: Collection[str]) -> dict[str, str]:
    """Shares regions out among owners: contiguous runs, in the order of `regions`.

    Every process that sees the same owners computes the same assignment. An
    owner's run is ``len(regions) / len(owners)`` regions, the first ones one
    longer when it does not divide.
    """
    names = sorted(owners)
    order = list(regions)
    if not names:
        return {}
    out: dict[str, str] = {}
    n, k = len(order), len(names)
    for i, region in enumerate(order):
        out[region] = names[min(k - 1, i * k // n)]
    return out
