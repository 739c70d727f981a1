"""The JavaScript client against two real processes: a walker crossing their border.

Two `synkworld serve` owners of the walkers' map share a real redis-server and
one SQLite store, seeded with a single walker that runs back and forth along
y = 450 at a known speed. With regions of 2 x 2 cells, the row of regions it
walks through is split between the owners at x = 400: the two regions left of
it belong to one process, the two right of it to the other (the test checks
that in the leases, in Redis). So every few seconds the walker is handed over
from one process to the other.

The library (web/synkworld.js) runs in Node through
web/testing/conformance-client.mjs, one client connected to each process, both
viewing the whole map. While the walker crosses the border in both directions
the test polls both caches (sync, then dump) and asks: does each client hold
the walker, and only it, at every poll since it first appeared, as the same
instance (one `add` event, no `rem`, no teardown hook, the same serial)? Do the
two clients agree on its state whenever they hold the same version of it? And
did the processes send no resync but those that a late region explains (the
client does not report resyncs, and one would keep the instance: /metrics
counts them)? On an idle machine there are none; a busy one can make a
process miss the read deadline now and then, which docs/cluster.md answers
with a resync.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from synkworld.store import SQLiteStore, WriteBatch
from tests.bus.support import RedisServer, free_port
from tests.cluster.test_processes import Proc, healthy, serve, stop
from tests.cluster.walkers_app import CELL, SIZE
from tests.web.test_conformance import NodeClient, node_client

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

WALKER = "border-walker"
Y = 450.0  # cell row 4, region row 2: regions main/0/2, main/1/2 | main/2/2, main/3/2
BORDER = 400.0  # between main/1/2 and main/2/2
SPEED = 300.0  # map units per second: about 15 a tick at 20 Hz; the border every 2.7 s
REGION_CELLS = 2  # what `serve` passes
REGIONS = 16 + 4  # 4 x 4 map regions and 4 channel regions
CROSSINGS = 2  # each client must see the walker cross both ways
LATE = "synkworld_bus_resyncs_caused_total"  # sessions owed a resync by a late region
RESYNC_FIGURES = [
    "synkworld_resyncs_total",
    LATE,
    "synkworld_bus_gaps_total",
    "synkworld_bus_regions_lost_total",
    "synkworld_ticks_behind_total",
]


def cell_key(x: float) -> str:
    """The key of the walker's cell at `x` (on its row)."""
    return f"main:{int(x // CELL)}:{int(Y // CELL)}"


def walker_document() -> dict[str, object]:
    x = 150.0
    return {
        "_id": WALKER,
        "t": "walker",
        "key": cell_key(x),
        "v": 1,
        "x": x,
        "y": Y,
        "vx": SPEED,
        "vy": 0.0,
    }


def region_of(key: str) -> str:
    _, cx, cy = key.split(":")
    return f"main/{int(cx) // REGION_CELLS}/{int(cy) // REGION_CELLS}"


async def leases(url: str) -> dict[str, str]:
    """Region -> the node holding its lease, read from Redis (`lease:<region>` = node|epoch)."""
    r = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        prefix = "sw:walkers:lease:"
        keys = sorted(str(k) for k in await r.keys(prefix + "*"))
        values = [None if v is None else str(v) for v in await r.mget(keys)] if keys else []
    finally:
        await r.aclose()
    return {
        k.removeprefix(prefix): v.rpartition("|")[0]
        for k, v in zip(keys, values, strict=True)
        if v is not None
    }


