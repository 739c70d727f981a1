"""The world's per-object numpy columns: positions, last-tick positions, cells, versions.

Every object in a world owns one slot, stable for its lifetime. Keeping
positions in arrays lets the tick find what moved and which cells were crossed
for all objects at once, however the positions were set.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import orjson

from synkworld._errors import FieldError
from synkworld._grid import CELL_INDEX_LIMIT

__all__ = ["UNPUBLISHED", "Columns"]

UNPUBLISHED = -1
"""The cell code of a slot whose object has not been through a tick yet (or has no position)."""


class Columns:
    """Growable parallel arrays, one row per slot."""

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = 0
        self.pos: list[npt.NDArray[np.float64]] = [np.empty(0), np.empty(0)]
        self.prev: list[npt.NDArray[np.float64]] = [np.empty(0), np.empty(0)]
        self.code = np.empty(0, dtype=np.int64)
        self.ver = np.empty(0, dtype=np.int64)
        self.map_index = np.empty(0, dtype=np.int64)
        self.scale = np.empty(0, dtype=np.float64)
        self.limit = np.empty(0, dtype=np.float64)
        # True for live objects with a position that have been through a tick.
        self.tracked = np.empty(0, dtype=bool)
        self.ids = np.empty(0, dtype=object)
        # Each id as JSON text, NUL-padded to the longest: the motion encoder's rows.
        self.id_json = np.zeros(0, dtype="S8")
        self.id_len = np.empty(0, dtype=np.int64)
        # The slot each object holds in its key (protocol v2), -1 while it is in none.
        self.cell_slot = np.empty(0, dtype=np.int64)
        self._free: list[int] = []
        self._top = 0
        self._grow(max(16, capacity))

    @property
    def top(self) -> int:
        """One past the highest slot ever used: the length that array scans need."""
        return self._top

    def alloc(self, obj_id: str) -> int:
        """Takes a free slot for an object and returns it."""
        if self._free:
            slot = self._free.pop()
        else:
            if self._top == self.capacity:
                self._grow(self.capacity * 2)
            slot = self._top
            self._top += 1
        self.ids[slot] = obj_id
        text = orjson.dumps(obj_id)
        if len(text) > self.id_json.dtype.itemsize:
            self.id_json = self.id_json.astype(f"S{len(text)}")
        self.id_json[slot] = text
        self.id_len[slot] = len(text)
        self.code[slot] = UNPUBLISHED
        self.cell_slot[slot] = -1
        self.ver[slot] = 0
        self.tracked[slot] = False
        self.pos[0][slot] = self.pos[1][slot] = np.nan
        self.prev[0][slot] = self.prev[1][slot] = np.nan
        return slot

    def free(self, slot: int) -> None:
        """Gives a slot back."""
        self.ids[slot] = None
        self.id_json[slot] = b""
        self.id_len[slot] = 0
        self.tracked[slot] = False
        self.code[slot] = UNPUBLISHED
        self._free.append(slot)

    def check_position(self, slot: int, value: float) -> None:
        """Refuses a coordinate too far from its map's origin for a cell code."""
        if abs(value) > self.limit[slot]:
            raise FieldError(f"position {value} is outside the range a map can index")

    def _grow(self, capacity: int) -> None:
        def grown(a: npt.NDArray[np.generic], fill: object) -> npt.NDArray[np.generic]:
            out = np.full(capacity, fill, dtype=a.dtype)
            out[: len(a)] = a
            return out

        self.pos = [grown(p, np.nan) for p in self.pos]  # type: ignore[misc]
        self.prev = [grown(p, np.nan) for p in self.prev]  # type: ignore[misc]
        self.code = grown(self.code, UNPUBLISHED)  # type: ignore[assignment]
        self.ver = grown(self.ver, 0)  # type: ignore[assignment]
        self.map_index = grown(self.map_index, 0)  # type: ignore[assignment]
        self.scale = grown(self.scale, 1.0)  # type: ignore[assignment]
        self.limit = grown(self.limit, 0.0)  # type: ignore[assignment]
        self.tracked = grown(self.tracked, False)
        self.ids = grown(self.ids, None)
        self.id_json = grown(self.id_json, b"")
        self.id_len = grown(self.id_len, 0)  # type: ignore[assignment]
        self.cell_slot = grown(self.cell_slot, -1)  # type: ignore[assignment]
        self.capacity = capacity


def position_limit(cell_size: float, origin: tuple[float, float]) -> float:
    """The largest |coordinate| whose cell index still fits a cell code."""
    return CELL_INDEX_LIMIT * cell_size - max(abs(origin[0]), abs(origin[1]))
