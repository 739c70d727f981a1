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

__all__ = ["DeliveryReport", "FrameEncoder", "SharedFrames", "deliver_frames", "snapshots_for"]

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
        snapshot = self._snapshots.snapshot
        added, removed = session.subscription_change()
        keys = sorted((session.held - set(removed)) | set(added))
        snaps = list(map(snapshot, keys))
        if None in snaps:
            missing = {k for k, b in zip(keys, snaps, strict=True) if b is None}
            if missing & session.held:
                return None  # held keys must all be in a resync: wait for their snapshots
            added = [k for k in added if k not in missing]
            keys = [k for k in keys if k not in missing]
            snaps = [b for b in snaps if b is not None]
        session.take_subscription_change(added, removed)
        return encode_resync(tick, snaps)  # type: ignore[arg-type]


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
