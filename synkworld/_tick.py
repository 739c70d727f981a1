"""The tick loop: simulation steps, then the world's batches, then each session's frame.

`TickLoop.step` runs one tick synchronously, so tests drive the loop tick by
tick; `TickLoop.run` calls it on a fixed schedule with an injectable clock.
Frames are built by `deliver_frames` from a mapping of ready batches, whoever
made them: the local world now, a bus carrying other processes' batches later.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson

from synkworld._batch import Batch, TickBatches
from synkworld._errors import ConfigError
from synkworld._limits import Limits
from synkworld._protocol import encode_resync, encode_tick
from synkworld._sessions import Session
from synkworld._world import TickChanges, World

__all__ = [
    "DeliveryReport",
    "SnapshotSource",
    "TickLoop",
    "TickPhases",
    "TickStatistics",
    "deliver_frames",
]

log = logging.getLogger("synkworld.tick")

_DEFAULT_LIMITS = Limits()


class SnapshotSource(Protocol):
    """Whatever serves the encoded snapshot of a key (the world, or a remote owner)."""

    def snapshot(self, key: str) -> bytes:
        """The encoded snapshot ``{"k": key, "objs": [...]}`` as of the last tick."""
        ...


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What one round of frame building did."""

    frames: int
    bytes: int
    dropped: int
    resyncs: int
    expired: tuple[Session, ...]


class FrameEncoder(Protocol):
    """Builds one session's frames for one tick."""

    def tick_frame(
        self, tick: int, held: Iterable[str], added: list[str], removed: list[str]
    ) -> bytes | None:
        """The tick frame for a session that held `held` before this frame."""
        ...

    def resync_frame(self, tick: int, held: Iterable[str]) -> bytes:
        """The resync frame for a session that holds `held`."""
        ...


class SharedFrames:
    """Frames joined from batches encoded once per key: what synkworld does."""

    def __init__(self, batches: Mapping[str, Batch], snapshots: SnapshotSource) -> None:
        if isinstance(batches, TickBatches):
            self._get = batches.data.get
        else:
            self._get = {k: b.data for k, b in batches.items()}.get
        self._snapshot = snapshots.snapshot

    def tick_frame(
        self, tick: int, held: Iterable[str], added: list[str], removed: list[str]
    ) -> bytes | None:
        parts = list(filter(None, map(self._get, held)))  # batch bytes are never empty
        return encode_tick(tick, parts, added, removed, [self._snapshot(k) for k in added])

    def resync_frame(self, tick: int, held: Iterable[str]) -> bytes:
        return encode_resync(tick, [self._snapshot(k) for k in sorted(held)])


class PerClientFrames:
    """Frames filtered and encoded per client: the naive baseline the benchmark compares with."""

    def __init__(self, messages: Mapping[str, dict[str, Any]], world: World) -> None:
        self._messages = messages
        self._world = world

    def tick_frame(
        self, tick: int, held: Iterable[str], added: list[str], removed: list[str]
    ) -> bytes | None:
        get = self._messages.get
        msg: dict[str, Any] = {"m": "tick", "n": tick}
        b = [m for m in map(get, held) if m is not None]
        if b:
            msg["b"] = b
        if added or removed:
            msg["sub"] = {k: v for k, v in (("add", added), ("rem", removed)) if v}
        if added:
            msg["snap"] = [self._world.snapshot_message(k) for k in added]
        return orjson.dumps(msg) if len(msg) > 2 else None

    def resync_frame(self, tick: int, held: Iterable[str]) -> bytes:
        snaps = [self._world.snapshot_message(k) for k in sorted(held)]
        return orjson.dumps({"m": "resync", "n": tick, "snap": snaps})


def deliver_frames(
    tick: int,
    batches: Mapping[str, Batch],
    sessions: Iterable[Session],
    snapshots: SnapshotSource,
    *,
    now: float,
    lag_timeout_s: float,
) -> DeliveryReport:
    """Builds and queues every session's frame for one tick from ready batch bytes.

    A lagging session gets nothing until its queue has drained, then one
    ``resync``; one lagging for longer than `lag_timeout_s` is reported as
    expired for the transport to close.
    """
    return deliver_frames_with(
        SharedFrames(batches, snapshots), tick, sessions, now=now, lag_timeout_s=lag_timeout_s
    )


