"""One connected client, without the network: its subscription and its outgoing queue.

A session keeps two key sets. `held` is what the client holds as of the last
frame it was sent; `wanted` is what it asked for since. The tick moves `held`
to `wanted` after the tick's batches (docs/protocol.md's order of application)
and says which keys were added and removed; a wanted key whose snapshot is not
available yet (owned by another process) is added by a later frame. The
outgoing queue is bounded in frames and bytes; a frame that does not fit is
dropped and the session is marked lagging, to be resynced once the queue has
drained.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from synkworld._errors import BadMessageError, TooManyKeysError
from synkworld._grid import Grid, is_grid_key
from synkworld._limits import Limits

__all__ = ["Session", "SessionStatistics", "count_holders"]


@dataclass(frozen=True, slots=True)
class SessionStatistics:
    """A snapshot of one session's state."""

    sid: str
    held_keys: int
    queued_frames: int
    queued_bytes: int
    frames_sent: int
    bytes_sent: int
    frames_dropped: int
    resyncs: int
    lagging: bool


_DEFAULT_LIMITS = Limits()


class Session:
    """A subscriber: its keys, its pending subscription change and its bounded queue."""

    def __init__(
        self,
        sid: str,
        grid: Grid,
        *,
        identity: Any = None,
        limits: Limits = _DEFAULT_LIMITS,
        on_queued: Callable[[], None] | None = None,
        wire_version: int = 1,
    ) -> None:
        self.sid = sid
        # The protocol version of the connection (docs/protocol.md, docs/protocol-v2.md).
        self.wire_version = wire_version
        # Protocol v2: how many type definitions the client has (hello's, and any since).
        self.types_known = 0
        # Counts of the sessions holding each key, shared by the sessions of a tick
        # loop that speak v2 (`TickLoop.attach`): the keys whose v2 batches to encode.
        self.holders: dict[str, int] | None = None
        self.grid = grid
        self.identity = identity
        self.limits = limits
        self.max_keys = limits.max_keys
        self.max_margin = limits.max_margin
        self.send_queue_max_frames = limits.send_queue_max_frames
        self.send_queue_max_bytes = limits.send_queue_max_bytes
        self.on_queued = on_queued
        # Set by the transport: writes a frame at once if the socket can take it.
        self.direct_write: Callable[[bytes], bool] | None = None
        self.held: set[str] = set()
        self._held_in_order: list[str] | None = []
        self._wanted: set[str] = set()
        # True when `wanted` may differ from `held`: a subscription change to take.
        self.wanted_changed = False
        self.lagging_since: float | None = None
        # Set when what the client holds may be out of date through no fault of
        # its own (a cell owned by a process that fell behind): one resync,
        # as soon as every held key's snapshot is here; no tick frames before.
        self.resync_owed = False
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self.frames_sent = 0
        self.bytes_sent = 0
        self.frames_dropped = 0
        self.resyncs = 0
        self.closed = False

    # -- subscription ------------------------------------------------------------

    def view(self, map_name: str, rect: tuple[float, float, float, float], margin: int = 1) -> None:
        """Replaces the wanted grid keys by the cells that `rect` grown by `margin` covers."""
        self.wanted = self.plan_view(map_name, rect, margin)

    def sub(self, add: Iterable[str] = (), rem: Iterable[str] = ()) -> None:
        """Adds and removes wanted keys explicitly."""
        self.wanted = self.plan_sub(add, rem)

    def plan_view(
        self, map_name: str, rect: tuple[float, float, float, float], margin: int = 1
    ) -> set[str]:
        """The wanted keys a `view` would leave, checked, without changing anything."""
        gmap = self.grid.maps.get(map_name)
        if gmap is None:
            raise BadMessageError(f"view: unknown map {map_name!r}")
        # Keep the channel keys; a key of this map's cells is checked by a set
        # lookup before the grid-key pattern.
        wanted = {k for k in self.wanted if not gmap.is_cell_key(k) and not is_grid_key(k)}
        wanted.update(gmap.keys_in_rect(rect, min(margin, self.max_margin)))
        return self._checked(wanted)

    def plan_sub(self, add: Iterable[str] = (), rem: Iterable[str] = ()) -> set[str]:
        """The wanted keys a `sub` would leave, checked, without changing anything."""
        # Interned, like the keys the grid makes, so that frame building finds
        # them in the tick's batches by identity.
        add_set, rem_set = set(map(sys.intern, add)), set(rem)
        both = add_set & rem_set
        if both:
            raise BadMessageError(f"sub: key {sorted(both)[0]!r} is both added and removed")
        for k in add_set:
            if is_grid_key(k) and self.grid.parse_key(k) is None:
                raise BadMessageError(f"sub: {k!r} is a grid key of no map of this world")
        return self._checked((self.wanted | add_set) - rem_set)

    def _checked(self, wanted: set[str]) -> set[str]:
        if len(wanted) > self.max_keys:
            raise TooManyKeysError(
                f"the subscription would hold {len(wanted)} keys; the limit is {self.max_keys}"
            )
        return wanted

    @property
    def wanted(self) -> set[str]:
        """The keys the client asked for since its last frame (held from the next frame on)."""
        return self._wanted

    @wanted.setter
    def wanted(self, keys: set[str]) -> None:
        self._wanted = keys
        self.wanted_changed = True

    def subscription_change(self) -> tuple[list[str], list[str]]:
        """The keys that would make `held` equal `wanted`: (added, removed), sorted.

        Changes nothing; cheap when the subscription did not change since.
        """
        if not self.wanted_changed:
            return [], []  # the common case, checked without comparing two sets
        wanted, held = self._wanted, self.held
        if wanted == held:
            self.wanted_changed = False
            return [], []
        return sorted(wanted - held), sorted(held - wanted)

    def take_subscription_change(
        self, added: list[str] | None = None, removed: list[str] | None = None
    ) -> tuple[list[str], list[str]]:
        """Makes keys held: all of `subscription_change()`, or the `added` and `removed` given.

        The server chooses when a wanted key becomes held (protocol v1): a key
        whose snapshot is not here yet stays wanted, and is added by a later
        frame. Returns (added, removed).
        """
        if added is None or removed is None:
            added, removed = self.subscription_change()
        if not added and not removed:
            return [], []
        before = self.held
        held = self.held = (before - set(removed)) | set(added)
        if self.holders is not None:
            count_holders(self.holders, came=held - before, went=before - held)
        self._held_in_order = None
        self.wanted_changed = held != self._wanted
        return added, removed

    def held_in_order(self) -> list[str]:
        """The held keys sorted: the same order on every process (a set's is not)."""
        keys = self._held_in_order
        if keys is None:
            keys = self._held_in_order = sorted(self.held)
        return keys

    # -- outgoing queue ----------------------------------------------------------------

    @property
    def lagging(self) -> bool:
        """Tells whether frames were dropped and a resync is owed."""
        return self.lagging_since is not None

    @property
    def queued_frames(self) -> int:
        """Frames waiting to be written."""
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting to be written."""
        return self._queued_bytes

    def offer(self, frame: bytes, now: float) -> bool:
        """Queues a frame if it fits; else drops it, marks the session lagging, returns False."""
        if self.closed:
            return False
        direct = self.direct_write
        if direct is not None and not self._queue and direct(frame):
            # The common case: an idle, healthy socket takes the frame now, and no
            # writer task has to wake up for it.
            self.frames_sent += 1
            self.bytes_sent += len(frame)
            return True
        if (
            len(self._queue) >= self.send_queue_max_frames
            or self._queued_bytes + len(frame) > self.send_queue_max_bytes
        ):
            self.frames_dropped += 1
            if self.lagging_since is None:
                self.lagging_since = now
            return False
        self._push(frame)
        return True

    def push_control(self, frame: bytes) -> None:
        """Queues a small control frame (hello, reply, error, pong) past the bounds.

        Control frames answer the client's own messages, which the rate limit
        already bounds, and dropping one would leave a call unanswered.
        """
        if not self.closed:
            self._push(frame)

    def push_resync(self, frame: bytes) -> None:
        """Queues the resync frame that ends a lagging period (or an owed resync)."""
        self.lagging_since = None
        self.resync_owed = False
        self.resyncs += 1
        self._push(frame)

    def _push(self, frame: bytes) -> None:
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        if self.on_queued is not None:
            self.on_queued()

    def pop(self) -> bytes | None:
        """Takes the next frame to write, or None."""
        if not self._queue:
            return None
        frame = self._queue.popleft()
        self._queued_bytes -= len(frame)
        self.frames_sent += 1
        self.bytes_sent += len(frame)
        return frame

    def clear(self) -> None:
        """Drops every queued frame (the connection is gone)."""
        self._queue.clear()
        self._queued_bytes = 0
        self.closed = True

    def statistics(self) -> SessionStatistics:
        """Counters and sizes of this session now."""
        return SessionStatistics(
            self.sid,
            len(self.held),
            len(self._queue),
            self._queued_bytes,
            self.frames_sent,
            self.bytes_sent,
            self.frames_dropped,
            self.resyncs,
            self.lagging,
        )


def count_holders(holders: dict[str, int], *, came: Iterable[str], went: Iterable[str]) -> None:
    """Counts one holder more for each key in `came` and one fewer for each in `went`
    (a key no one holds is not in `holders`)."""
    for key in went:
        left = holders[key] - 1
        if left:
            holders[key] = left
        else:
            del holders[key]
    for key in came:
        holders[key] = holders.get(key, 0) + 1
