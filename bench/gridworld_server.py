"""The grid-world server process: the scenario's world on a synkworld `Server`, plus bench routes.

Run by `bench.gridworld` as ``python -m bench.gridworld_server --config '<json>'``;
prints one JSON line ``{"url": ..., "pid": ...}`` on stdout once it serves, and
stops on SIGTERM/SIGINT, when its stdin closes (the coordinator went away) or
after ``--max-seconds``.

The bench-only routes (never part of synkworld's own application):

- ``POST /bench/go``: the entities start moving (the motion ticks are counted
  from here; after `Scenario.motion_ticks` of them the world freezes by itself).
- ``POST /bench/freeze``: stops the motion at once (a fallback).
- ``GET /bench/state``: tick, motion ticks done, frozen, clients.
- ``GET /bench/settled``: whether the world is frozen and every session holds
  what it asked for with nothing queued or owed.
- ``POST /bench/truth`` ``{"sids": [...]}``: what each of those sessions should
  hold, read from the world: ``{sid: {"held": [...], "objs": {id: [t, v, state, key]}}}``.
- ``GET /bench/ticks``: every tick's start wall time (time.time(), taken by the
  first simulation step), the process CPU time then (time.process_time(): the
  difference to the next tick's is that tick's CPU, writes included), its
  duration (`TickLoop.on_tick_done`) and the seconds of its phases
  (simulate, commit, bus, frames: `TickLoop.last_phases`), and the naive
  baseline's decoding of the batches (0 for synkworld).
- ``GET /bench/stats``: peak RSS, tick loop and transport counters (and the bus's, in a cluster).
- ``GET /bench/ids``: the ids of the objects in this process's world.
- ``POST /bench/objects`` ``{"keys": [...]}``: the objects this process holds under those
  keys, as in ``/bench/truth`` (in a cluster, ``/bench/truth`` asks every peer for the
  keys it does not own).

With ``--cluster '<json>'`` (``{"redis", "world", "node", "db", "peers"}``) the process
joins a map shared through Redis (`bench.gridworld --processes N`): its world starts
empty and loads the regions it owns from the SQLite store the coordinator seeded,
and every process steps the whole scenario's motion in lockstep, by the global
tick, moving only the entities it holds.
- ``POST /bench/profile/start`` and ``/bench/profile/stop`` (with ``--profile``):
  pyinstrument over the measured window; stop answers the flat (self time) and
  tree views as text.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import resource
import signal
import sys
import threading
import time
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
import orjson
from aiohttp import web

from bench.gridworld_scenario import Motion, Scenario
from bench.naive_frames import NaiveTickLoop, NaiveWorld
from synkworld import GridMap, Limits, Server, SynkObject, TickLoop, World

__all__ = [
    "BenchServer",
    "Entity",
    "TrackedWorld",
    "build_server",
    "create_entities",
    "entity_documents",
    "main",
]

log = logging.getLogger("bench.gridworld.server")


class Entity(SynkObject, type="gw-ent"):
    """A grid-world entity."""

    x: float
    y: float
    kind: str = "ant"
    color: int = 0
    hp: int = 100


def create_entities(world: World, motion: Motion) -> list[Entity]:
    """The scenario's entities, at their starting places, in the world."""
    m = motion
    return [
        world.create(
            Entity(
                id=f"e{i}",
                x=float(m.xs[i]),
                y=float(m.ys[i]),
                kind=m.kinds[i],
                color=m.colors[i],
                hp=m.hps[i],
            )
        )
        for i in range(len(m.xs))
    ]


def entity_documents(sc: Scenario) -> list[dict[str, Any]]:
    """The scenario's entities at their starting places, as stored documents (to seed a store)."""
    world = World(GridMap(cell_size=sc.cell_size, bounds=(0, 0, sc.map_size, sc.map_size)))
    entities = create_entities(world, Motion(sc))
    world.commit()
    return [world.document(e) for e in entities]


