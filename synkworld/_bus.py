"""The seam between a tick's commit and its frames: the bus.

A tick is phases: simulate, commit (this process's batches), publish them to
the bus, then build the frames of tick n from what the bus delivers for tick n.
With one process the bus is `LocalBus`, which hands the committed batches to
the frame builder by reference. With several processes on one map, a bus
carries each owner's batch bytes to every process, and snapshots of keys owned
elsewhere come from it too, maybe a tick or more after they were asked for.

- `BusPort`: one tick loop's end of a bus. `publish` is the commit point of a
  tick; `delivery` is what its frames are built from.
- `SnapshotSource.snapshot(key)` may answer None: the snapshot is not here
  yet (it has been asked for); the session keeps the key wanted, and the frame
  that carries its snapshot is the one whose `sub.add` holds it.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from synkworld._errors import ConfigError, SynkError
from synkworld._world import TickChanges, World

__all__ = [
    "Bus",
    "BusPort",
    "LocalBus",
    "SnapshotSource",
    "TickDelivery",
    "WouldBlockError",
    "owns_nothing",
]


class SnapshotSource(Protocol):
    """Whatever serves the encoded snapshot of a key (the world, or a remote owner)."""

    def snapshot(self, key: str) -> bytes | None:
        """``{"k": key, "objs": [...]}`` as of the last tick; None if it is not here yet."""
        ...


@dataclass(frozen=True, slots=True)
class TickDelivery:
    """What the frames of one tick are built from."""

    tick: int
    batches: Mapping[str, bytes]
    """Every key's batch bytes of this tick, this process's and the others'."""
    snapshots: SnapshotSource
    encoder: Any = None
    """What builds the frames (a `FrameEncoder`), for a bus with rules of its own about
    when a wanted key's snapshot may join; None: the tick loop's default."""
    batches_v2: Any = None
    """Protocol v2's batches of this tick (`V2Batches`, or a merge of several owners'), for a
    bus that carries them; None: none were recorded (no v2 session was attached)."""
    snapshots_v2: SnapshotSource | None = None
    """Protocol v2's snapshots, as `snapshots` serves v1's."""


class WouldBlockError(SynkError):
    """A `*_nowait` call of a bus that would have to wait (for another process)."""


class BusPort(abc.ABC):
    """One tick loop's end of a bus."""

    @abc.abstractmethod
    async def publish(self, changes: TickChanges) -> None:
        """Makes this process's batches of tick `changes.tick` available to every process."""

    @abc.abstractmethod
    async def delivery(self, tick: int) -> TickDelivery:
        """Waits for tick `tick`'s batches of every owner; returns what frames are built from."""

    async def begin_tick(self, tick: int) -> None:
        """Called before tick `tick` simulates: a bus changes what the world owns here."""
        return None

    async def after_frames(self, tick: int) -> None:
        """Called once tick `tick`'s frames are built: a bus takes in objects handed over."""
        return None

    def next_tick(self, now: float) -> tuple[int, float] | None:
        """The next tick to run and when it starts, on a clock that several processes
        share; None: the tick loop keeps its own schedule (ticks 1, 2, ...)."""
        return None

    def catch_up_first(self) -> bool:
        """Whether the frames of ticks this process skipped are built before its next
        tick commits (True: what other processes handed over meanwhile is taken in
        first), rather than after its publish (when its ownership is in doubt)."""
        return True

    def publish_nowait(self, changes: TickChanges) -> None:
        """`publish`, for a bus that never waits; raises `WouldBlockError` otherwise."""
        raise WouldBlockError(f"{type(self).__name__} cannot publish without waiting")

    def delivery_nowait(self, tick: int) -> TickDelivery:
        """`delivery`, for a bus that never waits; raises `WouldBlockError` otherwise."""
        raise WouldBlockError(f"{type(self).__name__} cannot deliver without waiting")

    def serve_v2(self) -> None:
        """Called when a protocol v2 session attaches: the owners record v2 batches from now on.

        A bus that cannot carry them raises `ConfigError` (a server does not
        offer v2 over it).
        """
        raise ConfigError(f"{type(self).__name__} does not carry protocol v2 batches")

    def only_loop(self) -> bool:
        """Tells whether this port's loop is the only one on its bus (then the world may skip
        the v1 encoding while no v1 session is attached)."""
        return False


