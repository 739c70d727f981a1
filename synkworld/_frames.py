"""Each session's frame of a tick, joined from ready batch bytes; resyncs for lagging ones.

`deliver_frames` builds and queues the frames of one tick from a mapping of
batch bytes by key, whoever made them (this process's commit, or a bus that
carries other processes' batches), and from a `SnapshotSource` for the keys
sessions start holding. A key whose snapshot is not available yet stays wanted:
it joins `sub.add` in the frame that carries its snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from synkworld._batch import TickBatches
from synkworld._bus import SnapshotSource
from synkworld._protocol import encode_resync, encode_tick
from synkworld._sessions import Session
from synkworld._wire_v2 import KeyCodes, encode_resync_v2, encode_tick_v2, type_table, varint

__all__ = [
    "DeliveryReport",
    "FrameEncoder",
    "MixedFrames",
    "SharedFrames",
    "SharedFramesV2",
    "deliver_frames",
    "resync_snapshots",
    "snapshots_for",
]

_NONE: list[Any] = []


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What one round of frame building did."""

    frames: int
    bytes: int
    dropped: int
    resyncs: int
    expired: tuple[Session, ...]


class FrameEncoder(Protocol):
    """Builds sessions' frames for one tick (`SharedFrames`; the bench's naive baseline)."""

    def tick_frame(self, tick: int, session: Session) -> bytes | None:
        """The session's tick frame (its subscription change taken), or None if it is empty."""
        ...

    def resync_frame(self, tick: int, session: Session) -> bytes | None:
        """The frame replacing all a lagging session holds; None while a snapshot is missing."""
        ...


def snapshots_for(
    session: Session, snapshots: SnapshotSource
) -> tuple[list[str], list[str], list[bytes]]:
    """Takes the session's subscription change as far as snapshots allow.

    Returns (added, removed, the added keys' snapshots). A wanted key whose
    snapshot is not here yet is left out of `added` and stays wanted.
    """
    added, removed = session.subscription_change()
    if not added and not removed:
        return [], [], []
    snaps = list(map(snapshots.snapshot, added))
    if None in snaps:
        ready = [(k, b) for k, b in zip(added, snaps, strict=True) if b is not None]
        added = [k for k, _ in ready]
        snaps = [b for _, b in ready]
    session.take_subscription_change(added, removed)
    return added, removed, snaps  # type: ignore[return-value]


def resync_snapshots(session: Session, snapshots: SnapshotSource) -> list[bytes] | None:
    """The snapshots of a resync: every key the session holds and wants, in key order, its
    subscription change taken; None while a held key's snapshot is not here (it waits)."""
    added, removed = session.subscription_change()
    keys = sorted((session.held - set(removed)) | set(added))
    snaps = list(map(snapshots.snapshot, keys))
    if None in snaps:
        missing = {k for k, b in zip(keys, snaps, strict=True) if b is None}
        if missing & session.held:
            return None  # held keys must all be in a resync: wait for their snapshots
        added = [k for k in added if k not in missing]
        snaps = [b for b in snaps if b is not None]
    session.take_subscription_change(added, removed)
    return snaps  # type: ignore[return-value]


class SharedFrames:
    """Frames joined from batches encoded once per key: what synkworld does."""

    __slots__ = ("_get", "_snapshots")

    def __init__(self, batches: Mapping[str, bytes], snapshots: SnapshotSource) -> None:
        self._get = batches.get
        self._snapshots = snapshots

    def tick_frame(self, tick: int, session: Session) -> bytes | None:
        # The batches of the keys held before this frame's subscription change.
        parts = list(filter(None, map(self._get, session.held)))  # batch bytes are never empty
        if not session.wanted_changed:  # the common case, without a call per session
            return encode_tick(tick, parts, _NONE, _NONE, _NONE)
        added, removed, snaps = snapshots_for(session, self._snapshots)
        return encode_tick(tick, parts, added, removed, snaps)

    def resync_frame(self, tick: int, session: Session) -> bytes | None:
        snaps = resync_snapshots(session, self._snapshots)
        return None if snaps is None else encode_resync(tick, snaps)


