"""The tick loop: simulate, commit, publish to the bus, then each session's frame.

A tick is phases with a seam in the middle: the world's commit makes this
process's batches; they are published to a `Bus` (the commit point); the
frames of tick n are built from what the bus delivers for tick n. `step` runs
one tick synchronously for a bus that never waits (the default `LocalBus`), so
tests drive the loop tick by tick; `step_async` and `run` serve any bus; `run`
keeps a fixed schedule with an injectable clock.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from synkworld._bus import Bus, BusPort, LocalBus, TickDelivery
from synkworld._cell_counters import CellCounters, CellStatistics
from synkworld._errors import ConfigError
from synkworld._frames import (
    DeliveryReport,
    FrameEncoder,
    MixedFrames,
    SharedFrames,
    SharedFramesV2,
    deliver_frames,
)
from synkworld._limits import Limits
from synkworld._sessions import Session, count_holders
from synkworld._world import TickChanges, World

__all__ = ["PublishedTick", "TickLoop", "TickPhases", "TickStatistics"]

log = logging.getLogger("synkworld.tick")

_DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class TickPhases:
    """Seconds spent in each phase of a tick (of one tick, or summed over many)."""

    simulate_s: float = 0.0
    commit_s: float = 0.0
    bus_s: float = 0.0  # publishing this tick's batches, and waiting for the others'
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
    cells: CellStatistics = field(default_factory=CellStatistics)
    """The hottest keys, by bytes per second of their batches and by subscribers."""


Simulation = Callable[[float], None]


@dataclass(frozen=True, slots=True)
class PublishedTick:
    """A tick between its publish and its frames (`TickLoop.publish_tick`)."""

    started: float
    marks: list[float]
    changes: TickChanges


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
        bus: Bus | BusPort | None = None,
        cells: CellCounters | None = None,
    ) -> None:
        if not tick_rate_hz > 0:
            raise ConfigError("tick_rate_hz must be positive")
        self.world = world
        self.tick_rate_hz = float(tick_rate_hz)
        self.limits = limits
        self.clock = clock
        self._sleep = sleep
        # A bus, for the loop to attach to as the owner of every key; or a port
        # already attached (with an ownership of its own).
        self.port = (bus or LocalBus()).attach(world) if not isinstance(bus, BusPort) else bus
        self._sessions: dict[str, Session] = {}
        self._v2_sessions = 0
        # How many v2 sessions hold each key (kept by the sessions as their keys change).
        self._v2_held: dict[str, int] = {}
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
        self._delivered_tick = 0
        # Set while no tick is between its commit and its frames (see `between_ticks`).
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._phase_totals = [0.0, 0.0, 0.0, 0.0]
        self.last_phases = TickPhases()
        # Bytes out and subscribers per key, for `statistics().cells` and the monitor.
        self.cells = cells or CellCounters()

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
        if session.sid in self._sessions:
            self.detach(self._sessions[session.sid])
        if session.wire_version == 2:
            # Before the session holds a key: the next commit records v2 batches.
            self.port.serve_v2()
            self._v2_sessions += 1
            count_holders(self._v2_held, came=session.held, went=())
            session.holders = self._v2_held
        self._sessions[session.sid] = session

    def detach(self, session: Session) -> None:
        """Stops sending frames to a session."""
        gone = self._sessions.pop(session.sid, None)
        if gone is not None:
            if gone.wire_version == 2:
                self._v2_sessions -= 1
                gone.holders = None
                count_holders(self._v2_held, came=(), went=gone.held)
            self.cells.forget(session.sid)

    async def between_ticks(self) -> None:
        """Returns at once, or when the tick under way has built its frames.

        On a shared map a tick waits for the bus between its commit and its
        frames; a call that changed the world then would show in this tick's
        snapshots and again in the next tick's batches (a deletion as a `rem`
        for an object the snapshot already left out). Calls wait here first.
        """
        if not self._quiet.is_set():
            await self._quiet.wait()

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
        """Runs one tick: simulations, commit, publish, frames, listeners.

        For a bus that never waits (`LocalBus`, the default); `step_async`
        serves any bus.
        """
        # A tick makes thousands of short-lived lists and dicts and no cycles;
        # refcounting frees them. Letting the cyclic GC run in the middle of it
        # only rescans them: it runs after the tick instead.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            started, phases, changes = self._simulate_and_commit()
            self.port.publish_nowait(changes)
            delivery = self.port.delivery_nowait(changes.tick)
            return self._deliver(started, phases, changes, delivery)
        finally:
            if gc_was_enabled:
                gc.enable()

    async def step_async(self, tick: int | None = None) -> TickChanges:
        """Runs one tick, waiting for the bus as long as it takes.

        `tick` is the tick's number on a clock several processes share (default:
        one more than the world's last). Ticks skipped since the last step (a
        process that fell behind) get their frames too, from what the other
        processes published for them, in order, before this tick's.
        """
        # The cyclic GC stays off across both halves: a collection between them
        # (the bus's await) would only rescan the tick's short-lived outcomes.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return await self.frames_tick(await self.publish_tick(tick))
        finally:
            if gc_was_enabled:
                gc.enable()

    async def publish_tick(self, tick: int | None = None) -> PublishedTick:
        """The first half of `step_async`: the frames of skipped ticks, simulations,
        commit and publish.

        With `frames_tick`, the second half, a test runs several processes'
        loops phase by phase: every one publishes tick n before any builds
        its frames of tick n.
        """
        gc_was_enabled = gc.isenabled()
        gc.disable()
        self._quiet.clear()
        try:
            port = self.port
            n = self.world.tick + 1 if tick is None else tick
            if self._delivered_tick and port.catch_up_first():
                # Ticks this process fell behind on get their frames first, from the
                # others' entries: what those entries hand over into this world must
                # be here before this tick's commit, whose entry says what its cells
                # hold (a snapshot) as of this tick.
                await self._catch_up(self.clock(), n)
            await port.begin_tick(n)
            started, marks, changes = self._simulate_and_commit(tick)
            await port.publish(changes)
            return PublishedTick(started, marks, changes)
        except BaseException:
            self._quiet.set()
            raise
        finally:
            if gc_was_enabled:
                gc.enable()

    async def frames_tick(self, published: PublishedTick) -> TickChanges:
        """The second half of `step_async`: the frames of the tick."""
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            port = self.port
            started, changes = published.started, published.changes
            n = changes.tick
            if self._delivered_tick:
                await self._catch_up(started, n)  # when not done before the commit
            delivery = await port.delivery(n)
            done = self._deliver(started, published.marks, changes, delivery)
            await port.after_frames(n)
            return done
        finally:
            self._quiet.set()
            if gc_was_enabled:
                gc.enable()

    async def _catch_up(self, started: float, n: int) -> None:
        """The frames of the ticks skipped before tick `n`: other processes' batches only."""
        port = self.port
        for skipped in range(self._delivered_tick + 1, n):
            delivery = await port.delivery(skipped)
            self._frames_only(started, delivery)
            await port.after_frames(skipped)

    def frame_encoder(self, delivery: TickDelivery) -> FrameEncoder:
        """What builds the sessions' frames of a tick: `SharedFrames` (a subclass may differ).

        A bus may bring its own (`TickDelivery.encoder`).
        """
        if delivery.encoder is not None:
            encoder: FrameEncoder = delivery.encoder
            return encoder
        v1 = SharedFrames(delivery.batches, delivery.snapshots)
        if not self._v2_sessions or delivery.snapshots_v2 is None:
            return v1
        batches_v2 = delivery.batches_v2
        if batches_v2 is not None:
            # The v2 batches of the keys v2 sessions hold before this frame, each once.
            batches_v2.prepare(self._v2_held)
        v2 = SharedFramesV2(
            batches_v2.data if batches_v2 is not None else {},
            delivery.snapshots_v2,
            self.world.key_codes,
        )
        if self._v2_sessions == len(self._sessions):
            return v2
        return MixedFrames(v1, v2)

    def _simulate_and_commit(
        self, tick: int | None = None
    ) -> tuple[float, list[float], TickChanges]:
        """Returns when the tick started, the phases' times so far, and the changes."""
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
        world = self.world
        # A loop alone on its bus with only v2 sessions needs no v1 encoding at all.
        world.encode_v1 = not (
            self._v2_sessions and self._v2_sessions == len(self._sessions) and self.port.only_loop()
        )
        changes = world.commit(tick)
        committed = self.clock()
        return started, [simulated, committed], changes

    def _frames_only(self, started: float, delivery: TickDelivery) -> None:
        """The frames of a tick this process skipped: other processes' batches only."""
        self._count(self._frames_of(started, delivery))

    def _frames_of(self, started: float, delivery: TickDelivery) -> DeliveryReport:
        """Every session's frame of the delivered tick."""
        self._delivered_tick = delivery.tick
        report = deliver_frames(
            delivery.tick,
            delivery.batches,
            self._sessions.values(),
            delivery.snapshots,
            now=started,
            lag_timeout_s=self.limits.lag_timeout_s,
            encoder=self.frame_encoder(delivery),
        )
        # Counted after the frames, whose joins have just read these batches (a
        # third cheaper than before them: the bytes are in the cache), and before
        # `track`: a batch goes to the sessions that held its key before this frame.
        counted = delivery.batches
        if not counted and delivery.batches_v2 is not None:
            counted = delivery.batches_v2.data  # a tick of v2 sessions only
        self.cells.count(counted, started)
        self.cells.track(self._sessions.values())
        return report

    def _count(self, report: DeliveryReport) -> None:
        self._frames += report.frames
        self._bytes += report.bytes
        self._dropped += report.dropped
        self._resyncs += report.resyncs
        for s in report.expired:
            for on_expired in self._expired_listeners:
                on_expired(s)

    def _deliver(
        self, started: float, marks: list[float], changes: TickChanges, delivery: TickDelivery
    ) -> TickChanges:
        delivered = self.clock()
        report = self._frames_of(started, delivery)
        simulated, committed = marks
        phases = (
            simulated - started,
            committed - simulated,
            delivered - committed,
            self.clock() - delivered,
        )
        self.last_phases = TickPhases(*phases)
        totals = self._phase_totals
        for i, seconds in enumerate(phases):
            totals[i] += seconds
        # After the publish: a store write never runs ahead of the commit point.
        for listener in self._change_listeners:
            listener(changes)
        self._count(report)
        self._last_duration = self.clock() - started
        for tick_listener in self._tick_listeners:
            tick_listener(self._last_duration)
        return changes

    # -- the schedule ---------------------------------------------------------------------

    async def run(self) -> None:
        """Steps at `tick_rate_hz` until `stop` is called.

        The schedule is fixed: a tick that overruns is counted in
        `ticks_behind`, and the next one starts at once, without trying to
        catch up the missed ticks (which would pile up work). On a bus whose
        processes share one clock (`BusPort.next_tick`), tick n starts at the
        same moment everywhere, and a process that fell behind skips to the
        current tick.
        """
        if self.port.next_tick(self.clock()) is not None:
            await self._run_shared()
            return
        period = self.period_s
        next_at = self.clock()
        self._stopping = False
        while not self._stopping:
            await self.step_async()
            next_at += period
            now = self.clock()
            if now > next_at:
                # Overran: re-anchor the schedule on now instead of bursting to catch up.
                self._behind += 1
                next_at = now
            await self._sleep(max(0.0, next_at - now))

    async def _run_shared(self) -> None:
        self._stopping = False
        while not self._stopping:
            scheduled = self.port.next_tick(self.clock())
            assert scheduled is not None
            tick, start = scheduled
            wait = start - self.clock()
            if wait > 0:
                await self._sleep(wait)
                if self._stopping:
                    break
            elif tick > self.world.tick + 1 and self.world.tick:
                self._behind += 1
            await self.step_async(tick)

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
            self.cells.statistics(),
        )
