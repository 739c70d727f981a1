"""Protocol v2's slots: the small number each object holds inside its cell.

Every holder of a cell must agree on its slots without a table per client, so
they are the world's: an object takes the smallest free slot of its key when it
enters the key (created, loaded or moved there) and gives it back when it
leaves. The world keeps them whichever protocol its clients speak, so that a
version 2 client that subscribes later gets slots that the next batches agree
with.
"""

from __future__ import annotations

import heapq

__all__ = ["CellSlots"]


class _Pool:
    __slots__ = ("free", "next")

    def __init__(self) -> None:
        self.next = 0
        self.free: list[int] = []


class CellSlots:
    """The slots of every key: who holds how many, and which are free."""

    __slots__ = ("_pools", "counts")

    def __init__(self) -> None:
        self._pools: dict[str, _Pool] = {}
        # How many slots of each key are taken (a plain dict: read in bulk with `map`).
        self.counts: dict[str, int] = {}

    def take(self, key: str) -> int:
        """The smallest free slot of `key`, now taken."""
        pool = self._pools.get(key)
        counts = self.counts
        if pool is None:
            pool = self._pools[key] = _Pool()
            counts[key] = 1
        else:
            counts[key] += 1
        if pool.free:
            return heapq.heappop(pool.free)
        slot = pool.next
        pool.next += 1
        return slot

    def give(self, key: str, slot: int) -> None:
        """Gives `slot` of `key` back."""
        pool = self._pools[key]
        left = self.counts[key] - 1
        if left == 0:
            del self._pools[key]  # an empty cell starts again from slot 0
            del self.counts[key]
            return
        self.counts[key] = left
        heapq.heappush(pool.free, slot)

    def in_use(self, key: str) -> int:
        """How many slots of `key` are taken."""
        return self.counts.get(key, 0)
