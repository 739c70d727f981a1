"""Cross-language conformance: the JavaScript library and the Python reference client agree.

A real server runs in-process and the test drives its ticks. Two clients connect to
it: the library's `Client` in Node (web/testing/conformance-client.mjs, over the `ws`
package) and an aiohttp WebSocket feeding `tests.reference_client.ReferenceClient`.
Both get the same subscription changes at the same points of a randomized run of
creates, changes, moves (within a cell, to a neighbour, across the map, into keys
being subscribed in the same tick), deletes, views, subs and lag bursts that force a
`resync`. After every tick both caches must equal each other, and, when the server
owes no resync, the server's truth for the session's held keys; the objects the
library builds and tears down must be the ones the reference client does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from synkworld import GridMap, Limits, Server, SynkObject, World
from synkworld._protocol import encode_pong
from synkworld._sessions import Session
from synkworld._wire_v2 import encode_message
from synkworld.testing import ReferenceClient, ReferenceClientV2, start_process_async, world_truth
from tests.web.support import WEB

pytestmark = pytest.mark.timeout(60)

SCRIPT = WEB / "testing" / "conformance-client.mjs"
TICKS = 120
SEED = 20240611


class Ship(SynkObject, type="web-ship"):
    x: float
    y: float
    hp: int = 10
    name: str = ""


class Buoy(SynkObject, type="web-buoy", position=("px", "py")):
    px: float
    py: float
    lit: bool = False


class Note(SynkObject, type="web-note"):
    text: str


# "main": 10 x 10 cells of 100, precision 1. "sea": 10 x 10 cells of 50 from an
# origin of (-500, -500), positions in fields px/py with precision 0, so that the
# library must take `mv` fields from the map named by the batch key.
SEA_SPEC: dict[str, Any] = {
    "cell_size": 50,
    "origin": (-500, -500),
    "bounds": (-500, -500, 0, 0),
    "pos_fields": ("px", "py"),
    "precision": 0,
}
ROOMS = ["room0", "room1", "room2"]
TRACKED_TYPES = "web-ship,web-buoy"  # web-note objects stay plain SynkObjects


def make_world() -> World:
    n = iter(range(1, 10**9))
    return World(
        [
            GridMap("main", cell_size=100, bounds=(0, 0, 1000, 1000)),
            GridMap("sea", **SEA_SPEC),
        ],
        id_factory=lambda: f"w{next(n)}",
    )


class NodeClient:
    """The conformance client in Node; one JSON command in, one JSON line out."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: Path) -> None:
        self.proc = proc
        self.stderr = stderr
        self.hello: dict[str, Any] = {}

    async def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout=15)
        except TimeoutError:
            raise AssertionError(f"the Node client did not answer; {self.log()}") from None
        if not line:
            raise AssertionError(f"the Node client exited ({self.proc.returncode}); {self.log()}")
        msg: dict[str, Any] = json.loads(line)
        return msg

    async def cmd(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        await self.proc.stdin.drain()
        answer = await self.read()
        if not answer.get("ok"):
            raise AssertionError(f"Node client, {cmd}: {answer.get('error')}; {self.log()}")
        return answer

    def log(self) -> str:
        return "stderr: " + self.stderr.read_text(errors="replace")[-3000:]


@contextlib.asynccontextmanager
async def node_client(
    node: str,
    url: str,
    tmp: Path,
    *,
    types: str = TRACKED_TYPES,
    name: str = "node",
    version: int = 1,
) -> AsyncIterator[NodeClient]:
    """The library in Node, connected to `url` in protocol `version`, with hooks logged
    for `types`."""
    stderr = tmp / f"{name}-stderr.txt"
    with stderr.open("wb") as err:
        proc = await start_process_async(
            node,
            str(SCRIPT),
            url,
            types,
            str(version),
            cwd=WEB,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
    client = NodeClient(proc, stderr)
    try:
        hello = await client.read()
        assert hello.get("event") == "hello", hello
        client.hello = hello["hello"]
        yield client
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


class PyClient:
    """An aiohttp WebSocket whose frames feed a strict reference client of its version."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, version: int = 1) -> None:
        self.ws = ws
        self.version = version
        self.ref: ReferenceClient | ReferenceClientV2 = (
            ReferenceClientV2() if version == 2 else ReferenceClient()
        )
        self.hello: dict[str, Any] = {}
        self._pings = 0

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send_str(orjson.dumps(msg).decode())

    async def recv(self) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=10)
        expected = aiohttp.WSMsgType.BINARY if self.version == 2 else aiohttp.WSMsgType.TEXT
        if msg.type is not expected:
            raise ConnectionError(f"got {msg.type!r} ({msg.data!r})")
        return self.ref.apply_frame(msg.data)

    async def sync(self) -> None:
        """Returns once every frame queued before now is applied (the pong comes after them)."""
        self._pings += 1
        t = self._pings
        await self.send({"m": "ping", "t": t})
        while True:
            frame = await self.recv()
            if frame["m"] == "pong" and frame["t"] == t:
                return


class Run:
    """One randomized run: the world, both clients, and what the test asked them for."""

    def __init__(self, server: Server, node: NodeClient, py: PyClient, rng: random.Random):
        self.server = server
        self.world = server.world
        self.node = node
        self.py = py
        self.rng = rng
        self.keys: set[str] = set()  # explicit keys, as the library keeps them (Client.keys)
        self.node_serials: dict[str, int] = {}
        self.ref_instances: dict[str, int] = {}
        self.ref_teardowns = 0
        self.ref_errors = 0
        self.reasons: collections.Counter[str] = collections.Counter()
        self.kept_identity = 0  # objects that changed key and kept their instance
        self.compared_with_truth = 0
        self.hook_calls = 0
        self.checked_tick = 0
        self.node_keys: dict[str, str] = {}

    @property
    def node_session(self) -> Session:
        return self.server.sessions[self.node.hello["sid"]]

    @property
    def py_session(self) -> Session:
        return self.server.sessions[self.py.hello["sid"]]

    # -- subscription changes, sent to both clients ----------------------------------------

    async def view(self, map_name: str, rects: list[list[float]], margin: int) -> None:
        await self.node.cmd("view", map=map_name, rects=rects, margin=margin)
        # The library sends the first view of a pan at once and coalesces the rest
        # into the last; the server keeps only the last either way.
        for rect in [rects[0], rects[-1]] if len(rects) > 1 else rects:
            await self.py.send({"m": "view", "map": map_name, "rect": rect, "margin": margin})

    async def subscribe(self, keys: list[str]) -> None:
        await self.node.cmd("sub", keys=keys)
        add = [k for k in keys if k not in self.keys]
        self.keys.update(add)
        if add:
            await self.py.send({"m": "sub", "add": add, "rem": []})

    async def unsubscribe(self, keys: list[str]) -> None:
        await self.node.cmd("unsub", keys=keys)
        rem = [k for k in keys if k in self.keys]
        self.keys.difference_update(rem)
        if rem:
            await self.py.send({"m": "sub", "add": [], "rem": rem})

    async def sync(self) -> None:
        await self.node.cmd("sync")
        await self.py.sync()

    def rect(self, map_name: str) -> list[float]:
        rng = self.rng
        if map_name == "main":
            x, y = rng.uniform(-150, 1000), rng.uniform(-150, 1000)
            return [x, y, x + rng.uniform(0, 350), y + rng.uniform(0, 300)]
        x, y = rng.uniform(-560, 0), rng.uniform(-560, 0)
        return [x, y, x + rng.uniform(0, 180), y + rng.uniform(0, 150)]

    def some_keys(self) -> list[str]:
        rng = self.rng
        pool = [
            *ROOMS,
            f"main:{rng.randint(-1, 10)}:{rng.randint(0, 9)}",
            f"sea:{rng.randint(0, 10)}:{rng.randint(-1, 9)}",
        ]
        return rng.sample(pool, rng.randint(1, min(3, len(pool))))

    async def change_subscription(self) -> None:
        rng = self.rng
        r = rng.random()
        if r < 0.35:
            pan = [self.rect("main") for _ in range(rng.choice([1, 1, 2, 3]))]
            await self.view("main", pan, rng.randint(0, 2))
        elif r < 0.45:
            await self.view("sea", [self.rect("sea")], rng.randint(0, 2))
        if rng.random() < 0.35:
            await self.subscribe(self.some_keys())
        if self.keys and rng.random() < 0.25:
            await self.unsubscribe(rng.sample(sorted(self.keys), rng.randint(1, 2)))

    # -- world changes --------------------------------------------------------------------

    def populate(self) -> None:
        rng, world = self.rng, self.world
        for i in range(120):
            world.create(Ship(x=rng.uniform(0, 999), y=rng.uniform(0, 999), name=f"s{i}"))
        for _ in range(40):
            world.create(Buoy(px=rng.uniform(-500, -1), py=rng.uniform(-500, -1)), map="sea")
        for i in range(6):
            world.create(Note(text=f"n{i}"), key=ROOMS[i % 3])

    def point_in(self, key: str) -> tuple[str, float, float] | None:
        """A random point inside an existing cell of `key`, or None (a channel, no cell)."""
        parts = key.split(":")
        if len(parts) != 3 or parts[0] not in ("main", "sea"):
            return None
        cx, cy = int(parts[1]), int(parts[2])
        if not (0 <= cx <= 9 and 0 <= cy <= 9):
            return None
        size, ox = (100.0, 0.0) if parts[0] == "main" else (50.0, -500.0)
        # Away from the cell's edges, so the point's cell is `key` whatever the rounding.
        x = ox + cx * size + self.rng.uniform(1, size - 1)
        y = ox + cy * size + self.rng.uniform(1, size - 1)
        return parts[0], x, y

    def mutate(self, adding: set[str]) -> None:
        """One tick's worth of changes; `adding` are keys the clients start holding at it."""
        rng, world = self.rng, self.world
        ships = [o for o in world if isinstance(o, Ship)]
        buoys = [o for o in world if isinstance(o, Buoy)]
        notes = [o for o in world if isinstance(o, Note)]

        def clamp(v: float, lo: float, hi: float) -> float:
            return min(hi, max(lo, v))

        for s in rng.sample(ships, 30):  # mostly inside the cell: mv
            world.move(
                s, clamp(s.x + rng.uniform(-6, 6), 0, 999), clamp(s.y + rng.uniform(-6, 6), 0, 999)
            )
        for s in rng.sample(ships, 6):  # to a neighbouring cell
            dx, dy = rng.choice([(100, 0), (-100, 0), (0, 100), (0, -100), (100, 100)])
            world.move(s, clamp(s.x + dx, 0, 999), clamp(s.y + dy, 0, 999))
        for s in rng.sample(ships, 3):  # across the map
            world.move(s, rng.uniform(0, 999), rng.uniform(0, 999))
        for s in rng.sample(ships, 6):  # a field change, alone or with a move
            s.hp = rng.randint(0, 99)
        if rng.random() < 0.3:  # out of the cell and back in the same tick
            s = rng.choice(ships)
            x, y = s.x, s.y
            world.move(s, clamp(x + 300, 0, 999), y)
            world.move(s, x, y)
        for b in rng.sample(buoys, 10):
            world.move(b, clamp(b.px + rng.uniform(-20, 20), -500, -1), b.py)
        for b in rng.sample(buoys, 3):
            b.lit = not b.lit
        for n in rng.sample(notes, min(2, len(notes))):
            n.text = f"{n.text[:8]}+{rng.randint(0, 9)}"

        # Into keys being subscribed in this very tick: moves from anywhere (held
        # cells, cells not held, the other side of the map) and creations.
        for key in sorted(adding):
            if key in ROOMS:
                if rng.random() < 0.5:
                    world.create(Note(text="fresh"), key=key)
                continue
            where = self.point_in(key)
            if where is None or rng.random() < 0.3:
                continue
            map_name, _, _ = where
            pool: list[Any] = ships if map_name == "main" else buoys
            for obj in rng.sample(pool, rng.randint(1, 3)):
                _, x, y = self.point_in(key) or where
                world.move(obj, x, y)
            if rng.random() < 0.5:
                _, x, y = self.point_in(key) or where
                if map_name == "main":
                    world.create(Ship(x=x, y=y, name="new"))
                else:
                    world.create(Buoy(px=x, py=y), map="sea")

        # Deletions last, some of objects changed or moved in this tick.
        for s in rng.sample(ships, 2):
            world.delete(s)
        world.delete(rng.choice(buoys))
        if notes and rng.random() < 0.2:
            world.delete(rng.choice(notes))
        for _ in range(2):
            world.create(Ship(x=rng.uniform(0, 999), y=rng.uniform(0, 999)))
        world.create(Buoy(px=rng.uniform(-500, -1), py=rng.uniform(-500, -1)), map="sea")
        if rng.random() < 0.2:
            world.create(Note(text="new"), key=rng.choice(ROOMS))
        if rng.random() < 0.2:  # created and deleted within the tick: never on the wire
            world.delete(world.create(Ship(x=rng.uniform(0, 999), y=rng.uniform(0, 999))))

    def lag(self) -> None:
        """Makes the next ticks' frames queue up and drop, as for clients that stopped reading.

        A control frame left in each session's queue (a pong no client waits for)
        keeps tick frames off any direct write path and in the bounded queue; with
        the test's limit of 2 frames, the second tick of a burst run without an
        await is dropped, the session goes lagging and later gets one `resync`.
        """
        for session in (self.node_session, self.py_session):
            if session.wire_version == 2:
                pong = encode_message({"m": "pong", "t": -1, "n": self.world.tick})
            else:
                pong = encode_pong(-1, self.world.tick)
            session.push_control(pong)

    # -- the comparison -------------------------------------------------------------------

    async def check(self, *, lagging: bool) -> None:
        dump = await self.node.cmd("dump")
        ref = self.py.ref
        where = f"after tick {self.world.tick}"
        assert dump["state"] == "ready", where
        assert dump["stale"] == 0, where
        assert dump["tick"] == self.world.tick, where  # the pong's n

        # The caches: the library's and the reference client's, id -> (t, v, state, key).
        node_view = {i: (t, v, s, k) for i, (t, v, s, k, _) in dump["objects"].items()}
        assert node_view == ref.view(), where
        assert set(dump["held"]) == ref.held, where

        # And the server's truth, unless frames were dropped and a resync is owed.
        if not lagging:
            held = self.node_session.held
            assert held == self.py_session.held == ref.held, where
            assert node_view == world_truth(self.world, held), where
            self.compared_with_truth += 1

        # Identity: the library builds a new object exactly where the reference client
        # does, and tears down exactly the objects the reference client does.
        serials = {i: o[4] for i, o in dump["objects"].items()}
        assert None not in serials.values(), f"{where}: an object built without an add event"
        instances = {o.id: o.instance for o in ref.objs.values()}
        node_new = {i for i, s in serials.items() if self.node_serials.get(i) != s}
        ref_new = {i for i, n in instances.items() if self.ref_instances.get(i) != n}
        assert node_new == ref_new, where
        node_gone = sorted(e[1] for e in dump["events"] if e[0] == "rem")
        ref_gone = sorted(ref.teardowns[self.ref_teardowns :])
        assert node_gone == ref_gone, where
        # An object kept across a change of key kept its instance on both sides.
        self.kept_identity += sum(
            1
            for i, o in dump["objects"].items()
            if i in self.node_keys and self.node_keys[i] != o[3] and i not in node_new
        )
        self.node_serials, self.ref_instances = serials, instances
        self.ref_teardowns = len(ref.teardowns)
        self.node_keys = {i: o[3] for i, o in dump["objects"].items()}

        # Why the library says each object left agrees with the world (as of the one
        # tick the dump covers; after a burst the world has moved on).
        one_tick = self.world.tick == self.checked_tick + 1
        self.checked_tick = self.world.tick
        for e in dump["events"]:
            if e[0] != "rem":
                continue
            _, oid, reason, _serial = e
            self.reasons[reason] += 1
            if reason == "deleted":
                assert oid not in self.world, f"{where}: {oid} torn down as deleted"
            elif reason in ("moved_out", "unsubscribed"):
                assert oid in self.world or not one_tick, f"{where}: {oid} torn down as {reason}"
            else:
                assert reason == "resync", f"{where}: {oid} torn down as {reason}"

        # The tracked class's hooks ran once per event, in the events' order.
        assert dump["hooks"] == dump["trackedEvents"], where
        self.hook_calls += len(dump["hooks"])

        # The same errors (a key naming no map), and none raised by the library itself.
        assert [e["code"] for e in dump["errors"]] == [
            e["code"] for e in ref.errors[self.ref_errors :]
        ], where
        self.ref_errors = len(ref.errors)
        assert dump["closes"] == [], where


@pytest.mark.parametrize("version", [1, 2])
async def test_library_and_reference_client_agree_on_a_randomized_run(
    node: str, tmp_path: Path, version: int
) -> None:
    rng = random.Random(SEED)
    limits = Limits(
        max_keys=400,
        rate_limit_per_s=10_000,
        rate_limit_burst=10_000,
        send_queue_max_frames=2,  # a burst of ticks without reading drops frames: resync
    )
    server = Server(make_world(), autotick=False, freeze_gc=False, limits=limits)
    async with (
        server.running("127.0.0.1", 0) as url,
        aiohttp.ClientSession() as http,
        node_client(node, url, tmp_path, version=version) as nc,
        http.ws_connect(url + "/ws", protocols=("synkworld.v2",) if version == 2 else ()) as ws,
    ):
        py = PyClient(ws, version)
        py.hello = await py.recv()
        assert nc.hello["maps"] == py.hello["maps"]
        run = Run(server, nc, py, rng)
        run.populate()
        server.loop.step()
        await run.view("main", [[200, 200, 500, 450]], 1)
        await run.subscribe(["room0", "sea:3:3"])
        bursts = 0
        for tick in range(TICKS):
            await run.change_subscription()
            if tick == 20:  # refused whole (bad_message), but kept in Client.keys
                await run.subscribe(["room2", "nomap:1:2"])
            await run.sync()  # the server has taken every subscription message
            wanted = run.py_session.wanted
            assert run.node_session.wanted == wanted
            run.mutate(wanted - run.py_session.held)
            burst = tick % 15 == 7  # a burst of 3 ticks while the clients lag
            if burst:
                run.lag()
            server.loop.step()
            for _ in range(2 if burst else 0):
                run.mutate(set())
                server.loop.step()
            bursts += burst
            await run.sync()
            await run.check(lagging=run.py_session.lagging)
            assert run.node_session.lagging == run.py_session.lagging
        await run.sync()
        server.loop.step()  # ends a lag, if the last tick left one
        await run.sync()
        await run.check(lagging=False)
        closing = await nc.cmd("close")
        assert closing["size"] == 0
        assert {e[2] for e in closing["events"]} <= {"closed"}

    # The run covered what it is meant to.
    print(
        f"ticks {server.world.tick}, compared with the truth {run.compared_with_truth} times, "
        f"resyncs {py.ref.resyncs}, teardowns {dict(run.reasons)}, "
        f"kept identity across a key change {run.kept_identity}, hooks {run.hook_calls}, "
        f"errors {[e['code'] for e in py.ref.errors]}"
    )
    assert server.world.tick >= 50
    assert run.compared_with_truth >= 50
    assert py.ref.resyncs >= 2 and bursts >= 2
    assert {"deleted", "moved_out", "unsubscribed", "resync"} <= set(run.reasons)
    assert run.kept_identity > 20
    assert run.hook_calls > 100
    assert "bad_message" in {e["code"] for e in py.ref.errors}
