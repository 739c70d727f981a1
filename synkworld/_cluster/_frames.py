"""Frames on a shared map: when a wanted key joins, the same on every process.

One process has a key's snapshot at once (it owns the key); another asks the
owner and gets it in the owner's next entry. For twin sessions on two processes
to receive the same bytes, a key a session starts to want at frame n joins its
subscription at frame n + 1 at the earliest, wherever it is served: the owner
answers in its entry of tick n + 1, the snapshot as of that tick.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from synkworld._protocol import encode_resync, encode_tick
from synkworld._sessions import Session

__all__ = ["ClusterFrames", "SnapshotsAt"]

_NONE: list[Any] = []


class SnapshotsAt(Protocol):
    """A tick's snapshots on a shared map (the cluster port)."""

    def snapshot_now(self, key: str, ask: bool = True) -> bytes | None:
        """The key's snapshot as of this tick, or None (then asked for, for the next tick,
        unless `ask` is false)."""
        ...

    def may_ask(self, keys: list[str]) -> bool:
        """Tells whether asking for these keys' snapshots stays within this tick's budget.

        True whenever nothing is asked for yet, so that every resync gets its turn.
        """
        ...

    def want_next(self, key: str) -> None:
        """Asks for the key's snapshot as of the next tick (nothing for a key owned here)."""
        ...

    def asked_at(self, session: Session, pending: list[str], tick: int) -> list[int]:
        """The tick at which the session started to want each pending key, in order.

        `pending` is every key the session wants and does not hold: the times
        of keys no longer pending (held, or not wanted any more) are forgotten.
        """
        ...


class ClusterFrames:
    """`SharedFrames` with the rule above for the keys a session starts to hold."""

    __slots__ = ("_get", "_snaps")

    def __init__(self, batches: Mapping[str, bytes], snapshots: SnapshotsAt) -> None:
        self._get = batches.get
        self._snaps = snapshots

    def tick_frame(self, tick: int, session: Session) -> bytes | None:
        # In key order: a set's order differs between processes (string hashing is
        # salted per process), and twins on two processes must get the same bytes.
        parts = list(filter(None, map(self._get, session.held_in_order())))
        if not session.wanted_changed:
            return encode_tick(tick, parts, _NONE, _NONE, _NONE)
        added, removed = session.subscription_change()
        ready, snaps = self._ready(tick, session, added)
        if ready or removed:
            session.take_subscription_change(ready, removed)
        return encode_tick(tick, parts, ready, removed, snaps)

    def resync_frame(self, tick: int, session: Session) -> bytes | None:
        snapshot_now = self._snaps.snapshot_now
        added, removed = session.subscription_change()
        gone = set(removed)
        held = sorted(k for k in session.held if k not in gone)
        held_snaps = [snapshot_now(key, False) for key in held]
        ready, added_snaps = self._ready(tick, session, added)
        if None in held_snaps:
            # Every held key must be in a resync, as of one tick: ask for them all. A
            # late region owes a resync to every session holding its cells; asked for
            # at once, their snapshots made the owner's next entry late too, and so on
            # for good. Within the tick's budget, the sessions resync in turns instead.
            if self._snaps.may_ask(held):
                for key in held:
                    self._snaps.want_next(key)
            return None
        session.take_subscription_change(ready, removed)
        snaps: list[bytes] = [b for b in held_snaps if b is not None] + added_snaps
        pairs = sorted(zip(held + ready, snaps, strict=True))
        return encode_resync(tick, [b for _, b in pairs])

    def _ready(
        self, tick: int, session: Session, added: list[str]
    ) -> tuple[list[str], list[bytes]]:
        """The added keys whose snapshots may join now, and those snapshots."""
        ready: list[str] = []
        snaps: list[bytes] = []
        asked = self._snaps.asked_at(session, added, tick)
        for key, since in zip(added, asked, strict=True):
            if since >= tick:
                # First wanted in this frame: asked for now, joins at the next one.
                self._snaps.want_next(key)
                continue
            snap = self._snaps.snapshot_now(key)
            if snap is not None:
                ready.append(key)
                snaps.append(snap)
        return ready, snaps