class SharedFramesV2:
    """Protocol v2 frames, joined from v2 batches encoded once per key (`V2Batches.prepare`)."""

    __slots__ = ("_get", "_head", "_key", "_snapshots", "_table", "_tick", "_types")

    def __init__(
        self, batches: Mapping[str, bytes], snapshots: SnapshotSource, keys: KeyCodes
    ) -> None:
        self._get = batches.get
        self._snapshots = snapshots
        self._key = keys.binary
        self._table = type_table()
        self._types = len(self._table)
        self._tick = -1
        self._head = b""

    def tick_frame(self, tick: int, session: Session) -> bytes | None:
        parts = list(filter(None, map(self._get, session.held)))
        table = self._table
        if not session.wanted_changed and session.types_known == self._types:
            # The common case, batches only: the frame's head is the same for every session.
            if not parts:
                return None
            if tick != self._tick:
                self._tick = tick
                self._head = b"\x01%b\x08" % varint(tick)
            parts[0:0] = (self._head, varint(len(parts)))
            return b"".join(parts)
        if not session.wanted_changed:
            frame = encode_tick_v2(tick, parts, _NONE, _NONE, _NONE, session.types_known, table)
        else:
            added, removed, snaps = snapshots_for(session, self._snapshots)
            key = self._key
            frame = encode_tick_v2(
                tick,
                parts,
                list(map(key, added)),
                list(map(key, removed)),
                snaps,
                session.types_known,
                table,
            )
        if frame is not None:
            session.types_known = len(table)
        return frame

    def resync_frame(self, tick: int, session: Session) -> bytes | None:
        snaps = resync_snapshots(session, self._snapshots)
        if snaps is None:
            return None
        frame = encode_resync_v2(tick, snaps, session.types_known, self._table)
        session.types_known = len(self._table)
        return frame


class MixedFrames:
    """Each session's frame in its own protocol version."""

    __slots__ = ("_v1", "_v2")

    def __init__(self, v1: FrameEncoder, v2: FrameEncoder) -> None:
        self._v1 = v1
        self._v2 = v2

    def tick_frame(self, tick: int, session: Session) -> bytes | None:
        encoder = self._v2 if session.wire_version == 2 else self._v1
        return encoder.tick_frame(tick, session)

    def resync_frame(self, tick: int, session: Session) -> bytes | None:
        encoder = self._v2 if session.wire_version == 2 else self._v1
        return encoder.resync_frame(tick, session)


def deliver_frames(
    tick: int,
    batches: Mapping[str, bytes] | TickBatches,
    sessions: Iterable[Session],
    snapshots: SnapshotSource,
    *,
    now: float,
    lag_timeout_s: float,
    encoder: FrameEncoder | None = None,
) -> DeliveryReport:
    """Builds and queues every session's frame for one tick from ready batch bytes.

    A lagging session gets nothing until its queue has drained, then one
    ``resync``; one lagging for longer than `lag_timeout_s` is reported as
    expired for the transport to close. A session owed a resync
    (`Session.resync_owed`) gets it as soon as its snapshots are here, and
    nothing before.
    """
    if encoder is None:
        data = batches.data if isinstance(batches, TickBatches) else batches
        encoder = SharedFrames(data, snapshots)
    frames = nbytes = dropped = resyncs = 0
    expired: list[Session] = []
    for s in sessions:
        if s.closed:
            continue
        if s.lagging_since is not None or s.resync_owed:
            if s.queued_frames == 0:
                frame = encoder.resync_frame(tick, s)
                if frame is not None:
                    s.push_resync(frame)
                    resyncs += 1
                    frames += 1
                    nbytes += len(frame)
                    continue
            lagging_since = s.lagging_since
            if lagging_since is None:
                continue  # owed a resync, not lagging: the wait is not the client's doing
            # Skipped ticks count as dropped frames: the client misses them all.
            s.frames_dropped += 1
            dropped += 1
            if now - lagging_since > lag_timeout_s:
                expired.append(s)
            continue
        frame_or_none = encoder.tick_frame(tick, s)
        if frame_or_none is None:
            continue
        if s.offer(frame_or_none, now):
            frames += 1
            nbytes += len(frame_or_none)
        else:
            dropped += 1
    return DeliveryReport(frames, nbytes, dropped, resyncs, tuple(expired))
