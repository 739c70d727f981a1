"""A grid-world load generator process: many aiohttp WebSocket clients in one asyncio loop.

Run by `bench.gridworld` as ``python -m bench.gridworld_loadgen --config '<json>'``.
It talks to the coordinator in JSON lines: commands on stdin, events on stdout.

Most clients only count the bytes and frames they receive. The sampled clients
decode every frame, apply it to a `synkworld.Mirror` (a `MirrorV2` when the
scenario's clients speak protocol v2), stamp each tick frame's arrival (for the
change-to-client latency) and, now and then, take a frame apart to say where
its bytes go. The process measures its own CPU time and the
lag of its event loop, so that the coordinator can tell when the load
generator, not the server, was the bottleneck.

The client (connecting, counting, applying, pinging) and the viewports' panning
are `synkworld loadtest`'s (synkworld/_loadtest_client.py, _loadtest_pan.py);
what is the bench's own is the schedule its coordinator drives (a wall-clock
start shared by every process, the final viewports at a virtual instant) and
the figures it takes: tick arrivals, frame breakdowns, the truth check.

Commands (one JSON object per line): ``go {t0}``, ``mark``, ``end``,
``final {t}``, ``check``, ``close``. Events: ``connected``, ``marked``,
``window``, ``final_sent``, ``check``, ``closed``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import resource
import sys
import time
from typing import Any

import aiohttp
import orjson

from bench.gridworld_cache import (
    cache_digest,
    compare_with_truth,
    holding,
    new_breakdown,
    sampled_client,
)
from bench.gridworld_scenario import Scenario, runqueue_wait_s
from synkworld._loadtest_client import LoadClient, WireCounter
from synkworld._loadtest_pan import Panning, PanPath, view_phase

# WireCounter lives in the package now (synkworld loadtest counts with it too);
# tests/server/test_compression.py still takes it from here.
__all__ = ["Client", "LoadGenerator", "WireCounter", "main"]

log = logging.getLogger("bench.gridworld.loadgen")


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


class Client(LoadClient):
    """One WebSocket client of the load generator: synkworld loadtest's client, plus the
    bench's stamps of tick arrivals (latency) and frame breakdowns."""

    __slots__ = ("arrivals_n", "arrivals_t", "base_url", "gen", "mark", "next_view", "path", "seen")

    def __init__(self, gen: LoadGenerator, index: int, sampled: bool) -> None:
        # Spread over the processes of a cluster, as the coordinator says (i mod N by default).
        base_url = gen.urls[gen.process_of.get(index, index % len(gen.urls))]
        super().__init__(
            index,
            base_url + "/ws",
            mirror=sampled_client(gen.sc.proto) if sampled else None,
            compress=gen.sc.compression,
            proto=gen.sc.proto,
        )
        self.base_url = base_url
        self.gen = gen
        self.mark = (0, 0, 0)
        self.arrivals_n: list[int] = []
        self.arrivals_t: list[float] = []
        self.seen = 0
        self.path: PanPath = gen.panning.path(index)
        self.next_view = 0.0

    @property
    def sampled(self) -> bool:
        """This client decodes every frame into its cache."""
        return self.mirror is not None

    async def connect_and_view(self, session: aiohttp.ClientSession) -> None:
        """Opens the WebSocket, reads `hello` and sends the first `view`."""
        await self.connect(session, timeout_s=60)
        await self.view_at(0.0)

    async def view_at(self, t: float) -> None:
        """Sends the `view` of the viewport at time `t` of the panning."""
        rect = self.gen.panning.rect(self.path, t)
        await self.send_view("main", rect, self.gen.sc.margin)

    def tick_arrived(self, data: bytes, msg: dict[str, Any], t: float) -> None:
        gen = self.gen
        if gen.measuring:
            self.arrivals_n.append(msg["n"])
            self.arrivals_t.append(t)
            self.seen += 1
            if self.seen % gen.breakdown_every == 0:
                try:
                    gen.breakdown.add(data, msg)
                except (ValueError, IndexError, KeyError, TypeError) as e:
                    assert self.mirror is not None
                    self.mirror._violation(f"a frame the breakdown cannot take apart: {e!r}")


