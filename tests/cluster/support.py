"""Several processes on one map, in one event loop: worlds, tick loops and nodes over a hub.

`InProcessCluster` runs N "processes" (a world, its tick loop, its cluster
node) over one `MemoryHub` with a fake clock, tick by tick and phase by
phase: every process publishes tick n before any builds its frames of tick
n, so that runs are deterministic. Sessions on any process get reference
clients; `check` compares every client with the truth (the union of the
owners' worlds under its keys) and every id with "exactly one world".
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from synkworld import GridMap, Limits, Session, SynkObject, TickLoop, World
from synkworld._cluster._node import ClusterNode, ClusterSettings
from synkworld.bus import MemoryHub
from synkworld.store import MemoryStore, Region
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
    clients: list[Client] = field(default_factory=list)


class InProcessCluster:
    """N processes on one map over an in-process bus (see the module)."""

    def __init__(
        self,
        owners: int = 2,
        gateways: int = 0,
        *,
        store: MemoryStore | None = None,
        region_cells: int = 2,
    ) -> None:
        self.clock = FakeClock(start=1000.0)
        self.hub = MemoryHub(clock=self.clock, maxlen=400)
        self.store = store or MemoryStore()
        self.region_cells = region_cells
        self.procs: list[Proc] = []
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

        async def load(region: str) -> list[dict[str, Any]]:
            box = node.regions.box(region)
            if box is None:
                return []
            return await self.store.load(
                region=Region(box.map, box.x0, box.y0, box.x1, box.y1, box.pos_fields)
            )

        node = ClusterNode(
            world,
            self.hub.backend(name),
            settings=settings,
            tick_rate_hz=RATE,
            node=name,
            load=load,
            sessions=lambda: holder[0].sessions.values(),
            clock=self.clock,
            wall=lambda: self.clock() + 1_700_000_000.0,
        )
        loop = TickLoop(world, tick_rate_hz=RATE, bus=node.port, clock=self.clock)
        holder.append(loop)
        return Proc(name, world, loop, node)

    # -- running -----------------------------------------------------------------------

    async def start(self) -> None:
        """Every process joins; the owners share the map out (after the takeover grace)."""
        for p in self.procs:
            await p.node.start()
        self.tick = int((self.clock() - self.procs[0].node.tick_start(0)) * RATE)
        await self.maintain()
        await self.run(int(TTL * RATE) + 2)
        await self.maintain()
        await self.settle()

    async def maintain(self, procs: list[Proc] | None = None) -> None:
        for p in procs or self.procs:
            await p.node.maintain()
        for p in procs or self.procs:
            await p.node.loads_done()

    async def settle(self) -> None:
        """Ticks until no takeover or handover is under way."""
        for _ in range(50):
            await self.run(1)
            if not any(p.node._loading or p.node.port._takeovers for p in self.procs):
                return

    async def run(
        self, ticks: int, *, before_tick: Callable[[int], None] | None = None, check: bool = False
    ) -> None:
        """Runs ticks on every process, phase by phase; checks the clients after each."""
        for _ in range(ticks):
            self.tick += 1
            n = self.tick
            node0 = self.procs[0].node
            self.clock.now = max(self.clock.now, node0.tick_start(n))
            if before_tick is not None:
                before_tick(n)
            published = [await p.loop.publish_tick(n) for p in self.procs]
            for p, pub in zip(self.procs, published, strict=True):
                await p.loop.frames_tick(pub)
            self.read_frames()
            if check:
                self.check()
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
        for p in self.procs:
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
        for p in self.procs:
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
        for p in self.procs:
            owned = {k for k in keys if p.node.port.owns(k)}
            out.update(world_truth(p.world, owned))
        return out

    def check(self, *, twins: bool = True) -> None:
        """Every settled client equals the truth; every id lives in one world; twins agree."""
        seen: dict[str, str] = {}
        for p in self.procs:
            for o in p.world:
                assert o.id not in seen, f"{o.id} lives in {seen[o.id]} and {p.name}"
                seen[o.id] = p.name
        for p in self.procs:
            for c in p.clients:
                if c.session.resync_owed or c.session.lagging:
                    continue
                assert c.mirror.held == c.session.held
                assert c.mirror.view() == self.truth(c.session.held), (
                    f"{c.session.sid} on {p.name} at tick {self.tick}"
                )
                if twins and c.twin is not None:
                    assert c.frames == c.twin.frames, f"twins {c.session.sid} {c.twin.session.sid}"
