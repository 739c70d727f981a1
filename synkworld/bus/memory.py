"""The bus in one process: what Redis would hold, shared by several nodes in one event loop.

`MemoryHub` keeps the leases, streams, wanted keys, members and messages;
each node talks to it through its own `MemoryBackend`, with the semantics of
`RedisBackend` (tests/bus/ runs one contract suite over both). Leases expire
by the hub's clock, which a test may drive (`synkworld.testing.FakeClock`).

Faults, for the tests of what a cluster does when the medium misbehaves:
`delay` (a region's entries become readable late), `drop_next` (appends that
are lost), `trim` (old entries gone before a reader got them), `fence` (a
lease taken from its holder), `wipe` (everything lost, as a Redis restart
without persistence), and `disconnect` (a node's calls fail, as when Redis is
away from it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from synkworld._bus_backend import (
    Append,
    AppendResult,
    AppendStatus,
    BusBackend,
    Lease,
    ReadResult,
    Record,
)
from synkworld._errors import BusUnavailableError

__all__ = ["MemoryBackend", "MemoryHub"]


@dataclass
class _Stream:
    entries: list[tuple[Record, float, Mapping[str, float]]] = field(default_factory=list)
    """(record, readable from, readable from for the readers delayed apart) in tick order."""
    last_tick: int = -1
    """The highest tick ever appended (kept when entries are trimmed or lost)."""


class MemoryHub:
    """The shared medium of the nodes of one event loop."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, maxlen: int = 200) -> None:
        self.clock = clock
        self.maxlen = maxlen
        self._clock_epoch: int | None = None
        self._epoch = 0
        self._leases: dict[str, tuple[str, int, float]] = {}  # region -> (node, epoch, expiry)
        self._streams: dict[str, _Stream] = {}
        self._wanted: dict[str, set[str]] = {}
        self._members: dict[str, tuple[bytes, float]] = {}
        self._inbox: dict[str, list[bytes]] = {}
        self._changed = asyncio.Condition()
        self._delays: dict[str, float] = {}
        self._reader_delays: dict[str, dict[str, float]] = {}  # region -> node -> seconds
        self._drops: dict[str, int] = {}
        self._disconnected: set[str] = set()
        self.generation = 0  # bumped by `wipe`, so that a reader sees the loss

    def backend(self, node: str = "") -> MemoryBackend:
        """A connection to the hub (for `node`, which `disconnect` names)."""
        return MemoryBackend(self, node)

    # -- faults -----------------------------------------------------------------------

    def delay(self, region: str, seconds: float, *, reader: str | None = None) -> None:
        """Entries appended to `region` from now on are readable `seconds` later (0: undo).

        With `reader`, only for that node: the others read them on time, as when
        one process's connection to Redis is slow.
        """
        if reader is None:
            self._delays[region] = seconds
        elif seconds:
            self._reader_delays.setdefault(region, {})[reader] = seconds
        else:
            self._reader_delays.get(region, {}).pop(reader, None)

    def drop_next(self, region: str, count: int = 1) -> None:
        """The next `count` appends to `region` report OK and are lost."""
        self._drops[region] = self._drops.get(region, 0) + count

    def trim(self, region: str, keep: int = 0) -> None:
        """Drops all but the last `keep` entries of a region's stream."""
        stream = self._streams.get(region)
        if stream is not None:
            stream.entries = stream.entries[len(stream.entries) - keep :] if keep else []

    def fence(self, region: str, thief: str = "thief") -> None:
        """Gives a region's lease to `thief` at a new epoch: its holder's appends now fail."""
        self._epoch += 1
        self._leases[region] = (thief, self._epoch, self.clock() + 3600.0)

    def expire(self, region: str) -> None:
        """Ends a region's lease now, as if its holder had stopped renewing a TTL ago."""
        self._leases.pop(region, None)

    def wipe(self) -> None:
        """Loses everything, as Redis restarting without persistence does."""
        self._clock_epoch = None
        self._epoch = 0
        self._leases.clear()
        self._streams.clear()
        self._wanted.clear()
        self._members.clear()
        self._inbox.clear()
        self.generation += 1
        self._notify()

    def disconnect(self, node: str) -> None:
        """Every call of `node`'s backend raises `BusUnavailableError` until `reconnect`."""
        self._disconnected.add(node)

    def reconnect(self, node: str) -> None:
        """Ends a `disconnect`."""
        self._disconnected.discard(node)

    # -- internals ---------------------------------------------------------------------

    def _check(self, node: str) -> None:
        if node in self._disconnected:
            raise BusUnavailableError(f"node {node!r} is cut off from the bus")

    def _lease(self, region: str) -> tuple[str, int] | None:
        held = self._leases.get(region)
        if held is None:
            return None
        if held[2] <= self.clock():
            del self._leases[region]
            return None
        return held[0], held[1]

    def _notify(self) -> None:
        async def wake() -> None:
            async with self._changed:
                self._changed.notify_all()

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.create_task(wake())  # noqa: RUF006 - a notification, owned by nobody