class LoadGenerator:
    """The clients of one process, the commands that drive them, and their figures."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.sc = Scenario.from_json(config["scenario"])
        sc = self.sc
        self.panning = Panning(
            (0.0, 0.0, sc.map_size, sc.map_size),
            sc.viewport_w,
            sc.viewport_h,
            sc.pan_speed,
            sc.seed,
        )
        self.urls: list[str] = list(config.get("urls") or [config["url"]])
        self.process_of: dict[int, int] = {
            int(i): int(p) for i, p in config.get("process_of", {}).items()
        }
        self.breakdown_every: int = max(1, int(config.get("breakdown_every", 10)))
        self.connect_concurrency: int = int(config.get("connect_concurrency", 50))
        sampled = set(config["sampled"])
        self.clients = [Client(self, i, i in sampled) for i in config["indices"]]
        self.t0: float | None = None
        self._started = asyncio.Event()
        self.final = False
        self.measuring = False
        self.breakdown = new_breakdown(sc.proto)
        self.lags: list[float] = []
        self._mark_cpu = 0.0
        self._mark_wait = 0.0
        self._mark_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    # -- events to the coordinator --------------------------------------------------

    @staticmethod
    def emit(event: dict[str, Any]) -> None:
        """Writes one event line on stdout."""
        sys.stdout.write(orjson.dumps(event).decode() + "\n")
        sys.stdout.flush()

    # -- running ----------------------------------------------------------------------

    async def run(self) -> None:
        """Connects every client, then obeys commands until `close` or stdin's end."""
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=None, connect=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            failed = await self._connect_all(session)
            gc.collect()
            gc.freeze()
            for c in self.clients:
                if c.ws is not None:
                    self._tasks.append(asyncio.create_task(c.read()))
            self._tasks.append(asyncio.create_task(self._pan()))
            self._tasks.append(asyncio.create_task(self._watch_lag()))
            self.emit(
                {
                    "ev": "connected",
                    "ok": len(self.clients) - failed,
                    "failed": failed,
                    "sids": {str(c.index): c.sid for c in self.clients if c.sampled},
                }
            )
            try:
                await self._commands(session)
            finally:
                await self._close_all()
                for t in self._tasks:
                    t.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connect_all(self, session: aiohttp.ClientSession) -> int:
        sem = asyncio.Semaphore(self.connect_concurrency)
        failed = 0

        async def one(c: Client) -> None:
            nonlocal failed
            async with sem:
                try:
                    await c.connect_and_view(session)
                except (aiohttp.ClientError, OSError, TimeoutError, ConnectionError) as e:
                    log.warning("client %d: connect failed: %s", c.index, e)
                    failed += 1
                    c.ws = None

        await asyncio.gather(*(one(c) for c in self.clients))
        return failed

    async def _close_all(self) -> None:
        await asyncio.gather(*(c.close(2.0) for c in self.clients))

    async def _pan(self) -> None:
        """Sends each client's `view` once per interval, at its own phase."""
        sc = self.sc
        interval = sc.view_interval_s
        await self._started.wait()
        t0 = self.t0
        assert t0 is not None
        for c in self.clients:
            c.next_view = t0 + view_phase(sc.seed, c.index, sc.view_interval_s)
        while not self.final:
            now = time.time()
            for c in self.clients:
                if c.next_view <= now and not self.final:
                    c.next_view += interval
                    await c.view_at(now - t0)
            await asyncio.sleep(0.02)

    async def _watch_lag(self) -> None:
        """Measures how late the event loop wakes up from a 50 ms sleep."""
        period = 0.05
        clock = time.perf_counter
        while True:
            t = clock()
            await asyncio.sleep(period)
            if self.measuring:
                self.lags.append(clock() - t - period)

    # -- commands -------------------------------------------------------------------------

    async def _commands(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line:
                return  # the coordinator is gone
            cmd = orjson.loads(line)
            name = cmd["cmd"]
            if name == "go":
                self.t0 = float(cmd["t0"])
                self._started.set()
            elif name == "mark":
                self._mark()
                self.emit({"ev": "marked"})
            elif name == "end":
                self.emit(self._end())
            elif name == "final":
                await self._final(float(cmd["t"]))
                self.emit({"ev": "final_sent"})
            elif name == "check":
                self.emit(await self._check(session, float(cmd.get("timeout", 10.0))))
            elif name == "close":
                await self._close_all()
                self.emit({"ev": "closed"})
                return

    def _mark(self) -> None:
        for c in self.clients:
            c.mark = (c.frames, c.bytes, c.wire_bytes)
            c.arrivals_n.clear()
            c.arrivals_t.clear()
        self.lags.clear()
        self.breakdown = new_breakdown(self.sc.proto)
        t = os.times()
        self._mark_cpu = t.user + t.system
        self._mark_wait = runqueue_wait_s()
        self._mark_at = time.monotonic()
        self.measuring = True

    def _end(self) -> dict[str, Any]:
        self.measuring = False
        t = os.times()
        cpu = t.user + t.system - self._mark_cpu
        wait = runqueue_wait_s() - self._mark_wait
        elapsed = time.monotonic() - self._mark_at
        live = [c for c in self.clients if c.ws is not None]
        lags_ms = [v * 1000 for v in self.lags]
        lat_n: list[int] = []
        lat_t: list[float] = []
        lat_p: list[int] = []  # the process (index into `urls`) the client is on
        for c in live:
            if c.sampled:
                lat_n += c.arrivals_n
                lat_t += c.arrivals_t
                lat_p += [self.urls.index(c.base_url)] * len(c.arrivals_n)
        return {
            "ev": "window",
            "pid": os.getpid(),
            "clients": len(live),
            "elapsed_s": elapsed,
            "cpu_s": cpu,
            "cpu_percent": round(100 * cpu / elapsed, 1) if elapsed > 0 else 0.0,
            "runqueue_wait_percent": round(100 * wait / elapsed, 1) if elapsed > 0 else 0.0,
            "frames": [c.frames - c.mark[0] for c in live],
            "bytes": [c.bytes - c.mark[1] for c in live],
            "wire_bytes": [c.wire_bytes - c.mark[2] for c in live],
            "closed": sum(1 for c in live if c.ws is not None and c.ws.closed),
            "close_codes": sorted({c.close_code for c in live if c.close_code is not None}),
            "lag_ms": {
                "p50": round(_percentile(lags_ms, 50), 2),
                "p99": round(_percentile(lags_ms, 99), 2),
                "max": round(max(lags_ms, default=0.0), 2),
            },
            "lat_n": lat_n,
            "lat_t": lat_t,
            "lat_p": lat_p,
            "breakdown": self.breakdown.raw(),
        }

    async def _final(self, t: float) -> None:
        self.final = True
        for c in self.clients:
            await c.view_at(t)

    async def _check(self, session: aiohttp.ClientSession, timeout: float) -> dict[str, Any]:
        sampled = [c for c in self.clients if c.sampled and c.ws is not None]
        synced = await asyncio.gather(*(c.sync(timeout) for c in sampled))
        truth: dict[str, Any] = {}
        for url in self.urls:
            sids = [c.sid for c in sampled if c.base_url == url]
            if not sids:
                continue
            async with session.post(
                url + "/bench/truth", data=orjson.dumps({"sids": sids})
            ) as resp:
                truth.update(orjson.loads(await resp.read()))
        results = []
        for c, ok_sync in zip(sampled, synced, strict=True):
            cache = c.mirror
            assert cache is not None
            view = holding(cache)
            t = truth.get(c.sid)
            if t is None:
                mismatches, examples = -1, ["the server has no such session"]
            else:
                mismatches, examples = compare_with_truth(view, t)
            results.append(
                {
                    "index": c.index,
                    "process": self.urls.index(c.base_url),
                    "sid": c.sid,
                    "synced": ok_sync,
                    "ok": ok_sync and mismatches == 0 and cache.violations == 0,
                    "keys": len(view["held"]),
                    "objects": len(view["objs"]),
                    "mismatches": mismatches,
                    "examples": examples,
                    "violations": cache.violations,
                    "violation_examples": cache.violation_examples,
                    "resyncs": cache.resyncs,
                    "digest": cache_digest(view),
                }
            )
        return {"ev": "check", "clients": results}


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> None:
    """Runs the load generator described by ``--config``."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True, help="url, scenario, client indices as JSON")
    p.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="loadgen %(levelname)s %(name)s: %(message)s")
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    _raise_fd_limit()
    asyncio.run(LoadGenerator(orjson.loads(a.config)).run())


if __name__ == "__main__":
    main()
