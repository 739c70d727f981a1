"""A grid-world load generator process: many aiohttp WebSocket clients in one asyncio loop.

Run by `bench.gridworld` as ``python -m bench.gridworld_loadgen --config '<json>'``.
It talks to the coordinator in JSON lines: commands on stdin, events on stdout.

Most clients only count the bytes and frames they receive. The sampled clients
decode every frame, apply it to a `synkworld.Mirror`, stamp each tick frame's
arrival (for the change-to-client latency) and, now and then, take a frame
apart to say where its bytes go. The process measures its own CPU time and the
lag of its event loop, so that the coordinator can tell when the load
generator, not the server, was the bottleneck.

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
    FrameBreakdown,
    cache_digest,
    compare_with_truth,
    holding,
    sampled_client,
)
from bench.gridworld_scenario import (
    PanPath,
    Scenario,
    pan_path,
    pan_rect,
    runqueue_wait_s,
    view_phase,
)

__all__ = ["LoadGenerator", "main"]

log = logging.getLogger("bench.gridworld.loadgen")

_DONE = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)
_TEXT = aiohttp.WSMsgType.TEXT


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


class WireCounter(asyncio.Protocol):
    """Stands between a transport and its protocol and counts the bytes that arrive.

    What a client's socket receives, WebSocket framing included, and before
    permessage-deflate is undone: the bytes a client's link carries.
    """

    def __init__(self, inner: asyncio.BaseProtocol) -> None:
        self.inner = inner
        self.n = 0

    @classmethod
    def install(cls, transport: asyncio.BaseTransport) -> WireCounter:
        """Puts a counter in front of `transport`'s protocol and returns it."""
        counter = cls(transport.get_protocol())
        transport.set_protocol(counter)
        return counter

    def data_received(self, data: bytes) -> None:
        self.n += len(data)
        self.inner.data_received(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()  # type: ignore[attr-defined, no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class Client:
    """One WebSocket client of the load generator."""

    __slots__ = (
        "arrivals_n",
        "arrivals_t",
        "bytes",
        "cache",
        "close_code",
        "frames",
        "gen",
        "index",
        "mark",
        "next_view",
        "path",
        "pong",
        "sampled",
        "sid",
        "url",
        "wire",
        "ws",
    )

    def __init__(self, gen: LoadGenerator, index: int, sampled: bool) -> None:
        self.gen = gen
        self.index = index
        self.sampled = sampled
        self.ws: aiohttp.ClientWebSocketResponse[bool] | None = None
        self.sid = ""
        self.frames = 0
        self.bytes = 0
        self.mark = (0, 0, 0)
        self.wire: WireCounter | None = None
        self.cache = sampled_client() if sampled else None
        self.arrivals_n: list[int] = []
        self.arrivals_t: list[float] = []
        self.pong: asyncio.Future[float] | None = None
        self.close_code: int | None = None
        self.path: PanPath = pan_path(gen.sc, index)
        self.next_view = 0.0
        # Spread over the processes of a cluster, as the coordinator says (i mod N by default).
        self.url = gen.urls[gen.process_of.get(index, index % len(gen.urls))]

    @property
    def wire_bytes(self) -> int:
        """Bytes that arrived on this client's socket so far."""
        return self.wire.n if self.wire is not None else 0

    async def connect(self, session: aiohttp.ClientSession) -> None:
        """Opens the WebSocket, reads `hello` and sends the first `view`."""
        ws = await session.ws_connect(
            self.url + "/ws",
            decode_text=False,
            max_msg_size=0,
            heartbeat=None,
            compress=15 if self.gen.sc.compression else 0,
        )
        self.ws = ws
        # aiohttp has no public handle on an upgraded connection's transport.
        conn = ws._response.connection
        if conn is not None and conn.transport is not None:
            self.wire = WireCounter.install(conn.transport)
        msg = await ws.receive(timeout=30)
        if msg.type is not _TEXT:
            raise ConnectionError(f"client {self.index}: expected hello, got {msg.type!r}")
        hello = orjson.loads(msg.data)
        self.sid = hello["sid"]
        if self.cache is not None:
            self.cache.apply(hello)
        await self.send_view(0.0)

    async def send_view(self, t: float) -> None:
        """Sends the `view` of the viewport at time `t` of the panning."""
        ws = self.ws
        if ws is None or ws.closed:
            return
        sc = self.gen.sc
        rect = pan_rect(sc, self.path, t)
        msg = {"m": "view", "map": "main", "rect": rect, "margin": sc.margin}
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(orjson.dumps(msg).decode())

    async def read_counting(self) -> None:
        """Counts the frames and bytes received, nothing more."""
        ws = self.ws
        assert ws is not None
        receive = ws.receive
        while True:
            msg = await receive()
            if msg.type is _TEXT:
                self.frames += 1
                self.bytes += len(msg.data)
            elif msg.type in _DONE or msg.type is aiohttp.WSMsgType.ERROR:
                break
        self.close_code = ws.close_code

    async def read_sampled(self) -> None:
        """Decodes every frame and applies it to the cache; stamps tick arrivals."""
        ws = self.ws
        cache = self.cache
        assert ws is not None and cache is not None
        gen = self.gen
        receive = ws.receive
        loads = orjson.loads
        now = time.time
        every = gen.breakdown_every
        seen = 0
        while True:
            msg = await receive()
            if msg.type is _TEXT:
                t = now()
                data: bytes = msg.data
                self.frames += 1
                self.bytes += len(data)
                m = loads(data)
                kind = m["m"]
                if kind == "tick":
                    if gen.measuring:
                        self.arrivals_n.append(m["n"])
                        self.arrivals_t.append(t)
                        seen += 1
                        if seen % every == 0:
                            gen.breakdown.add(data, m)
                elif kind == "pong":
                    if self.pong is not None and not self.pong.done():
                        self.pong.set_result(t)
                    continue
                cache.apply(m)
            elif msg.type in _DONE or msg.type is aiohttp.WSMsgType.ERROR:
                break
        self.close_code = ws.close_code

    async def sync(self, timeout: float) -> bool:
        """Pings and waits for the pong, which comes after every frame queued before it."""
        ws = self.ws
        if ws is None or ws.closed:
            return False
        self.pong = asyncio.get_running_loop().create_future()
        try:
            await ws.send_str('{"m":"ping","t":1}')
            await asyncio.wait_for(self.pong, timeout)
        except (TimeoutError, ConnectionError, RuntimeError):
            return False
        return True


class LoadGenerator:
    """The clients of one process, the commands that drive them, and their figures."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.sc = Scenario.from_json(config["scenario"])
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
        self.breakdown = FrameBreakdown()
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
                    reader = c.read_sampled() if c.sampled else c.read_counting()
                    self._tasks.append(asyncio.create_task(reader))
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
                    await c.connect(session)
                except (aiohttp.ClientError, OSError, TimeoutError, ConnectionError) as e:
                    log.warning("client %d: connect failed: %s", c.index, e)
                    failed += 1
                    c.ws = None

        await asyncio.gather(*(one(c) for c in self.clients))
        return failed

    async def _close_all(self) -> None:
        async def one(c: Client) -> None:
            if c.ws is not None and not c.ws.closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.ws.close(), 2.0)

        await asyncio.gather(*(one(c) for c in self.clients))

    async def _pan(self) -> None:
        """Sends each client's `view` once per interval, at its own phase."""
        sc = self.sc
        interval = sc.view_interval_s
        await self._started.wait()
        t0 = self.t0
        assert t0 is not None
        for c in self.clients:
            c.next_view = t0 + view_phase(sc, c.index)
        while not self.final:
            now = time.time()
            for c in self.clients:
                if c.next_view <= now and not self.final:
                    c.next_view += interval
                    await c.send_view(now - t0)
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
        self.breakdown = FrameBreakdown()
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
                lat_p += [self.urls.index(c.url)] * len(c.arrivals_n)
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
            await c.send_view(t)

    async def _check(self, session: aiohttp.ClientSession, timeout: float) -> dict[str, Any]:
        sampled = [c for c in self.clients if c.sampled and c.ws is not None]
        synced = await asyncio.gather(*(c.sync(timeout) for c in sampled))
        truth: dict[str, Any] = {}
        for url in self.urls:
            sids = [c.sid for c in sampled if c.url == url]
            if not sids:
                continue
            async with session.post(
                url + "/bench/truth", data=orjson.dumps({"sids": sids})
            ) as resp:
                truth.update(orjson.loads(await resp.read()))
        results = []
        for c, ok_sync in zip(sampled, synced, strict=True):
            cache = c.cache
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
                    "process": self.urls.index(c.url),
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
