"""Maps, cells and their subscription keys; the R-tree that turns a rectangle into keys.

A grid key is ``"<map>:<cx>:<cy>"`` with ``cx = floor((x - origin_x) / cell)``.
Inside the engine a cell is also named by a 64-bit *cell code* (map index, cx, cy
packed into one integer) so that numpy can compute and compare the cells of
thousands of positions at once; `Grid.key_for_code` turns a code back into a key.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from rtree import index as rtree_index

from synkworld._errors import ConfigError

__all__ = ["Grid", "GridMap", "cell_order", "is_grid_key", "key_problem", "looks_like_grid_key"]

# One spelling per cell: ASCII digits, no leading zeros, no "-0", nothing after.
# (`$` would also match before a trailing newline, and `\d` any Unicode digit,
# so that "main:0:0\n" or "main:\u0660:\u0660" would name cell (0, 0) and slip past an
# authorization hook that compares exact strings.)
_GRID_KEY = re.compile(r"([^:]+):(0|-?[1-9][0-9]*):(0|-?[1-9][0-9]*)", re.ASCII)
# What a reader could take for a grid key: any digits, signs, spaces around them.
_GRID_LIKE = re.compile(r"[^:]+:\s*[-+]?\d+\s*:\s*[-+]?\d+\s*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAP_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

# A cell code packs (map index, cx, cy) as map << 48 | (cx + BIAS) << 24 | (cy + BIAS).
_AXIS_BITS = 24
_BIAS = 1 << (_AXIS_BITS - 1)
_AXIS_MASK = (1 << _AXIS_BITS) - 1
_MAX_MAPS = 1 << 14
CELL_INDEX_LIMIT = _BIAS - 1
"""Cells further than this many cells from the origin on either axis are refused."""


def is_grid_key(key: str) -> bool:
    """Tells whether a key is a grid key, ``<map>:<cx>:<cy>``, spelt canonically."""
    return _GRID_KEY.fullmatch(key) is not None


def looks_like_grid_key(key: str) -> bool:
    """Tells whether a key could be read as a grid key, canonical or not ("main:00:0")."""
    return _GRID_LIKE.fullmatch(key) is not None


def key_problem(key: str) -> str | None:
    """Why a key cannot be used as a subscription key, or None if it can.

    A key has no control characters, and a key that reads as a grid key must be
    its one canonical spelling: ASCII digits, no leading zeros, no ``-0``.
    """
    if _CONTROL.search(key):
        return f"key {key!r} contains a control character"
    if _GRID_LIKE.fullmatch(key) and not _GRID_KEY.fullmatch(key):
        return f"key {key!r} is not a grid key spelt canonically (as in 'main:-3:10')"
    return None


_RANGE_CACHE_SIZE = 4096
# The cached ranges hold at most this many keys in all (2 MiB of pointers): a
# client sending huge rectangles must not make the cache hold every cell 4,096 times.
_RANGE_CACHE_KEYS = 1 << 18


@dataclass(frozen=True, slots=True)
class _CellRange:
    cx0: int
    cy0: int
    cx1: int
    cy1: int


class GridMap:
    """One named map cut into square cells; knows which cells exist.

    By default every cell that overlaps `bounds` exists, except `holes`. A map
    made with ``fill=False`` starts empty, and `add_cell` grows any map at run
    time.
    """

    def __init__(
        self,
        name: str = "main",
        *,
        cell_size: float,
        bounds: tuple[float, float, float, float] | None = None,
        origin: tuple[float, float] = (0.0, 0.0),
        pos_fields: tuple[str, str] = ("x", "y"),
        precision: int = 1,
        holes: Iterable[tuple[int, int]] = (),
        fill: bool = True,
    ) -> None:
        if not _MAP_NAME.match(name):
            raise ConfigError(f"map name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
        if not (math.isfinite(cell_size) and cell_size > 0):
            raise ConfigError(f"map {name!r}: cell_size must be a positive number")
        if not all(math.isfinite(v) for v in origin):
            raise ConfigError(f"map {name!r}: origin must be finite")
        if len(pos_fields) != 2 or pos_fields[0] == pos_fields[1]:
            raise ConfigError(f"map {name!r}: pos_fields must name two different fields")
        if not 0 <= precision <= 9:
            raise ConfigError(f"map {name!r}: precision must be 0..9 decimals")
        if bounds is not None:
            x0, y0, x1, y1 = bounds
            if not all(math.isfinite(v) for v in bounds) or x1 <= x0 or y1 <= y0:
                raise ConfigError(f"map {name!r}: bounds must be finite with x0 < x1, y0 < y1")
        self.name = name
        self.cell_size = float(cell_size)
        self.origin = (float(origin[0]), float(origin[1]))
        self.pos_fields = (pos_fields[0], pos_fields[1])
        self.precision = precision
        self.index = -1  # set by the Grid that holds the map
        self._bounds = bounds
        self._cells: dict[tuple[int, int], int] = {}
        self._cell_keys: list[str] = []
        self._key_set: set[str] = set()
        # Clients pan over the same cell ranges again and again: a range's keys
        # are kept until a cell is added (bounded, oldest dropped first).
        self._range_keys: dict[tuple[int, int, int, int], list[str]] = {}
        self._range_cached = 0
        # The smallest range of cell indices that holds every cell.
        self._span: tuple[int, int, int, int] | None = None
        self._tree = rtree_index.Index(interleaved=True)
        if bounds is not None and fill:
            holes_set = {(int(cx), int(cy)) for cx, cy in holes}
            r = self._range_of_rect(*bounds, margin=0, closed=False)
            self._check_range(r)
            for cx in range(r.cx0, r.cx1 + 1):
                for cy in range(r.cy0, r.cy1 + 1):
                    if (cx, cy) not in holes_set:
                        self.add_cell(cx, cy)

    # -- cells ---------------------------------------------------------------

    def add_cell(self, cx: int, cy: int) -> bool:
        """Makes cell (cx, cy) exist; returns False if it already did."""
        cx, cy = int(cx), int(cy)
        if (cx, cy) in self._cells:
            return False
        if abs(cx) > CELL_INDEX_LIMIT or abs(cy) > CELL_INDEX_LIMIT:
            raise ConfigError(f"map {self.name!r}: cell ({cx}, {cy}) is too far from the origin")
        rid = len(self._cells)
        self._cells[(cx, cy)] = rid
        key = self.key(cx, cy)
        self._cell_keys.append(key)
        self._key_set.add(key)
        self._range_keys.clear()
        self._range_cached = 0
        span = self._span
        self._span = (
            (cx, cy, cx, cy)
            if span is None
            else (min(span[0], cx), min(span[1], cy), max(span[2], cx), max(span[3], cy))
        )
        # The tree lives in cell-index space, one point per cell, so that a query
        # for a range of cell indices is exact: no float edge cases at borders.
        self._tree.insert(rid, (cx, cy, cx, cy))
        return True

    def has_cell(self, cx: int, cy: int) -> bool:
        """Tells whether cell (cx, cy) exists."""
        return (cx, cy) in self._cells

    def cells(self) -> list[tuple[int, int]]:
        """The (cx, cy) of every cell, in the order they were made."""
        return list(self._cells)

    @property
    def cell_count(self) -> int:
        """How many cells exist."""
        return len(self._cells)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """The declared bounds, grown to cover every cell added since."""
        if not self._cells:
            return self._bounds if self._bounds is not None else (0.0, 0.0, 0.0, 0.0)
        x0, y0, x1, y1 = self._tree.bounds
        c = self.cell_size
        ox, oy = self.origin
        cells_box = (ox + x0 * c, oy + y0 * c, ox + (x1 + 1) * c, oy + (y1 + 1) * c)
        if self._bounds is None:
            return cells_box
        b = self._bounds
        return (
            min(b[0], cells_box[0]),
            min(b[1], cells_box[1]),
            max(b[2], cells_box[2]),
            max(b[3], cells_box[3]),
        )

    # -- positions -----------------------------------------------------------

    def cell_of(self, x: float, y: float) -> tuple[int, int]:
        """The (cx, cy) of the cell holding point (x, y)."""
        c = self.cell_size
        return (
            math.floor((x - self.origin[0]) / c),
            math.floor((y - self.origin[1]) / c),
        )

    def key_of(self, x: float, y: float) -> str:
        """The grid key of the cell holding point (x, y)."""
        cx, cy = self.cell_of(x, y)
        return self.key(cx, cy)

    def key(self, cx: int, cy: int) -> str:
        """The grid key of cell (cx, cy)."""
        # Interned: the frame builder looks every held key up in the tick's
        # batches, and a lookup that finds the very same string object skips
        # comparing the characters.
        return sys.intern(f"{self.name}:{cx}:{cy}")

    def cells_of(
        self, xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """The cell indices of many points at once (vectorised `cell_of`)."""
        c = self.cell_size
        cx = np.floor((np.asarray(xs, dtype=np.float64) - self.origin[0]) / c).astype(np.int64)
        cy = np.floor((np.asarray(ys, dtype=np.float64) - self.origin[1]) / c).astype(np.int64)
        return cx, cy

    def keys_of(self, xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64]) -> list[str]:
        """The grid keys of many points at once."""
        cx, cy = self.cells_of(xs, ys)
        name = self.name
        return [f"{name}:{a}:{b}" for a, b in zip(cx.tolist(), cy.tolist(), strict=True)]

    def round_pos(self, value: float) -> float:
        """Rounds a coordinate to the map's wire precision, exactly as numpy's round does."""
        scale = _SCALES[self.precision]
        return round(value * scale) / scale

    # -- rectangles ----------------------------------------------------------

    def keys_in_rect(self, rect: tuple[float, float, float, float], margin: int = 0) -> list[str]:
        """The keys of every existing cell that meets `rect` grown by `margin` cells.

        Cells that do not exist (outside the map, holes) are never returned,
        however large the rectangle.
        """
        x0, y0, x1, y1 = rect
        if not all(math.isfinite(v) for v in rect):
            raise ValueError("rectangle coordinates must be finite")
        if x1 < x0 or y1 < y0:
            raise ValueError("rectangle must have x0 <= x1 and y0 <= y1")
        if margin < 0:
            raise ValueError("margin must not be negative")
        r = self._range_of_rect(x0, y0, x1, y1, margin=margin, closed=True)
        span = self._span
        if span is None:
            return []
        # Clipped to the cells that exist, so that all the rectangles that cover
        # the same cells share one entry of the cache.
        clipped = (
            max(r.cx0, span[0]),
            max(r.cy0, span[1]),
            min(r.cx1, span[2]),
            min(r.cy1, span[3]),
        )
        if clipped[0] > clipped[2] or clipped[1] > clipped[3]:
            return []
        cache = self._range_keys
        cached = cache.get(clipped)
        if cached is not None:
            return list(cached)
        keys = self._cell_keys
        found = [keys[i] for i in self._tree.intersection(clipped)]
        while cache and (
            len(cache) >= _RANGE_CACHE_SIZE or self._range_cached + len(found) > _RANGE_CACHE_KEYS
        ):
            self._range_cached -= len(cache.pop(next(iter(cache))))
        if len(found) <= _RANGE_CACHE_KEYS:
            cache[clipped] = found
            self._range_cached += len(found)
        return list(found)

    def is_cell_key(self, key: str) -> bool:
        """Tells whether `key` is the key of an existing cell of this map."""
        return key in self._key_set

    def _range_of_rect(
        self, x0: float, y0: float, x1: float, y1: float, *, margin: int, closed: bool
    ) -> _CellRange:
        c = self.cell_size
        ox, oy = self.origin
        lo_x = math.floor((x0 - ox) / c) - margin
        lo_y = math.floor((y0 - oy) / c) - margin
        if closed:
            hi_x = math.floor((x1 - ox) / c) + margin
            hi_y = math.floor((y1 - oy) / c) + margin
        else:
            # Bounds are half-open: a map of width 1000 with cells of 250 has 4 columns.
            hi_x = math.ceil((x1 - ox) / c) - 1
            hi_y = math.ceil((y1 - oy) / c) - 1
        return _CellRange(lo_x, lo_y, hi_x, hi_y)

    def _check_range(self, r: _CellRange) -> None:
        n = (r.cx1 - r.cx0 + 1) * (r.cy1 - r.cy0 + 1)
        if n > 4_000_000:
            raise ConfigError(f"map {self.name!r}: {n} cells is more than a map may have")

    def describe(self) -> dict[str, Any]:
        """The map as the `hello` message describes it."""
        return {
            "cell": _num(self.cell_size),
            "origin": [_num(self.origin[0]), _num(self.origin[1])],
            "bounds": [_num(v) for v in self.bounds],
            "pos": list(self.pos_fields),
            "prec": self.precision,
        }

    def __repr__(self) -> str:
        return f"GridMap({self.name!r}, cell_size={self.cell_size}, cells={len(self._cells)})"


_SCALES = [10.0**p for p in range(10)]


def _num(v: float) -> int | float:
    return int(v) if float(v).is_integer() else v


class Grid:
    """The maps of one world, and the cell codes that name their cells."""

    def __init__(self, maps: Iterable[GridMap] | GridMap) -> None:
        maps_list = [maps] if isinstance(maps, GridMap) else list(maps)
        if not maps_list:
            raise ConfigError("a grid needs at least one map")
        if len(maps_list) > _MAX_MAPS:
            raise ConfigError(f"a grid holds at most {_MAX_MAPS} maps")
        self._maps: dict[str, GridMap] = {}
        self._by_index: list[GridMap] = []
        for m in maps_list:
            if m.name in self._maps:
                raise ConfigError(f"two maps are named {m.name!r}")
            if m.index != -1:
                raise ConfigError(f"map {m.name!r} already belongs to another grid")
            m.index = len(self._by_index)
            self._maps[m.name] = m
            self._by_index.append(m)
        self._keys: dict[int, str] = {}

    @property
    def maps(self) -> Mapping[str, GridMap]:
        """The maps by name."""
        return self._maps

    @property
    def default_map(self) -> GridMap:
        """The first map: where objects go when no map is named."""
        return self._by_index[0]

    def map(self, name: str) -> GridMap:
        """The map with that name; KeyError if there is none."""
        return self._maps[name]

    def map_at(self, index: int) -> GridMap:
        """The map with that index."""
        return self._by_index[index]

    def parse_key(self, key: str) -> tuple[GridMap, int, int] | None:
        """The (map, cx, cy) of a grid key of one of these maps, or None."""
        m = _GRID_KEY.fullmatch(key)
        if m is None:
            return None
        gmap = self._maps.get(m.group(1))
        if gmap is None:
            return None
        return gmap, int(m.group(2)), int(m.group(3))

    # -- cell codes ------------------------------------------------------------

    @staticmethod
    def code(map_index: int, cx: int, cy: int) -> int:
        """The cell code of (map, cx, cy)."""
        return (map_index << 48) | ((cx + _BIAS) << _AXIS_BITS) | (cy + _BIAS)

    def key_for_code(self, code: int) -> str:
        """The grid key named by a cell code."""
        key = self._keys.get(code)
        if key is None:
            gmap = self._by_index[code >> 48]
            cx = ((code >> _AXIS_BITS) & _AXIS_MASK) - _BIAS
            cy = (code & _AXIS_MASK) - _BIAS
            key = gmap.key(cx, cy)
            self._keys[code] = key
        return key

    def keys_for_codes(self, codes: list[int]) -> list[str]:
        """`key_for_code` of many codes: one bulk lookup when every code was seen before."""
        known = list(map(self._keys.get, codes))
        if None not in known:
            return known  # type: ignore[return-value]
        key_for_code = self.key_for_code
        return [k if k is not None else key_for_code(c) for k, c in zip(known, codes, strict=True)]

    def codes_of(
        self,
        map_index: npt.NDArray[np.int64],
        xs: npt.NDArray[np.float64],
        ys: npt.NDArray[np.float64],
    ) -> npt.NDArray[np.int64]:
        """The cell codes of many points, each on its own map (vectorised)."""
        if len(self._by_index) == 1:
            gmap = self._by_index[0]
            cx, cy = gmap.cells_of(xs, ys)
            return _pack(np.zeros_like(cx), cx, cy)
        cell = np.array([m.cell_size for m in self._by_index])[map_index]
        ox = np.array([m.origin[0] for m in self._by_index])[map_index]
        oy = np.array([m.origin[1] for m in self._by_index])[map_index]
        cx = np.floor((xs - ox) / cell).astype(np.int64)
        cy = np.floor((ys - oy) / cell).astype(np.int64)
        return _pack(map_index.astype(np.int64), cx, cy)

    def code_of(self, gmap: GridMap, x: float, y: float) -> int:
        """The cell code of one point on one map."""
        cx, cy = gmap.cell_of(x, y)
        return self.code(gmap.index, cx, cy)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Every map as the `hello` message describes it."""
        return {name: m.describe() for name, m in self._maps.items()}


def _pack(
    m: npt.NDArray[np.int64], cx: npt.NDArray[np.int64], cy: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    out: npt.NDArray[np.int64] = (m << 48) | ((cx + _BIAS) << _AXIS_BITS) | (cy + _BIAS)
    return out


def cell_order(codes: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
    """The stable order that sorts cell codes.

    Codes of one map whose cells span fewer than 65,536 (cx, cy) pairs are
    first made dense 16-bit numbers, which numpy sorts by radix, some ten
    times faster than 64-bit codes.
    """
    if len(codes) > 1:
        lo, hi = int(codes.min()), int(codes.max())
        if lo >> 48 == hi >> 48:
            cx = (codes >> _AXIS_BITS) & _AXIS_MASK
            cy = codes & _AXIS_MASK
            cx0, cy0 = int(cx.min()), int(cy.min())
            span_y = int(cy.max()) - cy0 + 1
            if (int(cx.max()) - cx0 + 1) * span_y <= 1 << 16:
                dense = ((cx - cx0) * span_y + (cy - cy0)).astype(np.uint16)
                return np.argsort(dense, kind="stable")
    return np.argsort(codes, kind="stable")
