"""Several processes on one map, in one event loop: worlds, tick loops and nodes over a hub.

`InProcessCluster` runs N "processes" (a world, its tick loop, its cluster
node) over one `MemoryHub` with a fake clock, tick by tick and phase by
phase: every process publishes tick n before any builds its frames of tick
n, so that runs are deterministic. Sessions on any process get reference
clients; `check` compares every client with the truth (the union of the
owners' worlds under its keys) and every id with "exactly one world".
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from synkworld import (
    BusUnavailableError,
    GridMap,
    Limits,
    Persistence,
    Session,
    SynkObject,
    TickLoop,
    World,
)
from synkworld._cluster._node import (
    ClusterNode,
    ClusterSettings,
    EpochStampedSource,
    region_loader,
)
from synkworld._regions import RegionMap
from synkworld.bus import MemoryHub
from synkworld.store import MemoryStore
from synkworld.testing import FakeClock, ReferenceClient, world_truth

CELL = 10.0
SIZE = 80.0  # 8 x 8 cells; regions of 2 x 2 cells: 16 regions
TTL = 1.0
RATE = 20.0


class Walker(SynkObject, type="cl-walker"):
    x: float
    y: float
    hp: int = 0


def grid_map() -> GridMap:
    return GridMap("main", cell_size=CELL, bounds=(0, 0, SIZE, SIZE), precision=1)


@dataclass
class Client:
    """A session on one process, with its reference client and the frames it got."""

    proc: Proc
    session: Session
    mirror: ReferenceClient
    frames: list[bytes] = field(default_factory=list)
    twin: Client | None = None


@dataclass
class Proc:
    name: str
    world: World
    loop: TickLoop
    node: ClusterNode
    persistence: Persistence
    clients: list[Client] = field(default_factory=list)
    stalled: bool = False


class InProcessCluster:
    """N processes on one map over an in-process bus (see the module)."""

    def __init__(
        self,
        owners: int = 2,
        gateways: int = 0,
        *,
        store: MemoryStore | None = None,
        region_cells: int = 2,
        flush_every: int = 1,
    ) -> None:
        self.clock = FakeClock(start=1000.0)
        self.hub = MemoryHub(clock=self.clock, maxlen=400)
        self.store = store or MemoryStore()
        self.region_cells = region_cells
        # Ticks between two store flushes: what a crash loses is the last ones' changes.
        self.flush_every = flush_every
        self.procs: list[Proc] = []
        self.gone: list[Proc] = []
        self.tick = 0
        self._sids = itertools.count(1)
        for i in range(owners + gateways):
            self.procs.append(self._proc(f"p{i}", owner=i < owners))

    def _proc(self, name: str, *, owner: bool) -> Proc:
        world = World(grid_map())
        settings = ClusterSettings(
            owner=owner, region_cells=self.region_cells, lease_ttl_s=TTL, deadline_s=0.0
        )
        holder: list[TickLoop] = []

        node = ClusterNode(
            world,
            self.hub.backend(name),
            settings=settings,
            tick_rate_hz=RATE,
            node=name,
            load=region_loader(self.store, RegionMap(world.grid, region_cells=self.region_cells)),
            sessions=lambda: holder[0].sessions.values(),
            clock=self.clock,
            wall=lambda: self.clock() + 1_700_000_000.0,
        )
        loop = TickLoop(world, tick_rate_hz=RATE, bus=node.port, clock=self.clock)
        holder.append(loop)
        persistence = Persistence(
            world,
            self.store,
            source=EpochStampedSource(world, node.port),
            write_gate=node.write_gate,
            retry_initial_s=0.001,
            retry_max_s=0.01,
        )
        node.port.forget = persistence.writer.forget
        node.port.rewrite = lambda ids: persistence.writer.mark(world.tick, ids, ())
        node.write_state = persistence.writer.statistics
        loop.on_changes(persistence.on_changes)
        return Proc(name, world, loop, node, persistence)

    # -- running -----------------------------------------------------------------------

    async def start(self) -> None:
        """Every process joins; the owners share the map out (after the takeover grace)."""
        for p in self.procs:
            await p.persistence.writer.__aenter__()
            await p.node.start()
        self.tick = int((self.clock() - self.procs[0].node.tick_start(0)) * RATE)
        await self.maintain()
        await self.run(int(TTL * RATE) + 2)
        await self.maintain()
        await self.settle()

    async def stop(self) -> None:
        for p in self.procs:
            await p.persistence.writer.__aexit__(None, None, None)

    @property
    def live(self) -> list[Proc]:
        return [p for p in self.procs if not p.stalled]

    async def maintain(self, procs: list[Proc] | None = None) -> None:
        for p in procs or self.live:
            with contextlib.suppress(BusUnavailableError):  # as the upkeep loop does
                await p.node.maintain()
        for p in procs or self.live:
            await p.node.loads_done()

    async def settle(self) -> None:
        """Ticks until no takeover or handover is under way."""
        for _ in range(50):
            await self.run(1)
            if not any(p.node._loading or p.node.port._takeovers for p in self.procs):
                return

    async def run(
        self,
        ticks: int,
        *,
        before_tick: Callable[[int], None] | None = None,
        check: bool = False,
        twins: bool = True,
        skips: Callable[[Proc, int], bool] | None = None,
    ) -> None:
        """Runs ticks on every process, phase by phase; checks the clients after each.

        `skips(proc, n)` true: that process runs late and skips tick n (its next
        step delivers that tick's frames from the others' entries, as a process
        that fell behind does).
        """
        for _ in range(ticks):
            self.tick += 1
            n = self.tick
            node0 = self.procs[0].node
            self.clock.now = max(self.clock.now, node0.tick_start(n))
            if before_tick is not None:
                before_tick(n)
            live = [p for p in self.live if skips is None or not skips(p, n)]
            published = [await p.loop.publish_tick(n) for p in live]
            for p, pub in zip(live, published, strict=True):
                await p.loop.frames_tick(pub)
            self.read_frames()
            if n % self.flush_every == 0:
                for p in live:
                    await p.persistence.flush()
            if check:
                self.check(twins=twins, procs=live)
            if n % int(TTL * RATE / 3) == 0:
                await self.maintain()

    # -- clients -----------------------------------------------------------------------

    def connect(self, proc: Proc) -> Client:
        session = Session(
            f"s{next(self._sids)}", proc.world.grid, limits=Limits(send_queue_max_frames=10_000)
        )
        proc.loop.attach(session)
        mirror = ReferenceClient({"main": proc.world.grid.map("main").describe()})
        client = Client(proc, session, mirror)
        proc.clients.append(client)
        return client

    def twins(self, a: Proc, b: Proc) -> tuple[Client, Client]:
        x, y = self.connect(a), self.connect(b)
        x.twin, y.twin = y, x
        return x, y

    def read_frames(self) -> None:
        for p in self.live:
            for c in p.clients:
                while (frame := c.session.pop()) is not None:
                    c.frames.append(frame)
                    c.mirror.apply(frame)

    def reset_twins(self) -> None:
        """Forgets the frames so far: twins are compared from here on (after a fault)."""
        for p in self.procs:
            for c in p.clients:
                c.frames.clear()

    def find(self, oid: str) -> SynkObject | None:
        """The object with this id, in whichever world holds it."""
        for p in self.live:
            obj = p.world.get(oid)
            if obj is not None:
                return obj
        return None

    # -- the invariants ------------------------------------------------------------------

    def owner_world(self, key: str) -> World | None:
        for p in self.procs:
            if p.node.port.owns(key):
                return p.world
        return None

    def truth(self, keys: set[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in self.live:
            owned = {k for k in keys if p.node.port.owns(k)}
            out.update(world_truth(p.world, owned))
        # Handed over and not adopted yet (its entry is late): the frames already show
        # it at its destination, as it is.
        for oid, doc in self.in_transit().items():
            if doc["key"] in keys:
                state = {"x": round(doc["x"], 1), "y": round(doc["y"], 1), "hp": doc["hp"]}
                out[oid] = (doc["t"], doc["v"], state, doc["key"])
        return out

    def in_transit(self) -> dict[str, dict[str, Any]]:
        """Objects released by their source and not in any world yet.

        A source's outbox may still list an object whose adopter has acknowledged it
        (the source skipped the tick that read the acknowledgement): the entries on
        the bus say which were adopted.
        """
        acked = self._acknowledged()
        docs: dict[str, dict[str, Any]] = {}
        for p in self.live:
            for oid, sent in p.node.port._outbox.items():
                # The frames showed it arrive; otherwise it shows when adopted.
                if not sent.shown or (oid, sent.src_region, sent.tick) in acked:
                    continue
                # Handed on again before the first handover's acknowledgement came back
                # (its adopter's entries are late): the newer handover is where it is.
                if oid not in docs or sent.doc["v"] > docs[oid]["v"]:
                    docs[oid] = sent.doc
        for p in self.live:
            for oid in [oid for oid in docs if p.world.get(oid) is not None]:
                del docs[oid]
        return docs

    def _acknowledged(self) -> set[tuple[str, str, int]]:
        """(id, source region, source tick) of every adoption an entry on the bus acknowledges.

        Not (id, key): an object can be handed into the same key again, and an old
        acknowledgement must not count for the new handover.
        """
        out: set[tuple[str, str, int]] = set()
        for stream in self.hub._streams.values():
            for record, _, _ in stream.entries:
                header = orjson.loads(record.fields[b"h"])
                out.update((str(i), str(r), int(t)) for i, _, r, t in header.get("ad", ()))
        return out

    def ids(self) -> dict[str, str]:
        """Every live object's id, and the process whose world holds it; no id twice."""
        seen: dict[str, str] = {}
        for p in self.live:
            for o in p.world:
                assert o.id not in seen, f"{o.id} lives in {seen[o.id]} and {p.name}"
                seen[o.id] = p.name
        return seen

    def placed(self) -> set[str]:
        """Every id in a world, handed over and not yet adopted, or in an append's limbo."""
        limbo = {
            h.id for p in self.live for handovers in p.node.port._limbo.values() for h in handovers
        }
        inside = set(self.ids())
        assert not limbo & inside, f"in limbo and in a world: {sorted(limbo & inside)}"
        return inside | limbo | set(self.in_transit())

    def owed(self) -> int:
        return sum(
            1 for p in self.live for c in p.clients if c.session.resync_owed or c.session.lagging
        )

    # -- faults and membership ---------------------------------------------------------------

    async def kill(self, proc: Proc) -> None:
        """The process dies: no ticks, heartbeats or renewals; what it had not written is lost."""
        self.procs.remove(proc)
        self.gone.append(proc)
        await proc.persistence.writer.abandon()

    async def join(self, *, owner: bool = True) -> Proc:
        """A new process joins the map."""
        proc = self._proc(f"p{len(self.procs) + len(self.gone)}", owner=owner)
        await proc.persistence.writer.__aenter__()
        await proc.node.start()
        self.procs.append(proc)
        return proc

    async def leave(self, proc: Proc, ticks: int = 60) -> None:
        """A planned leave: the process hands every region over, then goes."""
        proc.node.begin_leave()
        await proc.node.maintain()
        for _ in range(ticks):
            if not proc.node.port.owned:
                break
            await self.run(1)
            await self.maintain()
        assert not proc.node.port.owned
        await proc.persistence.flush()
        await proc.node.close()
        self.procs.remove(proc)
        self.gone.append(proc)

    def check(self, *, twins: bool = True, procs: list[Proc] | None = None) -> None:
        """Every settled client equals the truth; every id lives in one world; twins agree.

        The clients checked are those of `procs` (default: every live process).
        """
        self.ids()
        for p in self.live if procs is None else procs:
            for c in p.clients:
                if c.session.resync_owed or c.session.lagging:
                    continue
                assert c.mirror.held == c.session.held
                seen, truth = c.mirror.view(), self.truth(c.session.held)
                assert seen == truth, (
                    f"{c.session.sid} on {p.name} at tick {self.tick}: " + _difference(seen, truth)
                )
                if twins and c.twin is not None and c.twin.proc in self.live:
                    assert c.frames == c.twin.frames, f"twins {c.session.sid} {c.twin.session.sid}"


def _difference(seen: dict[str, Any], truth: dict[str, Any]) -> str:
    extra = sorted(set(seen) - set(truth))
    missing = sorted(set(truth) - set(seen))
    wrong = sorted(k for k in set(seen) & set(truth) if seen[k] != truth[k])
    return f"extra {extra}, missing {missing}, wrong " + ", ".join(
        f"{k}: {seen[k]} != {truth[k]}" for k in wrong[:5]
    )