class MemoryBackend(BusBackend):
    """One node's connection to a `MemoryHub`."""

    def __init__(self, hub: MemoryHub, node: str) -> None:
        self.hub = hub
        self.node = node
        self._generation = hub.generation

    async def clock_epoch(self, proposed_ms: int) -> int:
        hub = self._enter()
        if hub._clock_epoch is None:
            hub._clock_epoch = proposed_ms
        return hub._clock_epoch

    async def acquire(self, region: str, node: str, ttl_ms: int, min_epoch: int = 0) -> int | None:
        hub = self._enter()
        held = hub._lease(region)
        if held is not None:
            if held[0] != node:
                return None
            hub._leases[region] = (node, held[1], hub.clock() + ttl_ms / 1000)
            return held[1]
        hub._epoch = max(hub._epoch + 1, min_epoch + 1)
        hub._leases[region] = (node, hub._epoch, hub.clock() + ttl_ms / 1000)
        return hub._epoch

    async def renew(self, leases: Mapping[str, int], node: str, ttl_ms: int) -> set[str]:
        hub = self._enter()
        lost = set()
        for region, epoch in leases.items():
            if hub._lease(region) == (node, epoch):
                hub._leases[region] = (node, epoch, hub.clock() + ttl_ms / 1000)
            else:
                lost.add(region)
        return lost

    async def release(self, region: str, node: str, epoch: int) -> None:
        hub = self._enter()
        if hub._lease(region) == (node, epoch):
            del hub._leases[region]

    async def leases(self, regions: Collection[str]) -> dict[str, Lease]:
        hub = self._enter()
        out = {}
        for region in regions:
            held = hub._lease(region)
            if held is not None:
                out[region] = Lease(*held)
        return out

    async def append(self, node: str, entries: list[Append]) -> list[AppendResult]:
        hub = self._enter()
        out = []
        now = hub.clock()
        for e in entries:
            region = e.region
            held = hub._lease(region)
            if held is None:
                out.append(AppendResult(AppendStatus.UNHELD))
                continue
            if held != (node, e.epoch):
                out.append(AppendResult(AppendStatus.FENCED, held[1], held[0]))
                continue
            stream = hub._streams.setdefault(region, _Stream())
            if e.tick <= stream.last_tick:
                out.append(AppendResult(AppendStatus.DUPLICATE))
                continue
            new_epoch = None
            if e.transfer_to is not None:
                hub._epoch += 1
                new_epoch = hub._epoch
                hub._leases[region] = (e.transfer_to, new_epoch, now + e.ttl_ms / 1000)
            record = Record(region, e.tick, dict(e.fields), stream.last_tick, new_epoch)
            stream.last_tick = e.tick
            if hub._drops.get(region):
                hub._drops[region] -= 1
            else:
                at = now + hub._delays.get(region, 0.0)
                apart = {n: at + d for n, d in hub._reader_delays.get(region, {}).items()}
                stream.entries.append((record, at, apart))
                if len(stream.entries) > hub.maxlen:
                    del stream.entries[: len(stream.entries) - hub.maxlen]
            out.append(AppendResult(AppendStatus.OK, new_epoch))
        hub._notify()
        return out

    @property
    def losses(self) -> int:
        return self.hub.generation

    async def has_entry(self, region: str, tick: int) -> bool:
        stream = self._enter()._streams.get(region)
        return stream is not None and any(r.tick == tick for r, _, _ in stream.entries)

    async def read(self, cursors: Mapping[str, int], timeout_s: float) -> ReadResult:
        hub = self._enter()
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            result = self._read_now(cursors)
            left = deadline - asyncio.get_running_loop().time()
            if result.records or result.gaps or left <= 0:
                return result
            # Entries that become readable later (a delay) need a timed wait, not a wake-up.
            async with hub._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(hub._changed.wait(), timeout=min(left, 0.005))
            self._enter()

    def _read_now(self, cursors: Mapping[str, int]) -> ReadResult:
        hub = self.hub
        now = hub.clock()
        records: list[Record] = []
        gaps: set[str] = set()
        wiped = hub.generation != self._generation
        self._generation = hub.generation
        for region, cursor in cursors.items():
            stream = hub._streams.get(region)
            if wiped and cursor >= 0:
                gaps.add(region)
            if stream is None:
                continue
            newer = [
                (r, apart.get(self.node, at)) for r, at, apart in stream.entries if r.tick > cursor
            ]
            if cursor >= 0 and newer and newer[0][0].prev not in (cursor, -1):
                gaps.add(region)  # what came between was trimmed away or lost
            for record, readable_at in newer:
                if readable_at > now:
                    break  # later entries wait behind a delayed one, as a stream reads in order
                records.append(record)
        return ReadResult(records, frozenset(gaps))

    async def want(self, wants: Mapping[str, Collection[str]]) -> None:
        hub = self._enter()
        for region, keys in wants.items():
            if keys:
                hub._wanted.setdefault(region, set()).update(keys)

    async def take_wanted(self, regions: Collection[str]) -> dict[str, set[str]]:
        hub = self._enter()
        out = {}
        for region in regions:
            keys = hub._wanted.pop(region, None)
            if keys:
                out[region] = keys
        return out

    async def heartbeat(self, node: str, info: bytes, ttl_ms: int) -> None:
        hub = self._enter()
        hub._members[node] = (info, hub.clock() + ttl_ms / 1000)

    async def members(self) -> dict[str, bytes]:
        hub = self._enter()
        now = hub.clock()
        return {n: info for n, (info, until) in hub._members.items() if until > now}

    async def send(self, node: str, message: bytes) -> None:
        hub = self._enter()
        if node in await self.members():
            hub._inbox.setdefault(node, []).append(message)
            hub._notify()

    async def receive(self, node: str, timeout_s: float) -> list[bytes]:
        hub = self._enter()
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            messages = hub._inbox.pop(node, [])
            left = deadline - asyncio.get_running_loop().time()
            if messages or left <= 0:
                return messages
            async with hub._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(hub._changed.wait(), timeout=min(left, 0.01))
            self._enter()

    async def close(self) -> None:
        return None

    def _enter(self) -> MemoryHub:
        self.hub._check(self.node)
        return self.hub
