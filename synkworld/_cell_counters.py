"""Per-key traffic counted in the tick: the bytes each key's batches go out as, and its holders.

The tick loop calls `CellCounters.count` with each delivered tick's batches
once the frames are built, and then `CellCounters.track` with the sessions: a
batch counts for the sessions that held its key before this tick's frame.
A key's bytes out in a tick are its batch's length times the sessions holding
it, which is what the frames carry: every holder's frame joins the same batch
bytes. The cost is a few numpy operations over the held keys per tick, and
Python work only for the sessions whose held keys changed; nothing per frame.

What it leaves out, and why: the snapshots that start a subscription and
resyncs (their bytes are counted by the loop, not per key), and the lagging
sessions' missed frames (a lagging holder is counted as if it got the batch:
telling them apart would cost a check per session and key). The bytes are
those of the frames before permessage-deflate.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import compress, repeat
from operator import attrgetter, is_not
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from synkworld._batch import TickBatches
from synkworld._errors import ConfigError

if TYPE_CHECKING:
    from synkworld._sessions import Session

__all__ = ["CellCounters", "CellFigures", "CellStatistics"]

_MARKS = 10  # snapshots of the running totals per window: the window slides by a tenth
_COMPACT_MIN_SLOTS = 256
_held_of = attrgetter("held")


@dataclass(frozen=True, slots=True)
class CellFigures:
    """One key's traffic: bytes per second its batches went out as, and its subscribers."""

    key: str
    bytes_per_s: float
    subscribers: int


@dataclass(frozen=True, slots=True)
class CellStatistics:
    """The hottest keys now, by bytes per second and by subscribers (top k of each)."""

    window_s: float = 0.0
    """The seconds the rates are measured over (up to the counters' window)."""
    keys_held: int = 0
    """Keys at least one session holds."""
    subscriptions: int = 0
    """Held keys summed over the sessions (a key held by three sessions counts three)."""
    by_bytes: tuple[CellFigures, ...] = ()
    by_subscribers: tuple[CellFigures, ...] = ()