def deliver_frames_with(
    encoder: FrameEncoder,
    tick: int,
    sessions: Iterable[Session],
    *,
    now: float,
    lag_timeout_s: float,
) -> DeliveryReport:
    """`deliver_frames` with any frame encoder."""
    frames = nbytes = dropped = resyncs = 0
    expired: list[Session] = []
    for s in sessions:
        if s.closed:
            continue
        if s.lagging_since is not None:
            if s.queued_frames == 0:
                s.take_subscription_change()
                frame = encoder.resync_frame(tick, s.held)
                s.push_resync(frame)
                resyncs += 1
                frames += 1
                nbytes += len(frame)
            else:
                # Skipped ticks count as dropped frames: the client misses them all.
                s.frames_dropped += 1
                dropped += 1
                if now - s.lagging_since > lag_timeout_s:
                    expired.append(s)
            continue
        held = s.held
        added, removed = s.take_subscription_change()
        frame_or_none = encoder.tick_frame(tick, held, added, removed)
        if frame_or_none is None:
            continue
        if s.offer(frame_or_none, now):
            frames += 1
            nbytes += len(frame_or_none)
        else:
            dropped += 1
    return DeliveryReport(frames, nbytes, dropped, resyncs, tuple(expired))


@dataclass(frozen=True, slots=True)
class TickPhases:
    """Seconds spent in each phase of a tick (of one tick, or summed over many)."""

    simulate_s: float = 0.0
    commit_s: float = 0.0
    frames_s: float = 0.0  # building frames and the writes the engine makes itself


@dataclass(frozen=True, slots=True)
class TickStatistics:
    """Counters of the tick loop since it started."""

    tick: int
    tick_rate_hz: float
    sessions: int
    last_tick_duration_s: float
    ticks_behind: int
    frames_queued: int
    bytes_queued: int
    frames_dropped: int
    resyncs: int
    simulation_errors: int
    phases_total: TickPhases


Simulation = Callable[[float], None]