class Bus(abc.ABC):
    """Connects the tick loops that share one map."""

    @abc.abstractmethod
    def attach(self, world: World, *, owns: Callable[[str], bool] | None = None) -> BusPort:
        """The port of a tick loop whose `world` holds the objects of the keys it `owns`.

        None: it owns every key (one process serves the whole map).
        """


_EVERYTHING: Callable[[str], bool] = lambda key: True  # noqa: E731


class LocalBus(Bus):
    """Tick loops in one process: the committed batches go to the frames by reference.

    Several loops may share it (a world that owns the map, and loops that only
    fan its frames out to sessions of their own): their frames of tick n are
    built from every owner's batches of tick n, and a snapshot comes from the
    world that owns the key. `snapshot_delay_ticks` makes the snapshots of keys
    a loop does not own arrive that many ticks after they were first asked
    for, as they would from another process.
    """

    def __init__(self, *, snapshot_delay_ticks: int = 0) -> None:
        if snapshot_delay_ticks < 0:
            raise ConfigError("snapshot_delay_ticks must not be negative")
        self.snapshot_delay_ticks = snapshot_delay_ticks
        self._owners: list[_LocalPort] = []
        self._ports: list[_LocalPort] = []
        self._published: dict[int, dict[_LocalPort, tuple[Mapping[str, bytes], Any]]] = {}
        self._v2 = False
        self._arrived: dict[int, asyncio.Event] = {}

    def attach(self, world: World, *, owns: Callable[[str], bool] | None = None) -> BusPort:
        port = _LocalPort(self, world, owns)
        self._ports.append(port)
        if owns is not owns_nothing:
            self._owners.append(port)
            world.record_v2 = world.record_v2 or self._v2
        return port

    def _serve_v2(self) -> None:
        # At attach, before the session holds a key: the next commit records v2.
        self._v2 = True
        for port in self._owners:
            port.world.record_v2 = True

    def _publish(
        self, port: _LocalPort, tick: int, batches: Mapping[str, bytes], batches_v2: Any
    ) -> None:
        published = self._published.setdefault(tick, {})
        published[port] = (batches, batches_v2)
        if len(published) == len(self._owners):
            event = self._arrived.pop(tick, None)
            if event is not None:
                event.set()

    def _delivered(self, port: _LocalPort, tick: int) -> None:
        # A tick's batches are kept until every loop has built its frames: with
        # one loop, not a tick longer (they are the bulk of a tick's memory).
        port._delivered = tick
        done = min(p._delivered for p in self._ports)
        for old in [t for t in self._published if t <= done]:
            del self._published[old]

    def _batches(self, tick: int) -> Mapping[str, bytes] | None:
        published = self._published.get(tick)
        if published is None or len(published) < len(self._owners):
            return None
        if len(published) == 1:
            (only,) = published.values()
            return only[0]  # by reference: one process owns the map
        merged: dict[str, bytes] = {}
        for batches, _ in published.values():
            merged.update(batches)
        return merged

    def _batches_v2(self, tick: int) -> Any:
        published = self._published.get(tick)
        if published is None:
            return None
        parts = [v2 for _, v2 in published.values() if v2 is not None]
        if len(parts) <= 1:
            return parts[0] if parts else None
        return MergedV2Batches(parts)

    async def _wait(self, tick: int) -> Mapping[str, bytes]:
        while (batches := self._batches(tick)) is None:
            event = self._arrived.setdefault(tick, asyncio.Event())
            await event.wait()
        return batches

    def _owner_of(self, key: str) -> _LocalPort | None:
        for port in self._owners:
            if port.owns(key):
                return port
        return None


