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
- ``GET /bench/stats``: peak RSS, tick loop and transport counters.
- ``POST /bench/profile/start`` and ``/bench/profile/stop`` (with ``--profile``):
  pyinstrument over the measured window; stop answers the flat (self time) and
  tree views as text.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import signal
import sys
import threading
import time
from typing import Any

import orjson
from aiohttp import web

from bench.gridworld_scenario import Motion, Scenario
from bench.naive_frames import NaiveTickLoop, NaiveWorld
from synkworld import GridMap, Limits, Server, SynkObject, TickLoop, World

__all__ = ["BenchServer", "Entity", "build_server", "create_entities", "main"]

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


def _json(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


class BenchServer(Server):
    """A `Server` running the grid-world simulation, with the bench routes."""

    def __init__(self, world: World, sc: Scenario, *, profile: bool = False, **kwargs: Any) -> None:
        super().__init__(world, **kwargs)
        self.sc = sc
        self.profile = profile
        self._profiler: Any = None
        self.motion = Motion(sc)
        self.entities = create_entities(world, self.motion)
        self.slots = world.slots(self.entities)
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
        self.tick_start_n.append(self.world.tick + 1)
        self.tick_start_t.append(time.time())
        self.tick_start_cpu.append(time.process_time())
        if not self.going or self.frozen:
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
        self.going = True
        return _json({"t0": time.time(), "tick": self.world.tick})

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
        return _json({"settled": settled, "unsettled": unsettled, "tick": self.world.tick})

    async def _truth(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        sessions = self.sessions
        world = self.world
        out: dict[str, Any] = {}
        for sid in body["sids"]:
            s = sessions.get(sid)
            if s is None:
                out[sid] = None
                continue
            objs = {
                o.id: [o.synk_type, o.version, o.wire_state(), key]
                for key in s.held
                for o in world.objects_under(key)
            }
            out[sid] = {"held": sorted(s.held), "objs": objs}
        return _json(out)

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
                **self.state(),
            }
        )


def _current_rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def build_server(sc: Scenario, *, profile: bool = False) -> BenchServer:
    """The grid-world world and server for a scenario."""
    size = sc.map_size
    world = (NaiveWorld if sc.mode == "per-client" else World)(
        GridMap(cell_size=sc.cell_size, bounds=(0, 0, size, size)),
        initial_capacity=max(sc.entities, 16),
    )
    per_side = 2 * sc.margin + 2
    keys = (int(sc.viewport_w // sc.cell_size) + per_side) * (
        int(sc.viewport_h // sc.cell_size) + per_side
    )
    limits = Limits(max_keys=max(256, 2 * keys))
    loop_class = NaiveTickLoop if sc.mode == "per-client" else TickLoop
    return BenchServer(
        world,
        sc,
        limits=limits,
        loop=loop_class(world, tick_rate_hz=sc.tick_rate_hz, limits=limits),
        compression=sc.compression,
        direct_writes=sc.direct_writes,
        profile=profile,
    )


async def _serve(sc: Scenario, host: str, port: int, max_seconds: float, *, profile: bool) -> None:
    server = build_server(sc, profile=profile)
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
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="server %(levelname)s %(name)s: %(message)s")
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    sc = Scenario.from_json(orjson.loads(a.config))
    asyncio.run(_serve(sc, a.host, a.port, a.max_seconds, profile=a.profile))


if __name__ == "__main__":
    main()
