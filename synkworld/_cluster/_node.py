"""One process's membership in a shared map: the clock, leases, who owns what, takeovers.

A `ClusterNode` runs beside the tick loop. Every `maintain_every_s` (a third
of the lease's TTL) it renews its leases, says it is alive, reads who holds
every region, and moves towards the assignment that every process computes
from the same member list (`synkworld._regions.assign`):

- a region assigned to it that nobody has held for a whole lease TTL is taken
  over: a new lease at a higher epoch, its objects loaded from the store (the
  last flushed state: what the crashed owner had not written is lost, and
  counted), owned from the next tick;
- a region it owns that is assigned to another live owner is handed over at
  a tick (`ClusterPort.hand_over`): its entry of that tick carries every
  object, and hands the lease to the new owner in the same step;
- a lease it lost (the medium lost its data) is taken again at once if it is
  free, at a higher epoch, without reloading: this world is still right.

Writes to the store carry the region's fencing epoch (`ep`), and wait while
a lease may have expired unnoticed (`write_gate`), so that a process that
stalled past its lease never overwrites its successor.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client.core import Metric

from synkworld._bus_backend import BusBackend, Lease
from synkworld._cluster._port import ClusterPort, ClusterStatistics
from synkworld._errors import (
    BusUnavailableError,
    ConfigError,
    ProtocolError,
    StoreError,
    error_for_code,
)
from synkworld._metrics import families
from synkworld._regions import RegionMap, assign
from synkworld._sessions import Session
from synkworld._world import World
from synkworld.store import Store
from synkworld.store._write_behind import ELSEWHERE, Elsewhere, WriteBehindStatistics

__all__ = ["ClusterNode", "ClusterSettings", "EpochStampedSource", "LostWindow", "region_loader"]

log = logging.getLogger("synkworld.cluster")


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """How a process takes part in a shared map."""

    owner: bool = True
    """Owns regions (simulates, persists, encodes them); False: a gateway that only serves."""
    region_cells: int = 8
    """A region is region_cells x region_cells cells."""
    channel_regions: int = 4
    channel_keys: tuple[str, ...] = ()
    """Channel keys whose objects a takeover loads from the store (a store cannot list
    the keys hashing to a region)."""
    lease_ttl_s: float = 5.0
    deadline_s: float | None = None
    """How long after a tick's start frames wait for other regions' entries (default:
    three quarters of a tick)."""
    migrations_per_round: int = 4
    call_timeout_s: float = 5.0
    leave_timeout_s: float = 10.0
    """How long a graceful shutdown hands regions over before it releases the rest."""

    def __post_init__(self) -> None:
        if not self.lease_ttl_s > 0:
            raise ConfigError("lease_ttl_s must be positive")
        if self.deadline_s is not None and self.deadline_s < 0:
            raise ConfigError("deadline_s must not be negative")


@dataclass(frozen=True, slots=True)
class LostWindow:
    """What a takeover could not recover: its last owner's changes not yet in the store.

    The figures are what that owner last said in its heartbeat (at most a third
    of a lease TTL before it stopped), so they are a lower bound when it kept
    running after that.
    """

    region: str
    node: str
    """The owner that stopped renewing the region."""
    last_tick: int | None
    """The last tick it had published, when it last said."""
    durable_tick: int | None
    """The last tick all of whose changes it had written to the store."""
    pending: int
    """Objects, over all its regions, with changes it had not written: lost."""


class EpochStampedSource:
    """The world's documents with the fencing epoch (`ep`) their store writes carry.

    An object not in the world left for another process's (a handover, a
    migration, a lost lease): every delete of a shared map is marked at its
    commit, so absence never means a delete here.
    """

    def __init__(self, world: World, port: ClusterPort) -> None:
        self.world = world
        self.port = port

    def delete_epochs(self, ids: Collection[str]) -> dict[str, int]:
        """The epoch of each delete: the highest this process wrote the object with."""
        epochs = self.port.deleted_epochs
        return {oid: epochs[oid] for oid in ids if oid in epochs}

    def documents(self, ids: Collection[str]) -> dict[str, dict[str, Any] | Elsewhere | None]:
        docs = self.world.documents(ids)
        epoch_of = self.port.epoch_of
        out: dict[str, dict[str, Any] | Elsewhere | None] = {}
        departed = self.port.departed
        for oid, doc in docs.items():
            if doc is None:
                # Handed over: written once more as it left (see ClusterPort.departed).
                out[oid] = departed.get(oid, ELSEWHERE)
                continue
            obj = self.world.get(oid)
            standing = self.world.published_key(obj) if obj is not None else None
            if standing is not None:
                # Where it stands for its subscribers (and for a takeover's load), not
                # where its position is: they differ while it waits at a border.
                doc["key"] = standing
            if isinstance(doc.get("key"), str):
                doc["ep"] = epoch_of(oid, doc["key"], None)
            out[oid] = doc
        return out


CallRunner = Callable[[str, Mapping[str, Any], str, Any], Awaitable[Any]]


class ClusterNode:
    """This process in a world that several share (see the module)."""

    def __init__(
        self,
        world: World,
        backend: BusBackend,
        *,
        settings: ClusterSettings | None = None,
        tick_rate_hz: float = 20.0,
        node: str | None = None,
        load: Callable[[str], Awaitable[list[dict[str, Any]]]] | None = None,
        sessions: Callable[[], Iterable[Session]] = tuple,
        forget: Callable[[list[str]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        write_state: Callable[[], WriteBehindStatistics] | None = None,
    ) -> None:
        self.settings = settings or ClusterSettings()
        self.world = world
        self.backend = backend
        self.node = node or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.tick_rate_hz = tick_rate_hz
        self.period_s = 1.0 / tick_rate_hz
        self.clock = clock
        self.wall = wall
        self.regions = RegionMap(
            world.grid,
            region_cells=self.settings.region_cells,
            channel_regions=self.settings.channel_regions,
        )
        self._load = load
        deadline_s = (
            self.settings.deadline_s
            if self.settings.deadline_s is not None
            else 0.75 * self.period_s
        )
        self.deadline_s = deadline_s
        self.port = ClusterPort(
            world,
            backend,
            self.regions,
            node=self.node,
            sessions=sessions,
            clock=clock,
            deadline=lambda tick: self.tick_start(tick) + deadline_s,
            lease_ttl_ms=self.ttl_ms,
            forget=forget,
        )
        self.port.schedule = self._next_tick
        self.info: dict[str, Any] = {"owner": self.settings.owner}
        self._t0: float | None = None  # tick 0 on this process's clock
        self._last_tick = 0
        self._unheld_since: dict[str, float] = {}
        self._loading: set[str] = set()
        self._load_tasks: set[asyncio.Future[None]] = set()
        self._max_epoch = 0
        self._leaving = False
        self._other_owners: list[str] = []
        self._ready = False
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing = False
        self._calls: dict[str, asyncio.Future[Any]] = {}
        self._call_ids = itertools.count(1)
        self.run_call: CallRunner | None = None
        self.write_state = write_state
        self._member_info: dict[str, dict[str, Any]] = {}
        self._last_holder: dict[str, str] = {}
        self.lost_windows: list[LostWindow] = []
        self.takeovers = 0

    @property
    def ttl_ms(self) -> int:
        return int(self.settings.lease_ttl_s * 1000)

    # -- the shared clock -------------------------------------------------------------------

    def tick_start(self, tick: int) -> float:
        """When tick `tick` starts on this process's clock."""
        assert self._t0 is not None, "the node has not started"
        return self._t0 + tick * self.period_s

    def _next_tick(self, now: float) -> tuple[int, float]:
        assert self._t0 is not None
        current = math.floor((now - self._t0) / self.period_s)
        tick = max(self._last_tick + 1, current)
        self._last_tick = tick
        return tick, self.tick_start(tick)

    # -- life ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Joins: reads the world's clock, says it is alive, learns who holds what."""
        epoch_ms = await self.backend.clock_epoch(int(self.wall() * 1000))
        self._epoch_ms = epoch_ms
        # Tick 0 on the monotonic clock: the world's epoch, as this machine's wall
        # clock sees it now (machines serving one map keep their clocks in step).
        self._t0 = self.clock() - (self.wall() - epoch_ms / 1000)
        await self._heartbeat()
        await self._refresh_holders()
        self._ready = True
        self.info["ready"] = True
        await self._heartbeat()

    def spawn(self) -> None:
        """Starts the node's background tasks: upkeep and the messages to it."""
        self._tasks = [
            asyncio.create_task(self._upkeep_loop(), name="synkworld-cluster-upkeep"),
            asyncio.create_task(self._inbox_loop(), name="synkworld-cluster-inbox"),
        ]

    def begin_leave(self) -> None:
        """Stops taking regions; the next upkeep rounds hand the owned ones to the others."""
        self._leaving = True
        self.info["leaving"] = True

    async def leave(self, timeout_s: float = 10.0) -> None:
        """Hands every owned region to the other owners, then stops (a planned leave)."""
        self.begin_leave()
        deadline = self.clock() + timeout_s
        with contextlib.suppress(BusUnavailableError):
            await self._heartbeat()
        while self.port.owned and self.clock() < deadline:
            with contextlib.suppress(BusUnavailableError):
                await self.maintain()
            if not self._other_owners:
                break  # nobody to hand them to: the store has them
            await asyncio.sleep(min(0.1, self.settings.lease_ttl_s / 10))
        if self.port.owned:
            log.info("left with %d regions still owned: released", len(self.port.owned))

    async def close(self) -> None:
        """Stops the background tasks and gives up every lease still held."""
        self._closing = True
        tasks, self._tasks = self._tasks, []
        for _ in range(3):
            if not tasks:
                break
            # Cancelled again if need be: a client library's timeout can turn a
            # cancellation into a timeout error, which the loops take as the bus
            # being away (they also stop at their next round, seeing `_closing`).
            for task in tasks:
                task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=1.0)
            tasks = list(pending)
        if tasks:
            log.error("background tasks did not stop: %s", ", ".join(t.get_name() for t in tasks))
        self.info.update(leaving=True, closed=True)
        with contextlib.suppress(BusUnavailableError):
            # Said before the leases go, so that a takeover reads what was left unwritten.
            await self._heartbeat()
            for region, epoch in list(self.port.owned.items()):
                await self.backend.release(region, self.node, epoch)
        await self.backend.close()

    # -- upkeep ------------------------------------------------------------------------

    async def _upkeep_loop(self) -> None:
        every = self.settings.lease_ttl_s / 3
        while not self._closing:
            try:
                await self.maintain()
            except BusUnavailableError as e:
                log.debug("cluster upkeep: %s", e)
            except Exception:
                log.exception("cluster upkeep failed")
            await asyncio.sleep(every)

    async def maintain(self) -> None:
        """One round of upkeep: leases, heartbeat, holders, takeovers, handovers."""
        await self._renew()
        await self._heartbeat()
        await self._refresh_holders()
        # The medium may have lost the world's clock (a wipe): every process puts back
        # the same value, so that tick numbers never change.
        epoch_ms = await self.backend.clock_epoch(self._epoch_ms)
        if epoch_ms != self._epoch_ms:
            log.error(
                "the world's clock epoch on the bus is %d, this process ticks by %d: "
                "a process started while the bus was empty; restart it",
                epoch_ms,
                self._epoch_ms,
            )
        members = {n: _info(raw) for n, raw in (await self.backend.members()).items()}
        self._member_info.update(members)
        owners = [
            n
            for n, info in members.items()
            if info.get("owner") and info.get("ready") and not info.get("leaving")
        ]
        if self.settings.owner and not self._leaving and self.node not in owners:
            owners.append(self.node)
        self._other_owners = [n for n in owners if n != self.node]
        target = assign(self.regions.regions(), owners)
        await self._take_free(target)
        self._hand_out(target, owners)

    async def _renew(self) -> None:
        owned = dict(self.port.owned)
        for region in self._loading:
            lease = self.port.holders.get(region)
            if lease is not None and lease.node == self.node:
                owned[region] = lease.epoch
        if not owned:
            return
        sent = self.clock()
        lost = await self.backend.renew(owned, self.node, self.ttl_ms)
        until = sent + self.settings.lease_ttl_s * 0.9
        for region in owned:
            if region not in lost:
                self.port.valid_until[region] = until
        regained: dict[str, int] = {}
        gone: list[str] = []
        for region in lost:
            # Free again (the medium lost it)? Then this world is still the region's.
            epoch = await self.backend.acquire(region, self.node, self.ttl_ms, self._max_epoch)
            if epoch is None:
                gone.append(region)
            else:
                self._max_epoch = max(self._max_epoch, epoch)
                regained[region] = epoch
                self.port.valid_until[region] = until
        if regained:
            log.warning("leases lost and taken again at new epochs: %s", sorted(regained))
            self.port.renewed(regained)
        if gone:
            self.port.lose(gone, "lease lost")
            for region in gone:
                self.port.valid_until.pop(region, None)

    async def _heartbeat(self) -> None:
        self.info["tick"] = self.port.tick
        if self.write_state is not None:
            state = self.write_state()
            self.info["pending"] = state.pending_objects
            self.info["durable"] = (
                state.oldest_pending_tick - 1
                if state.oldest_pending_tick is not None
                else state.last_marked_tick
            )
        await self.backend.heartbeat(
            self.node, orjson.dumps(self.info), int(self.settings.lease_ttl_s * 2000)
        )

    async def _refresh_holders(self) -> None:
        regions = self.regions.regions()
        table = await self.backend.leases(regions)
        holders = self.port.holders
        now = self.clock()
        for region in regions:
            lease = table.get(region)
            if lease is not None:
                self._max_epoch = max(self._max_epoch, lease.epoch)
                self._last_holder[region] = lease.node
                if region not in self.port.owned:
                    holders[region] = lease
                self._unheld_since.pop(region, None)
            else:
                if region not in self.port.owned:
                    holders.pop(region, None)
                self._unheld_since.setdefault(region, now)

    async def _take_free(self, target: Mapping[str, str]) -> None:
        if not self.settings.owner or self._leaving:
            return
        now = self.clock()
        grace = self.settings.lease_ttl_s
        for region, owner in target.items():
            if owner != self.node or region in self.port.owned or region in self._loading:
                continue
            since = self._unheld_since.get(region)
            # Unheld for a whole TTL: its holder, if alive, would have renewed it.
            if since is None or now - since < grace:
                continue
            epoch = await self.backend.acquire(region, self.node, self.ttl_ms, self._max_epoch)
            if epoch is None:
                continue
            self._max_epoch = max(self._max_epoch, epoch)
            self.port.valid_until[region] = now + grace * 0.9
            self.port.holders[region] = Lease(self.node, epoch)
            self._loading.add(region)
            task = asyncio.ensure_future(self._load_and_own(region, epoch))
            self._load_tasks.add(task)
            task.add_done_callback(self._load_tasks.discard)

    async def loads_done(self) -> None:
        """Returns once the takeovers under way have loaded their regions."""
        while self._load_tasks:
            await asyncio.gather(*self._load_tasks)

    async def _load_and_own(self, region: str, epoch: int) -> None:
        try:
            docs = await self._load(region) if self._load is not None else []
        except StoreError as e:
            log.error("region %s: could not load from the store, giving it up: %s", region, e)
            self._loading.discard(region)
            with contextlib.suppress(BusUnavailableError):
                await self.backend.release(region, self.node, epoch)
            return
        write_epoch = max([epoch, *(int(d.get("ep", 0)) + 1 for d in docs)])
        self._max_epoch = max(self._max_epoch, write_epoch)
        self._loading.discard(region)
        self.takeovers += 1
        self._count_lost(region)
        self.port.take_over(region, epoch, docs, write_epoch)

    def _count_lost(self, region: str) -> None:
        last = self._last_holder.get(region)
        if last is None or last == self.node:
            return
        info = self._member_info.get(last, {})
        window = LostWindow(
            region,
            last,
            info.get("tick"),
            info.get("durable"),
            int(info.get("pending", 0)) if not info.get("closed") else 0,
        )
        self.lost_windows.append(window)
        if window.pending:
            log.warning(
                "region %s taken over from %s, which stopped with %d objects' changes "
                "unwritten (durable through tick %s, published through %s): they are lost",
                region,
                last,
                window.pending,
                window.durable_tick,
                window.last_tick,
            )
        else:
            log.info("region %s taken over from %s; its changes were all written", region, last)

    def _hand_out(self, target: Mapping[str, str], owners: list[str]) -> None:
        alive = set(owners) - {self.node}
        budget = self.settings.migrations_per_round
        for region in sorted(self.port.owned):
            to = target.get(region)
            if to is None or to == self.node or to not in alive:
                continue
            if budget <= 0:
                break
            self.port.hand_over(region, to)
            budget -= 1

    # -- writes ----------------------------------------------------------------------------

    def write_gate(self) -> str | None:
        """Why store writes must wait now (a lease may have expired unnoticed), or None."""
        now = self.clock()
        for region in self.port.owned:
            until = self.port.valid_until.get(region)
            if until is not None and now > until:
                return f"the lease of region {region} may have expired; renewing"
        return None

    # -- calls to the owner of a key --------------------------------------------------------

    def owns(self, key: str) -> bool:
        """Tells whether this process owns the key."""
        return self.port.owns(key)

    async def forward(self, key: str, name: str, args: Mapping[str, Any], session: Session) -> Any:
        """Runs a call on the process that owns `key`; returns its result or raises its error."""
        region = self.regions.region_of(key)
        holder = self.port.holders.get(region)
        if holder is None:
            raise _forward_error("handler_failed", f"nobody owns {key!r} now; try again")
        if holder.node == self.node:
            raise _forward_error("handler_failed", f"{key!r} is owned here: no need to forward")
        cid = f"{self.node}:{next(self._call_ids)}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[cid] = future
        message = {
            "op": "call",
            "id": cid,
            "from": self.node,
            "name": name,
            "args": dict(args),
            "sid": session.sid,
            "identity": _jsonable(session.identity),
        }
        try:
            await self.backend.send(holder.node, orjson.dumps(message))
            async with asyncio.timeout(self.settings.call_timeout_s):
                return await future
        except TimeoutError:
            raise _forward_error(
                "handler_failed", f"{name}: the owner of {key!r} did not answer in time"
            ) from None
        except BusUnavailableError:
            raise _forward_error("handler_failed", f"{name}: the bus is away") from None
        finally:
            self._calls.pop(cid, None)

    async def _inbox_loop(self) -> None:
        while not self._closing:
            try:
                messages = await self.backend.receive(self.node, 1.0)
            except BusUnavailableError:
                await asyncio.sleep(0.5)
                continue
            for raw in messages:
                try:
                    msg = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if msg.get("op") == "call":
                    asyncio.ensure_future(self._answer(msg))  # noqa: RUF006
                elif msg.get("op") == "reply":
                    future = self._calls.get(str(msg.get("id")))
                    if future is not None and not future.done():
                        if "error" in msg:
                            future.set_exception(
                                _forward_error(msg["error"], msg.get("message", ""))
                            )
                        else:
                            future.set_result(msg.get("result"))

    async def _answer(self, msg: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"op": "reply", "id": msg.get("id")}
        try:
            if self.run_call is None:
                raise _forward_error("no_handler", "this process runs no calls")
            reply["result"] = await self.run_call(
                str(msg["name"]), msg.get("args") or {}, str(msg.get("sid")), msg.get("identity")
            )
        except ProtocolError as e:
            reply["error"], reply["message"] = e.code, str(e)
        except Exception as e:
            log.exception("forwarded call %r failed", msg.get("name"))
            reply["error"], reply["message"] = "handler_failed", f"{type(e).__name__}"
        with contextlib.suppress(BusUnavailableError):
            await self.backend.send(str(msg.get("from")), orjson.dumps(reply, default=str))

    # -- statistics -------------------------------------------------------------------------

    def statistics(self) -> ClusterStatistics:
        """The port's counters."""
        return self.port.statistics()

    def metric_families(self) -> list[Metric]:
        """The bus figures for /metrics."""
        st = self.port.statistics()
        return families(
            [
                (
                    "synkworld_bus_regions_owned",
                    "gauge",
                    "Regions this process owns.",
                    st.regions_owned,
                ),
                (
                    "synkworld_bus_regions_late",
                    "gauge",
                    "Regions whose entry missed the last deadline (stale here).",
                    st.regions_late,
                ),
                ("synkworld_bus_appends_total", "counter", "Ticks appended.", st.appends),
                (
                    "synkworld_bus_append_failures_total",
                    "counter",
                    "Appends that failed (the bus away).",
                    st.append_failures,
                ),
                (
                    "synkworld_bus_append_seconds_total",
                    "counter",
                    "Time spent appending (divide by appends: latency).",
                    st.append_seconds,
                ),
                ("synkworld_bus_reads_total", "counter", "Stream reads.", st.reads),
                (
                    "synkworld_bus_read_seconds_total",
                    "counter",
                    "Time spent reading (divide by reads: latency).",
                    st.read_seconds,
                ),
                (
                    "synkworld_bus_appended_bytes_total",
                    "counter",
                    "Bytes appended (divide by appends: bytes per tick).",
                    st.bytes_appended,
                ),
                ("synkworld_bus_read_bytes_total", "counter", "Bytes read.", st.bytes_read),
                (
                    "synkworld_bus_resyncs_caused_total",
                    "counter",
                    "Sessions owed a resync by a stale or lost region.",
                    st.resyncs_owed,
                ),
                (
                    "synkworld_bus_handovers_total",
                    "counter",
                    "Objects handed over.",
                    st.handovers_sent,
                ),
                (
                    "synkworld_bus_handovers_adopted_total",
                    "counter",
                    "Objects adopted from other processes.",
                    st.handovers_adopted,
                ),
                (
                    "synkworld_bus_outbox",
                    "gauge",
                    "Handovers not yet acknowledged.",
                    st.outbox,
                ),
                ("synkworld_bus_regions_lost_total", "counter", "Leases lost.", st.regions_lost),
                ("synkworld_bus_gaps_total", "counter", "Stream gaps seen.", st.gaps),
                ("synkworld_bus_takeovers_total", "counter", "Regions taken over.", self.takeovers),
                (
                    "synkworld_bus_lost_on_takeover_total",
                    "counter",
                    "Objects with unwritten changes when their owner stopped (taken over).",
                    sum(w.pending for w in self.lost_windows),
                ),
            ]
        )


def region_loader(
    store: Store, regions: RegionMap, channel_keys: Collection[str] = ()
) -> Callable[[str], Awaitable[list[dict[str, Any]]]]:
    """What a takeover calls to load a region's objects from the store.

    By key, not by position: an object waiting at a border stands (and is
    stored, see `EpochStampedSource`) under a key of its own region while its
    position is already in the next one, which must not load it too.
    """

    async def load(region: str) -> list[dict[str, Any]]:
        if regions.box(region) is None:
            keys = [k for k in channel_keys if regions.region_of(k) == region]
        else:
            keys = regions.keys_in(region)
        return await store.load(keys=keys) if keys else []

    return load


def _info(raw: bytes) -> dict[str, Any]:
    try:
        info = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return info if isinstance(info, dict) else {}


def _jsonable(value: Any) -> Any:
    try:
        orjson.dumps(value)
    except TypeError:
        return str(value)
    return value


def _forward_error(code: str, message: str) -> ProtocolError:
    return error_for_code(code, message)