class CellCounters:
    """Bytes out and subscribers per key, kept by the tick at the cost of one pass per tick.

    Keys are given slots in arrays when a session first holds them; a key
    nobody holds any longer keeps its slot until enough slots are empty to
    compact. "Per second" is a sliding window: the running totals are copied
    every `window_s / 10` seconds, and a rate is the growth since the oldest copy.
    """

    def __init__(self, *, top_k: int = 10, window_s: float = 10.0) -> None:
        if top_k < 1:
            raise ConfigError("top_k must be at least 1")
        if not window_s > 0:
            raise ConfigError("window_s must be positive")
        self.top_k = top_k
        self.window_s = float(window_s)
        self._mark_every_s = self.window_s / _MARKS
        self._slot: dict[str, int] = {}
        self._keys: list[str] = []
        self._holders: npt.NDArray[np.int64] = np.zeros(64, np.int64)
        self._bytes: npt.NDArray[np.int64] = np.zeros(64, np.int64)
        # Each session's held set as last counted. Sessions replace their held
        # set when it changes (never mutate it), so an identity check finds the
        # few that changed.
        self._seen: dict[str, set[str]] = {}
        self._last_sessions: list[Session] = []
        self._last_helds: list[set[str]] = []
        self._marks: deque[tuple[float, npt.NDArray[np.int64]]] = deque(maxlen=_MARKS + 1)
        self._last_count_at: float | None = None

    # -- in the tick -------------------------------------------------------------------

    def count(self, batches: Mapping[str, bytes] | TickBatches, now: float) -> None:
        """Adds one tick's batches, each times the sessions holding its key."""
        n = len(self._keys)
        data = batches.data if isinstance(batches, TickBatches) else batches
        if n:
            sizes = np.fromiter(
                map(len, map(data.get, self._keys, repeat(b""))), dtype=np.int64, count=n
            )
            self._bytes[:n] += sizes * self._holders[:n]
        self._last_count_at = now
        marks = self._marks
        if not marks or now - marks[-1][0] >= self._mark_every_s:
            marks.append((now, self._bytes[:n].copy()))

    def track(self, sessions: Iterable[Session]) -> None:
        """Takes in the held keys of sessions whose subscription changed since the last call."""
        current = list(sessions)
        helds = list(map(_held_of, current))
        if current == self._last_sessions:
            # The same sessions in the same order, the common case: the few whose
            # held set is another object are found without a Python step per session.
            changed = list(compress(current, map(is_not, helds, self._last_helds)))
        else:
            changed = current
        self._last_sessions, self._last_helds = current, helds
        seen = self._seen
        added: list[str] = []
        removed: list[str] = []
        for s in changed:
            held = s.held
            before = seen.get(s.sid)
            if held is before:
                continue
            seen[s.sid] = held
            if before is None:
                added.extend(held)
            else:
                added.extend(held - before)
                removed.extend(before - held)
        if added or removed:
            self._apply(added, removed)

    def forget(self, sid: str) -> None:
        """Stops counting a session (detached): its held keys lose a subscriber."""
        before = self._seen.pop(sid, None)
        self._last_sessions = []  # the next `track` looks at every session again
        if before:
            self._apply([], list(before))

    def _apply(self, added: list[str], removed: list[str]) -> None:
        slot = self._slot
        for key in set(added).difference(slot):
            self._new_slot(key)
        n = len(self._keys)
        get = slot.__getitem__
        change = np.bincount(np.fromiter(map(get, added), np.intp, len(added)), minlength=n)
        if removed:
            change -= np.bincount(
                np.fromiter(map(get, removed), np.intp, len(removed)), minlength=n
            )
        holders = self._holders[:n]
        holders += change
        if removed and n - int(np.count_nonzero(holders)) > max(_COMPACT_MIN_SLOTS, n // 2):
            self._compact()

    def _new_slot(self, key: str) -> None:
        i = len(self._keys)
        if i == len(self._holders):
            self._holders = np.concatenate([self._holders, np.zeros(i, np.int64)])
            self._bytes = np.concatenate([self._bytes, np.zeros(i, np.int64)])
        self._slot[key] = i
        self._keys.append(key)

    def _compact(self) -> None:
        """Drops the slots of keys nobody holds (their rates are cooling down anyway)."""
        n = len(self._keys)
        keep = np.flatnonzero(self._holders[:n])
        size = max(64, 2 * len(keep))
        holders = np.zeros(size, np.int64)
        holders[: len(keep)] = self._holders[keep]
        totals = np.zeros(size, np.int64)
        totals[: len(keep)] = self._bytes[keep]
        self._holders, self._bytes = holders, totals
        self._keys = [self._keys[i] for i in keep]
        self._slot = {k: i for i, k in enumerate(self._keys)}
        self._marks = deque(
            ((t, _pad(m, n)[keep]) for t, m in self._marks), maxlen=self._marks.maxlen
        )

    # -- reading ---------------------------------------------------------------------------

    def statistics(self, top_k: int | None = None) -> CellStatistics:
        """The `top_k` (default: the counters' own) hottest keys by bytes/s and by subscribers."""
        k = self.top_k if top_k is None else top_k
        n = len(self._keys)
        holders = self._holders[:n]
        rates, window = self._rates(n)
        keys = self._keys

        def top(values: npt.NDArray[np.float64] | npt.NDArray[np.int64]) -> list[int]:
            candidates = np.flatnonzero(values > 0)
            if len(candidates) > k:
                # The k-th largest value and everything above it: ties at the cut are
                # settled by key below, so that the answer does not depend on slots.
                cut = np.partition(values[candidates], len(candidates) - k)[len(candidates) - k]
                candidates = candidates[values[candidates] >= cut]
            best = heapq.nsmallest(k, candidates.tolist(), key=lambda i: (-values[i], keys[i]))
            return best

        def figures(slots: list[int]) -> tuple[CellFigures, ...]:
            return tuple(CellFigures(keys[i], float(rates[i]), int(holders[i])) for i in slots)

        return CellStatistics(
            window_s=window,
            keys_held=int(np.count_nonzero(holders)),
            subscriptions=int(holders.sum()),
            by_bytes=figures(top(rates)),
            by_subscribers=figures(top(holders)),
        )

    def figures(self, key: str) -> CellFigures:
        """One key's figures now (zero for a key nobody holds)."""
        i = self._slot.get(key)
        if i is None:
            return CellFigures(key, 0.0, 0)
        rates, _ = self._rates(len(self._keys))
        return CellFigures(key, float(rates[i]), int(self._holders[i]))

    def _rates(self, n: int) -> tuple[npt.NDArray[np.float64], float]:
        """Bytes per second per slot since the oldest mark, and the seconds that covers."""
        if not self._marks or self._last_count_at is None:
            return np.zeros(n), 0.0
        since, then = self._marks[0]
        elapsed = self._last_count_at - since
        if not elapsed > 0:
            return np.zeros(n), 0.0
        return (self._bytes[:n] - _pad(then, n)) / elapsed, elapsed


def _pad(totals: npt.NDArray[np.int64], n: int) -> npt.NDArray[np.int64]:
    """Running totals copied when there were fewer slots: the newer slots were at zero then."""
    if len(totals) >= n:
        return totals[:n]
    out = np.zeros(n, np.int64)
    out[: len(totals)] = totals
    return out