class TrackedWorld(World):
    """A world that knows which of the scenario's entities it holds, and their slots.

    In a cluster the entities come and go (takeovers, handovers); the motion
    moves only those held here. Tracking them as they enter and leave keeps
    that cheap: no walk over the world per tick.
    """

    def __init__(self, grid: GridMap, *, entities: int, **kwargs: Any) -> None:
        super().__init__(grid, **kwargs)
        self.slot_of: npt.NDArray[np.int64] = np.full(entities, -1, dtype=np.int64)
        self.held: list[Entity | None] = [None] * entities
        self.membership_changed = True

    def _track(self, obj: SynkObject, here: bool) -> None:
        if not isinstance(obj, Entity):
            return
        i = int(obj.id[1:])
        b = obj._binding
        self.slot_of[i] = b.slot if here and b is not None else -1
        self.held[i] = obj if here else None
        self.membership_changed = True

    def load(self, doc: Any, *, announce: bool = False) -> SynkObject:
        obj = super().load(doc, announce=announce)
        self._track(obj, True)
        return obj

    def _unlist(self, obj: SynkObject) -> str | None:
        key = super()._unlist(obj)
        self._track(obj, False)
        return key

    def _come_back(self, obj: SynkObject, key: str | None) -> None:
        super()._come_back(obj, key)
        self._track(obj, True)