class TickLoop:
    """Runs a world's ticks and hands each session its frame."""

    def __init__(
        self,
        world: World,
        *,
        tick_rate_hz: float = 20.0,
        limits: Limits = _DEFAULT_LIMITS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        frame_mode: Literal["shared", "per-client"] = "shared",
    ) -> None:
        if not tick_rate_hz > 0:
            raise ConfigError("tick_rate_hz must be positive")
        self.world = world
        self.tick_rate_hz = float(tick_rate_hz)
        self.limits = limits
        self.clock = clock
        self._sleep = sleep
        if frame_mode not in ("shared", "per-client"):
            raise ConfigError("frame_mode must be 'shared' or 'per-client'")
        # "per-client" encodes every client's frame itself: only for baselines.
        self.frame_mode = frame_mode
        self._sessions: dict[str, Session] = {}
        self._simulations: list[Simulation] = []
        self._change_listeners: list[Callable[[TickChanges], None]] = []
        self._tick_listeners: list[Callable[[float], None]] = []
        self._expired_listeners: list[Callable[[Session], None]] = []
        self._stopping = False
        self._last_step_at: float | None = None
        self._last_duration = 0.0
        self._behind = 0
        self._frames = 0
        self._bytes = 0
        self._dropped = 0
        self._resyncs = 0
        self._sim_errors = 0
        self._phase_totals = [0.0, 0.0, 0.0]
        self.last_phases = TickPhases()

    # -- wiring ----------------------------------------------------------------------

    @property
    def period_s(self) -> float:
        """Seconds between two ticks."""
        return 1.0 / self.tick_rate_hz

    @property
    def sessions(self) -> Mapping[str, Session]:
        """The sessions that receive frames, by id."""
        return self._sessions

    def attach(self, session: Session) -> None:
        """Starts sending frames to a session from the next tick on."""
        self._sessions[session.sid] = session

    def detach(self, session: Session) -> None:
        """Stops sending frames to a session."""
        self._sessions.pop(session.sid, None)

    def add_simulation(self, step: Simulation) -> None:
        """Runs `step(dt_seconds)` at the start of every tick, before changes are committed."""
        self._simulations.append(step)

    def on_changes(self, listener: Callable[[TickChanges], None]) -> None:
        """Calls `listener` with every tick's changes (the store's write-behind, a bus)."""
        self._change_listeners.append(listener)

    def on_tick_done(self, listener: Callable[[float], None]) -> None:
        """Calls `listener(duration_s)` after every tick (metrics)."""
        self._tick_listeners.append(listener)

    def on_expired(self, listener: Callable[[Session], None]) -> None:
        """Calls `listener` for a session that stayed lagging past the time limit."""
        self._expired_listeners.append(listener)

    # -- one tick -----------------------------------------------------------------------

    def step(self) -> TickChanges:
        """Runs one tick: simulations, commit, frames, listeners."""
        # A tick makes thousands of short-lived lists and dicts and no cycles;
        # refcounting frees them. Letting the cyclic GC run in the middle of it
        # only rescans them: it runs after the tick instead.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._step()
        finally:
            if gc_was_enabled:
                gc.enable()

    def _step(self) -> TickChanges:
        started = self.clock()
        dt = self.period_s if self._last_step_at is None else started - self._last_step_at
        self._last_step_at = started
        for sim in self._simulations:
            try:
                sim(dt)
            except Exception:
                # A failing simulation must not stop the world's clock for everyone.
                self._sim_errors += 1
                log.exception("simulation step %r failed", sim)
        simulated = self.clock()
        naive = self.frame_mode == "per-client"
        changes = self.world.commit(encode=not naive)
        committed = self.clock()
        encoder: FrameEncoder = (
            PerClientFrames(changes.messages, self.world)
            if naive
            else SharedFrames(changes.batches, self.world)
        )
        report = deliver_frames_with(
            encoder,
            changes.tick,
            self._sessions.values(),
            now=started,
            lag_timeout_s=self.limits.lag_timeout_s,
        )
        delivered = self.clock()
        phases = (simulated - started, committed - simulated, delivered - committed)
        self.last_phases = TickPhases(*phases)
        totals = self._phase_totals
        for i, seconds in enumerate(phases):
            totals[i] += seconds
        self._frames += report.frames
        self._bytes += report.bytes
        self._dropped += report.dropped
        self._resyncs += report.resyncs
        for listener in self._change_listeners:
            listener(changes)
        for s in report.expired:
            for on_expired in self._expired_listeners:
                on_expired(s)
        self._last_duration = self.clock() - started
        for tick_listener in self._tick_listeners:
            tick_listener(self._last_duration)
        return changes

    # -- the schedule ---------------------------------------------------------------------

    async def run(self) -> None:
        """Steps at `tick_rate_hz` until `stop` is called.

        The schedule is fixed: a tick that overruns is counted in
        `ticks_behind`, and the next one starts at once, without trying to
        catch up the missed ticks (which would pile up work).
        """
        period = self.period_s
        next_at = self.clock()
        self._stopping = False
        while not self._stopping:
            self.step()
            next_at += period
            now = self.clock()
            if now > next_at:
                # Overran: re-anchor the schedule on now instead of bursting to catch up.
                self._behind += 1
                next_at = now
            await self._sleep(max(0.0, next_at - now))

    def stop(self) -> None:
        """Asks `run` to return after the tick in progress."""
        self._stopping = True

    def statistics(self) -> TickStatistics:
        """Counters of the loop now."""
        return TickStatistics(
            self.world.tick,
            self.tick_rate_hz,
            len(self._sessions),
            self._last_duration,
            self._behind,
            self._frames,
            self._bytes,
            self._dropped,
            self._resyncs,
            self._sim_errors,
            TickPhases(*self._phase_totals),
        )