async def metrics(http: aiohttp.ClientSession, proc: Proc) -> dict[str, float]:
    """The unlabelled figures of a process's /metrics."""
    async with http.get(proc.url + "/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            out[name] = float(value)
    return out


async def split_ownership(
    http: aiohttp.ClientSession, procs: list[Proc], url: str
) -> dict[str, str]:
    """Waits until the two owners hold half the regions each, stably; the leases then."""
    deadline = time.monotonic() + 40
    previous: dict[str, str] = {}
    last = ""
    while time.monotonic() < deadline:
        counts = [int(str((await healthy(http, p))["regions"])) for p in procs]
        held = await leases(url)
        last = f"regions owned {counts}, leases {held}"
        if counts == [REGIONS // 2] * 2 and len(held) == REGIONS and held == previous:
            return held
        previous = held
        await asyncio.sleep(0.3)
    raise AssertionError(f"the owners never split the map: {last}")


@dataclass
class Watch:
    """What one client showed of the walker, poll after poll."""

    name: str
    owners: dict[str, str]
    serial: int | None = None
    events: list[list[Any]] = field(default_factory=list)
    hooks: list[list[Any]] = field(default_factory=list)
    sides: list[str] = field(default_factory=list)  # the owner of its key, at each change
    polls: int = 0
    off_cell: int = 0  # polls where its key is not the cell of its position
    whole_map: bool = False  # every cell held

    @property
    def crossings(self) -> int:
        return len(self.sides) - 1

    def check(self, dump: dict[str, Any]) -> dict[str, Any] | None:
        """One dump: the walker's state [t, v, state, key, serial], or None before it appears."""
        where = f"{self.name}, poll {self.polls}"
        self.polls += 1
        assert dump["state"] == "ready", (where, dump["state"], dump["closes"])
        assert not dump["errors"], (where, dump["errors"])
        assert not dump["closes"], (where, dump["closes"])
        assert dump["stale"] == 0, where
        mine = [e for e in dump["events"] if e[1] == WALKER]
        self.events += mine
        self.hooks += [h for h in dump["hooks"] if h[1] == WALKER]
        for e in mine:
            assert e[0] == "add", f"{where}: the walker was removed: {e}; all: {self.events}"
            assert self.serial is None, f"{where}: the walker was built again: {self.events}"
            self.serial = e[2]
        assert [h for h in self.hooks if h[0] != "add"] == [], (where, self.hooks)
        assert len(self.hooks) <= 1, (where, self.hooks)
        objects = dump["objects"]
        if self.serial is None:
            assert WALKER not in objects, (where, objects)
            return None
        # Exactly once: the map holds one object, the walker, as the same instance.
        assert list(objects) == [WALKER], (where, objects)
        t, _v, state, key, serial = objects[WALKER]
        assert t == "walker" and serial == self.serial, (where, objects[WALKER], self.serial)
        # Cells of the other process come a tick or so later (their owner's snapshot);
        # once every cell of the map is held, all stay held.
        self.whole_map = self.whole_map or len(dump["held"]) == 64
        assert not self.whole_map or len(dump["held"]) == 64, (where, dump["held"])
        assert state["y"] == Y, (where, state)
        if key != cell_key(state["x"]):
            self.off_cell += 1
        side = self.owners[region_of(key)]
        if not self.sides or self.sides[-1] != side:
            self.sides.append(side)
        return dict(objects[WALKER][2]) | {"v": objects[WALKER][1], "key": key}


async def poll(clients: list[NodeClient]) -> list[dict[str, Any]]:
    """Both clients synced (every frame sent before the ping applied), then dumped."""
    await asyncio.gather(*(c.cmd("sync") for c in clients))
    return list(await asyncio.gather(*(c.cmd("dump") for c in clients)))


async def test_js_clients_on_two_processes_see_a_walker_cross_their_border(
    tmp_path: Path, node: str
) -> None:
    started = time.monotonic()
    redis = RedisServer(free_port(), tmp_path / "redis.log")
    redis.start()
    db = tmp_path / "world.sqlite3"
    store = SQLiteStore(db)
    await store.apply(WriteBatch(upserts=[walker_document()]))
    await store.close()
    procs: list[Proc] = []
    try:
        for name in ("p0", "p1"):
            procs.append(serve(name, free_port(), redis.url, db))
        async with aiohttp.ClientSession() as http:
            owners = await split_ownership(http, procs, redis.url)
            row = [owners[region_of(cell_key(x))] for x in range(0, int(SIZE), int(CELL))]
            left, right = (
                owners[region_of(cell_key(BORDER - 1))],
                owners[region_of(cell_key(BORDER))],
            )
            assert left != right and row == [left] * 4 + [right] * 4, row
            ready = time.monotonic()

            async with (
                # Each asks for protocol v2, the library's default, and gets v1: a
                # cluster's processes speak v1 only.
                node_client(
                    node, procs[0].url, tmp_path, types="walker", name="p0", version=2
                ) as a,
                node_client(
                    node, procs[1].url, tmp_path, types="walker", name="p1", version=2
                ) as b,
            ):
                clients = [a, b]
                assert a.hello["proto"] == b.hello["proto"] == 1
                for c in clients:
                    await c.cmd("view", map="main", rects=[[0, 0, SIZE, SIZE]], margin=0)
                watches = [Watch(p.name, owners) for p in procs]
                before = [await metrics(http, p) for p in procs]

                # Polls where both held the same version of the walker (and so must show
                # the same state), by the owner of the cell it was in.
                same: dict[str, int] = {}

                def compare(sa: dict[str, Any] | None, sb: dict[str, Any] | None) -> bool:
                    if sa is None or sb is None or sa["v"] != sb["v"]:
                        return False  # a tick apart: each holds its own tick's position
                    assert sa == sb, f"same version, different states: {sa} {sb}"
                    side = owners[region_of(sa["key"])]
                    same[side] = same.get(side, 0) + 1
                    return True

                deadline = time.monotonic() + 30
                while any(w.crossings < CROSSINGS for w in watches) or len(same) < 2:
                    assert time.monotonic() < deadline, ([(w.name, w.sides) for w in watches], same)
                    dumps = await poll(clients)
                    compare(*(w.check(d) for w, d in zip(watches, dumps, strict=True)))
                    await asyncio.sleep(0.05)
                crossed = time.monotonic()

                # They converge: both at one version, with one state.
                for _ in range(100):
                    dumps = await poll(clients)
                    if compare(*(w.check(d) for w, d in zip(watches, dumps, strict=True))):
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError("the two clients never held the same version")

                after = [await metrics(http, p) for p in procs]
                for c in clients:
                    await c.cmd("close")

            # No resync but those of a region's entry late (docs/cluster.md, faults: on a
            # busy machine a process can miss the read deadline); none from the handovers.
            for p, m1 in zip(procs, after, strict=True):
                figures = {k: m1[k] for k in RESYNC_FIGURES}
                assert figures["synkworld_resyncs_total"] <= figures[LATE], (p.name, figures)
                assert figures["synkworld_bus_gaps_total"] == 0, (p.name, figures)
                assert figures["synkworld_bus_regions_lost_total"] == 0, (p.name, figures)

            # The walker was handed over each way through Redis, and the map stayed split.
            def grown(name: str) -> list[float]:
                return [m1[name] - m0[name] for m0, m1 in zip(before, after, strict=True)]

            sent = grown("synkworld_bus_handovers_total")
            adopted = grown("synkworld_bus_handovers_adopted_total")
            assert all(n >= 1 for n in sent + adopted), (sent, adopted)
            assert await leases(redis.url) == owners
            for w in watches:
                assert w.serial is not None and len(w.events) == 1, (w.name, w.events)
                assert w.hooks == [["add", WALKER]], (w.name, w.hooks)
                assert w.crossings >= CROSSINGS and len(set(w.sides)) == 2, (w.name, w.sides)
                assert w.whole_map, w.name
            print(
                f"\nownership split after {ready - started:.1f} s; crossings seen "
                f"{[w.crossings for w in watches]} in {crossed - ready:.1f} s over "
                f"{[w.polls for w in watches]} polls; {same} polls with the same version by side; "
                f"key not the position's cell in {[w.off_cell for w in watches]} polls; "
                f"handovers sent {sent}, adopted {adopted}; resyncs (late regions) "
                f"{[after[i]['synkworld_resyncs_total'] for i in range(2)]}, ticks behind "
                f"{[after[i]['synkworld_ticks_behind_total'] for i in range(2)]}"
            )
    finally:
        stop(procs)
        redis.stop()
    print(
        f"stopped after {time.monotonic() - started:.1f} s; exit codes "
        f"{[p.process.returncode for p in procs]}"
    )