def _json(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


class BenchServer(Server):
    """A `Server` running the grid-world simulation, with the bench routes."""

    def __init__(
        self,
        world: World,
        sc: Scenario,
        *,
        profile: bool = False,
        peers: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(world, **kwargs)
        self.sc = sc
        self.profile = profile
        self.peers = peers or []
        self._profiler: Any = None
        self.motion = Motion(sc)
        self.tracked = world if isinstance(world, TrackedWorld) else None
        # In a cluster the world starts empty: the entities come from the store.
        self.entities = [] if self.tracked is not None else create_entities(world, self.motion)
        self.slots = world.slots(self.entities)
        self.here: npt.NDArray[np.int64] | None = None
        # The global tick of the first motion step (every process of a cluster agrees).
        self.start_tick: int | None = None
        self.going = False
        self.frozen = False
        self.forced_freeze = False
        self.motion_done = 0
        self.tick_start_n: list[int] = []
        self.tick_start_t: list[float] = []
        self.tick_start_cpu: list[float] = []
        self.tick_done_n: list[int] = []
        self.tick_done_s: list[float] = []
        # [simulate, commit, bus, frames, the naive baseline's decoding] seconds
        self.tick_phases: list[list[float]] = []
        # Registered first: the wall time stamped here is the start of the tick's changes.
        self.simulation(self._step)
        self.loop.on_tick_done(self._tick_done)

    def _step(self, dt: float) -> None:
        tick = self.world.tick + 1
        self.tick_start_n.append(tick)
        self.tick_start_t.append(time.time())
        self.tick_start_cpu.append(time.process_time())
        if not self.going or self.frozen:
            return
        if self.tracked is not None:
            self._step_tracked(tick)
            return
        m = self.motion
        m.step()
        self.world.set_positions(self.slots, m.xs, m.ys)
        ents = self.entities
        for i, hp in zip(*m.hp_step(), strict=True):
            ents[i].hp = hp
        self.motion_done += 1
        if self.motion_done >= self.sc.motion_ticks:
            self.frozen = True

    def _step_tracked(self, tick: int) -> None:
        """The motion of a cluster's process: every step up to this global tick, applied
        to the entities held here (a tick skipped here is caught up, so that every
        process's copy of the motion stays at the same step)."""
        tracked = self.tracked
        assert tracked is not None and self.start_tick is not None
        if tick < self.start_tick:
            return
        m = self.motion
        target = min(tick - self.start_tick + 1, self.sc.motion_ticks)
        hp_changes: dict[int, int] = {}
        while self.motion_done < target:
            m.step()
            hp_changes.update(zip(*m.hp_step(), strict=True))
            self.motion_done += 1
        if tracked.membership_changed or self.here is None:
            self.here = np.flatnonzero(tracked.slot_of >= 0)
            self.slots = tracked.slot_of[self.here]
            tracked.membership_changed = False
        here = self.here
        self.world.set_positions(self.slots, m.xs[here], m.ys[here])
        held = tracked.held
        for i, hp in hp_changes.items():
            obj = held[i]
            if obj is not None:
                obj.hp = hp
        if self.motion_done >= self.sc.motion_ticks:
            self.frozen = True

    def _tick_done(self, duration_s: float) -> None:
        self.tick_done_n.append(self.world.tick)
        self.tick_done_s.append(duration_s)
        p = self.loop.last_phases
        decode_s = getattr(self.loop, "last_decode_s", 0.0)
        self.tick_phases.append([p.simulate_s, p.commit_s, p.bus_s, p.frames_s, decode_s])

    # -- routes ------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """synkworld's application plus the bench routes."""
        app = super().make_app()
        r = app.router
        r.add_post("/bench/go", self._go)
        r.add_post("/bench/freeze", self._freeze)
        r.add_get("/bench/state", self._state)
        r.add_get("/bench/settled", self._settled)
        r.add_post("/bench/truth", self._truth)
        r.add_post("/bench/objects", self._objects)
        r.add_get("/bench/ids", self._ids)
        r.add_get("/bench/ticks", self._ticks)
        r.add_get("/bench/stats", self._stats)
        if self.profile:
            r.add_post("/bench/profile/start", self._profile_start)
            r.add_post("/bench/profile/stop", self._profile_stop)
        return app

    async def _profile_start(self, request: web.Request) -> web.Response:
        from pyinstrument import Profiler

        self._profiler = Profiler(interval=0.001, async_mode="disabled")
        self._profiler.start()
        return _json({"ok": True})

    async def _profile_stop(self, request: web.Request) -> web.Response:
        prof = self._profiler
        if prof is None:
            return _json({})
        prof.stop()
        self._profiler = None
        flat = prof.output_text(flat=True, show_all=False)
        tree = prof.output_text(show_all=False)
        return _json({"flat": flat, "tree": tree})

    async def _go(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read() or b"{}")
        at = body.get("at")
        self.start_tick = int(at) if at is not None else self.world.tick + 1
        self.going = True
        ahead_s = max(0, self.start_tick - self.world.tick - 1) / self.sc.tick_rate_hz
        return _json({"t0": time.time() + ahead_s, "tick": self.world.tick})

    async def _freeze(self, request: web.Request) -> web.Response:
        if not self.frozen:
            self.frozen = self.forced_freeze = True
        return _json(self.state())

    def state(self) -> dict[str, Any]:
        """Where the run is."""
        return {
            "tick": self.world.tick,
            "going": self.going,
            "frozen": self.frozen,
            "forced_freeze": self.forced_freeze,
            "motion_ticks": self.motion_done,
            "clients": len(self.sessions),
            "objects": len(self.world),
        }

    async def _state(self, request: web.Request) -> web.Response:
        return _json(self.state())

    async def _settled(self, request: web.Request) -> web.Response:
        unsettled = 0
        for s in self.sessions.values():
            if s.lagging or s.queued_frames or s.wanted != s.held:
                unsettled += 1
        pending = self.world.statistics().pending_changes
        settled = self.frozen and unsettled == 0 and pending == 0
        if self.cluster is not None:
            st = self.cluster.statistics()
            settled = settled and st.outbox == 0 and st.regions_late == 0
        return _json({"settled": settled, "unsettled": unsettled, "tick": self.world.tick})

    async def _truth(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        sessions = self.sessions
        held = {sid: sorted(s.held) for sid in body["sids"] if (s := sessions.get(sid))}
        under = self._under({k for keys in held.values() for k in keys})
        if self.peers and self.cluster is not None:
            # In a cluster every id is in exactly one world: the union is the truth.
            owns = self.cluster.owns
            foreign = [k for keys in held.values() for k in keys if not owns(k)]
            for part in await self._ask_peers(sorted(set(foreign))):
                for key, objs in part.items():
                    under.setdefault(key, {}).update(objs)
        out: dict[str, Any] = {}
        for sid in body["sids"]:
            keys = held.get(sid)
            if keys is None:
                out[sid] = None
                continue
            objs = {oid: obj for key in keys for oid, obj in under.get(key, {}).items()}
            out[sid] = {"held": keys, "objs": objs}
        return _json(out)

    def _under(self, keys: set[str]) -> dict[str, dict[str, list[Any]]]:
        world = self.world
        return {
            key: {o.id: [o.synk_type, o.version, o.wire_state(), key] for o in objs}
            for key in keys
            if (objs := world.objects_under(key))
        }

    async def _ask_peers(self, keys: list[str]) -> list[dict[str, Any]]:
        if not keys:
            return []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:

            async def one(url: str) -> dict[str, Any]:
                async with http.post(url + "/bench/objects", data=orjson.dumps(keys)) as resp:
                    resp.raise_for_status()
                    part: dict[str, Any] = orjson.loads(await resp.read())
                    return part

            return list(await asyncio.gather(*(one(u) for u in self.peers)))

    async def _ids(self, request: web.Request) -> web.Response:
        return _json(sorted(o.id for o in self.world))

    async def _objects(self, request: web.Request) -> web.Response:
        return _json(self._under(set(orjson.loads(await request.read()))))

    async def _ticks(self, request: web.Request) -> web.Response:
        return _json(
            {
                "start_n": self.tick_start_n,
                "start_t": self.tick_start_t,
                "start_cpu": self.tick_start_cpu,
                "done_n": self.tick_done_n,
                "done_s": self.tick_done_s,
                "phases": self.tick_phases,
            }
        )

    async def _stats(self, request: web.Request) -> web.Response:
        t = self.loop.statistics()
        m = self.metrics
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return _json(
            {
                "pid": os.getpid(),
                "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),  # KiB on Linux
                "rss_mb": round(_current_rss() / 2**20, 1),
                "tick": t.tick,
                "ticks_behind": t.ticks_behind,
                "frames_queued": t.frames_queued,
                "bytes_queued": t.bytes_queued,
                "frames_dropped": t.frames_dropped,
                "resyncs": t.resyncs,
                "simulation_errors": t.simulation_errors,
                "frames_written": m.frames_written,
                "bytes_written": m.bytes_written,
                "closed_slow": m.closed_slow_total,
                "connections_total": m.connections_total,
                "errors": dict(m.errors),
                "bus": (
                    dataclasses.asdict(self.cluster.statistics())
                    if self.cluster is not None
                    else None
                ),
                **self.state(),
            }
        )


def _current_rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def build_server(
    sc: Scenario, *, profile: bool = False, cluster: dict[str, Any] | None = None
) -> BenchServer:
    """The grid-world world and server for a scenario (on a shared map with `cluster`)."""
    size = sc.map_size
    grid = GridMap(cell_size=sc.cell_size, bounds=(0, 0, size, size))
    world: World
    if cluster is not None:
        if sc.mode == "per-client":
            raise ValueError("the naive baseline runs on one process only")
        world = TrackedWorld(grid, entities=sc.entities, initial_capacity=max(sc.entities, 16))
    else:
        world = (NaiveWorld if sc.mode == "per-client" else World)(
            grid, initial_capacity=max(sc.entities, 16)
        )
    per_side = 2 * sc.margin + 2
    keys = (int(sc.viewport_w // sc.cell_size) + per_side) * (
        int(sc.viewport_h // sc.cell_size) + per_side
    )
    limits = Limits(max_keys=max(256, 2 * keys))
    loop_class = NaiveTickLoop if sc.mode == "per-client" else TickLoop
    server = BenchServer(
        world,
        sc,
        limits=limits,
        loop=loop_class(world, tick_rate_hz=sc.tick_rate_hz, limits=limits),
        compression=sc.compression,
        direct_writes=sc.direct_writes,
        profile=profile,
        peers=cluster["peers"] if cluster else None,
    )
    if cluster is not None:
        _join(server, cluster)
    return server


def _join(server: BenchServer, cluster: dict[str, Any]) -> None:
    from synkworld import ClusterSettings
    from synkworld.bus.redis import RedisBackend
    from synkworld.store import SQLiteStore

    # The store is where takeovers load from; the motion's writes would be the
    # same in one process, so they are left out of both (one write an hour).
    server.persist(SQLiteStore(cluster["db"]), write_interval_s=3600.0)
    server.join_cluster(
        RedisBackend(cluster["redis"], cluster["world"]),
        settings=ClusterSettings(region_cells=int(cluster.get("region_cells", 8))),
        node=cluster["node"],
    )


async def _serve(
    sc: Scenario,
    host: str,
    port: int,
    max_seconds: float,
    *,
    profile: bool,
    cluster: dict[str, Any] | None,
) -> None:
    server = build_server(sc, profile=profile, cluster=cluster)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def watch_stdin() -> None:
        # The coordinator holds our stdin open; EOF means it is gone.
        with contextlib.suppress(Exception):
            while sys.stdin.buffer.read(4096):
                pass
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    async with server.running(host, port) as url:
        sys.stdout.write(orjson.dumps({"url": url, "pid": os.getpid()}).decode() + "\n")
        sys.stdout.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max_seconds)


def main(argv: list[str] | None = None) -> None:
    """Serves the grid-world scenario given as JSON by ``--config``."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True, help="the Scenario as JSON")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU")
    p.add_argument("--max-seconds", type=float, default=3600.0)
    p.add_argument("--profile", action="store_true", help="serve the pyinstrument routes")
    p.add_argument("--cluster", default=None, help="join a shared map: JSON, see the module")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="server %(levelname)s %(name)s: %(message)s")
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    sc = Scenario.from_json(orjson.loads(a.config))
    cluster = orjson.loads(a.cluster) if a.cluster else None
    asyncio.run(_serve(sc, a.host, a.port, a.max_seconds, profile=a.profile, cluster=cluster))


if __name__ == "__main__":
    main()
