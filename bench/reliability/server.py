"""``python -m bench.reliability serve``: the server the scenarios start.

A busy world (walkers moving, trading gold, being replaced) with the call handlers
`truth`, `move`, `echo` and `fail`, ``GET /rel/stats``, and optionally SQLite
persistence (``--db``; what the file holds is loaded at the start).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from typing import Any

import orjson
from aiohttp import web

from bench.reliability.processes import rss_bytes
from bench.reliability.world import Busy, new_world, populate, spec_from_args, truth_of
from synkworld import Call, Server, World, load_documents


class ReliabilityServer(Server):
    """The busy world on a synkworld `Server`, with call handlers to fuzz and a stats route."""

    def __init__(self, world: World, busy: Busy, load: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(world, **kwargs)
        self.busy = busy
        self.load = load
        self.simulation(busy.step)

        @self.handler("truth")
        def truth(call: Call) -> dict[str, Any]:
            # A reply is queued after every frame queued before it, and calls run
            # between ticks: the client compares its cache as of this very point.
            return truth_of(call.world, call.session.held)

        @self.handler("move")
        def move(call: Call, id: str, dx: float, dy: float) -> dict[str, float]:
            # Unclipped, like examples/minimal_server's `sail`: the engine must refuse
            # positions it cannot index, whatever the application forgot to check.
            w = call.world[id]
            call.world.move(w, w.x + dx, w.y + dy)
            return {"x": w.x, "y": w.y}

        @self.handler("echo")
        def echo(call: Call, value: int, text: str = "") -> dict[str, Any]:
            return {"value": value, "text": text}

        @self.handler("fail")
        def fail(call: Call) -> None:
            raise RuntimeError("this handler fails on purpose")

    def make_app(self) -> web.Application:
        """synkworld's application plus ``GET /rel/stats``."""
        app = super().make_app()
        app.router.add_get("/rel/stats", self._stats)
        app.router.add_post("/rel/memory/mark", self._memory_mark)
        app.router.add_get("/rel/memory", self._memory)
        return app

    async def _memory_mark(self, request: web.Request) -> web.Response:
        import gc
        import tracemalloc

        gc.collect()
        self._mark = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
        return web.Response(body=b"{}", content_type="application/json")

    async def _memory(self, request: web.Request) -> web.Response:
        """The allocation sites that grew most since the mark (with ``serve --tracemalloc``)."""
        import gc
        import tracemalloc

        mark = getattr(self, "_mark", None)
        if mark is None or not tracemalloc.is_tracing():
            return web.Response(body=b"{}", content_type="application/json")
        gc.collect()
        diff = tracemalloc.take_snapshot().compare_to(mark, "traceback")
        top = [
            {
                "size_diff_kib": round(d.size_diff / 1024, 1),
                "count_diff": d.count_diff,
                "where": [f"{f.filename}:{f.lineno}" for f in d.traceback][-8:],
            }
            for d in diff[:15]
        ]
        total = round(sum(d.size_diff for d in diff) / 1024, 1)
        body = {"total_size_diff_kib": total, "top": top}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    def stats(self) -> dict[str, Any]:
        """Where the server is: its world, its clients, its store."""
        p = self.persistence
        store: dict[str, Any] | None = None
        if p is not None:
            st = p.statistics()
            store = {
                "pending_objects": st.pending_objects,
                "objects_written": st.objects_written,
                "writes_done": st.writes_done,
                "failed_attempts": st.failed_attempts,
                "rejected": st.rejected,
                "last_error": st.last_error,
            }
        return {
            "pid": os.getpid(),
            "rss_bytes": rss_bytes(os.getpid()),
            "tick": self.world.tick,
            "objects": len(self.world),
            "walkers": len(self.busy.walkers),
            "gold": self.busy.gold(),
            "ledger_ticks": self.busy.ledger.ticks,
            "clients": len(self.sessions),
            "errors": dict(self.metrics.errors),
            "connections_total": self.metrics.connections_total,
            "load": self.load,
            "store": store,
        }

    async def _stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats()), content_type="application/json")


async def serve(a: argparse.Namespace) -> None:
    """Serves the busy world until SIGINT or SIGTERM (graceful) or `a.max_seconds`.

    Prints one JSON line ``{"url", "pid", "objects", "loaded", ...}`` on stdout once
    it serves: `Child.ready` waits for it.
    """
    if a.tracemalloc:
        import tracemalloc

        tracemalloc.start(25)
    spec = spec_from_args(a)
    world = new_world(spec)
    load: dict[str, Any] = {"loaded": 0, "skipped": 0, "created": False, "load_s": 0.0}
    store = None
    if a.db:
        from synkworld.store import SQLiteStore

        store = SQLiteStore(a.db)
        t = time.monotonic()
        docs = await store.load()
        if docs:
            report = load_documents(world, docs, skip_bad=True)
            load["loaded"] = report.loaded
            load["skipped"] = len(report.skipped)
        load["load_s"] = round(time.monotonic() - t, 3)
    if not load["loaded"]:
        populate(world, spec)
        load["created"] = True
    busy = Busy(world, spec)
    server = ReliabilityServer(world, busy, load, tick_rate_hz=a.tick_rate)
    if store is not None:
        server.persist(store, write_interval_s=a.write_interval)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server.running(a.host, a.port) as url:
        ready = {"url": url, "pid": os.getpid(), "objects": len(world), **load}
        sys.stdout.write(orjson.dumps(ready).decode() + "\n")
        sys.stdout.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), a.max_seconds)