def owns_nothing(key: str) -> bool:
    """The `owns` of a loop that only fans out other loops' frames (a gateway)."""
    return False


class _LocalPort(BusPort):
    __slots__ = ("_asked", "_asked_v2", "_bus", "_delivered", "_tick", "owns", "world")

    def __init__(self, bus: LocalBus, world: World, owns: Callable[[str], bool] | None) -> None:
        self._bus = bus
        self.world = world
        self.owns = _EVERYTHING if owns is None else owns
        self._asked: dict[str, int] = {}
        self._asked_v2: dict[str, int] = {}
        self._tick = 0
        self._delivered = 0

    async def publish(self, changes: TickChanges) -> None:
        self.publish_nowait(changes)

    def publish_nowait(self, changes: TickChanges) -> None:
        self._tick = changes.tick
        if self in self._bus._owners:
            self._bus._publish(self, changes.tick, changes.batches.data, changes.batches_v2)

    async def delivery(self, tick: int) -> TickDelivery:
        batches = await self._bus._wait(tick)
        return self._delivery_of(tick, batches)

    def delivery_nowait(self, tick: int) -> TickDelivery:
        batches = self._bus._batches(tick)
        if batches is None:
            raise WouldBlockError(f"not every owner has published tick {tick} yet")
        return self._delivery_of(tick, batches)

    def _delivery_of(self, tick: int, batches: Mapping[str, bytes]) -> TickDelivery:
        batches_v2 = self._bus._batches_v2(tick)
        self._bus._delivered(self, tick)
        return TickDelivery(
            tick,
            batches,
            self._snapshots(tick, False),
            batches_v2=batches_v2,
            snapshots_v2=self._snapshots(tick, True) if self._bus._v2 else None,
        )

    def serve_v2(self) -> None:
        self._bus._serve_v2()

    def only_loop(self) -> bool:
        return len(self._bus._ports) == 1

    def _snapshots(self, tick: int, v2: bool) -> SnapshotSource:
        owns = self.owns
        if owns is _EVERYTHING:
            return _SnapshotsV2(self.world) if v2 else self.world
        return _Routed(self, tick, v2)


class _SnapshotsV2:
    """A world's protocol v2 snapshots, as a `SnapshotSource`."""

    __slots__ = ("snapshot",)

    def __init__(self, world: World) -> None:
        self.snapshot = world.snapshot_v2


class MergedV2Batches:
    """The v2 batches of several owners of one tick, as one `V2Batches`."""

    __slots__ = ("_parts", "data", "tick")

    def __init__(self, parts: list[Any]) -> None:
        self._parts = parts
        self.tick = parts[0].tick
        self.data: dict[str, bytes] = {}

    def prepare(self, keys: Any) -> None:
        for part in self._parts:
            part.prepare(keys)
            self.data.update(part.data)


class _Routed:
    """Snapshots for a loop that does not own every key: from each key's owner."""

    __slots__ = ("_port", "_tick", "_v2")

    def __init__(self, port: _LocalPort, tick: int, v2: bool) -> None:
        self._port = port
        self._tick = tick
        self._v2 = v2

    def _of(self, world: World, key: str) -> bytes:
        return world.snapshot_v2(key) if self._v2 else world.snapshot(key)

    def snapshot(self, key: str) -> bytes | None:
        port = self._port
        if port.owns(key):
            return self._of(port.world, key)
        delay = port._bus.snapshot_delay_ticks
        if delay:
            asked_at = port._asked_v2 if self._v2 else port._asked
            asked = asked_at.setdefault(key, self._tick)
            if self._tick < asked + delay:
                return None
            del asked_at[key]
        owner = port._bus._owner_of(key)
        # A key nobody owns holds nothing: its snapshot is empty, from any world.
        return self._of(owner.world if owner is not None else port.world, key)
