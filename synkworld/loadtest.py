"""`synkworld loadtest`: drive any synkworld-protocol server with panning clients, and check them.

    synkworld loadtest ws://127.0.0.1:8080/ws --clients 200 --seconds 30
    synkworld loadtest ws://127.0.0.1:8080/ws --clients 200 --proto 2
    synkworld loadtest wss://game.example/ws --clients 50 --ramp 10 --token "$TOKEN"

The clients speak protocol v1 (docs/protocol.md), which every synkworld
server serves; with `--proto 2` they offer the subprotocol `synkworld.v2`
and speak protocol v2 (docs/protocol-v2.md), and a server that does not
select it (a cluster's process, an older server) ends the run at once.

The map comes from the server's `hello` (names, bounds, cell size). Each client
connects (spread over `--ramp` seconds), sends a `view` of its viewport once
per `--view-interval` while the viewport pans across its map at `--speed`
units/s in a seeded direction, bouncing at the edges (the grid-world
benchmark's load generator, generalised), and pings once per
`--ping-interval`. After the ramp, `--seconds` are measured: bytes and frames
per client per second, the ping round trip, connect failures, errors and
resyncs received. `--sample` clients decode every frame into a `StrictMirror`
(`StrictMirrorV2` with `--proto 2`) and, at the end, are each compared with a
fresh checker client of the same protocol that subscribes to the same keys
(synkworld/_loadtest_check.py).

Writes `loadtest.json` and `loadtest.svg` to `--out` (default
`./loadtest-<date>-<time>/`) and prints a summary. Exit status: 0 when the
correctness check passed, 1 when it failed, 2 on bad arguments or a server
that cannot be reached (one line on stderr). Runs in one process and one
event loop; `loadgen.saturated` in the JSON says when that was the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import math
import os
import shlex
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeGuard
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import orjson

from synkworld._loadtest_check import check_client
from synkworld._loadtest_client import PROTOCOLS, ConnectFailedError, LoadClient, strict_mirror
from synkworld._loadtest_pan import Panning, PanPath, view_phase
from synkworld._loadtest_progress import Progress
from synkworld._loadtest_report import percentile, spread, summary, write_svg
from synkworld._version import __version__

__all__ = ["LoadTestError", "LoadTestOptions", "main", "parse_args", "run_loadtest"]

_PROG = "synkworld loadtest"
# A viewport of 4 x 3 cells panning 0.4 cells a second: at the benchmark's
# 250-unit cells, its 1000 x 750 viewport at 100 units/s.
_VIEW_CELLS = (4.0, 3.0)
_SPEED_CELLS = 0.4
_SATURATED_CPU_PERCENT = 85.0
_SATURATED_LAG_MS = 50.0


class LoadTestError(Exception):
    """Bad arguments, or a server that cannot be load-tested: exit status 2, one line."""


@dataclass(frozen=True, slots=True)
class LoadTestOptions:
    """What to run; `view` and `speed` None mean "from each map's cell size"."""

    url: str
    clients: int = 100
    seconds: float = 30.0
    ramp: float = 0.0
    view: tuple[float, float] | None = None
    speed: float | None = None
    view_interval: float = 1.0
    margin: int = 1
    ping_interval: float = 1.0
    sample: int = 5
    maps: tuple[str, ...] = ()
    token: str | None = None
    compression: bool = False
    proto: int = 1
    seed: int = 1
    out: Path | None = None
    connect_timeout: float = 10.0
    connect_concurrency: int = 64
    check_timeout: float = 20.0
    quiet: bool = False
    argv: tuple[str, ...] = field(default=(), compare=False)


# -- the command line ---------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line instead of argparse's usage block: the caller prints it.
        raise LoadTestError(f"{message} (see --help)")


def _positive(kind: type[float] | type[int], *, zero: bool = False) -> Any:
    def parse(text: str) -> float | int:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(v) or v < 0 or (v == 0 and not zero):
            raise argparse.ArgumentTypeError(f"must be {'>= 0' if zero else '> 0'}: {text!r}")
        return v

    return parse


def parse_args(argv: Sequence[str]) -> LoadTestOptions:
    """The options the command line gives; raises `LoadTestError` on a bad one
    (and `SystemExit(0)` for --help)."""
    d = LoadTestOptions(url="")
    p = _Parser(
        prog=_PROG,
        description=(
            "Drive a synkworld server (protocol v1, or v2 with --proto 2) with panning "
            "clients; measure and check them."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("url", help="the server's WebSocket, e.g. ws://127.0.0.1:8080/ws")
    p.add_argument("--clients", "-n", type=_positive(int), default=d.clients)
    p.add_argument(
        "--seconds", type=_positive(float), default=d.seconds, help="measured, after the ramp"
    )
    p.add_argument(
        "--ramp",
        type=_positive(float, zero=True),
        default=d.ramp,
        help="seconds to spread the connections over",
    )
    p.add_argument(
        "--view",
        nargs=2,
        type=_positive(float),
        metavar=("W", "H"),
        default=None,
        help="viewport size in map units [4 x 3 cells of each map]",
    )
    p.add_argument(
        "--speed",
        type=_positive(float, zero=True),
        default=None,
        help="panning speed, map units/s [0.4 cells/s]",
    )
    p.add_argument("--view-interval", type=_positive(float), default=d.view_interval)
    p.add_argument("--margin", type=_positive(int, zero=True), default=d.margin)
    p.add_argument("--ping-interval", type=_positive(float), default=d.ping_interval)
    p.add_argument(
        "--sample",
        type=_positive(int, zero=True),
        default=d.sample,
        help="clients that apply every frame and are checked at the end",
    )
    p.add_argument(
        "--map",
        action="append",
        default=[],
        dest="maps",
        help="a map to pan over (repeatable) [every map with bounds in the hello]",
    )
    p.add_argument("--token", default=None, help="sent as the `token` query parameter")
    p.add_argument(
        "--compression", action="store_true", help="offer permessage-deflate, as browsers do"
    )
    p.add_argument(
        "--proto",
        type=int,
        choices=PROTOCOLS,
        default=d.proto,
        help="the protocol version the clients speak: 1 (JSON text frames) or 2 (binary "
        "frames: offers the subprotocol synkworld.v2; a server that does not select it "
        "ends the run)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="fixes the viewports' paths")
    p.add_argument(
        "--out", type=Path, default=None, help="directory for the results [./loadtest-<time>/]"
    )
    p.add_argument("--connect-timeout", type=_positive(float), default=d.connect_timeout)
    p.add_argument(
        "--connect-concurrency",
        type=_positive(int),
        default=d.connect_concurrency,
        help="handshakes in flight at once",
    )
    p.add_argument("--check-timeout", type=_positive(float), default=d.check_timeout)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    a = p.parse_args(list(argv))
    try:
        url = urlsplit(a.url)
        host = url.hostname
    except ValueError:
        host = None
    if not host or url.scheme not in ("ws", "wss", "http", "https"):
        raise LoadTestError(f"expected a ws:// or wss:// URL, got {a.url!r}")
    return LoadTestOptions(
        url=a.url,
        clients=a.clients,
        seconds=a.seconds,
        ramp=a.ramp,
        view=(a.view[0], a.view[1]) if a.view else None,
        speed=a.speed,
        view_interval=a.view_interval,
        margin=a.margin,
        ping_interval=a.ping_interval,
        sample=min(a.sample, a.clients),
        maps=tuple(a.maps),
        token=a.token,
        compression=a.compression,
        proto=a.proto,
        seed=a.seed,
        out=a.out,
        connect_timeout=a.connect_timeout,
        connect_concurrency=a.connect_concurrency,
        check_timeout=a.check_timeout,
        quiet=a.quiet,
        argv=tuple(argv),
    )


# -- a run ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    """Where one client pans."""

    map: str
    panning: Panning
    path: PanPath


def _with_query(url: str, **params: str) -> str:
    """`url` with these query parameters set (replacing any of the same name)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query += params.items()
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


def _shown_url(url: str) -> str:
    """`url` fit to print and store: its token, if any, as ***."""
    if any(k == "token" for k, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)):
        return _with_query(url, token="***")
    return url


def _shown_command(argv: Sequence[str]) -> str:
    shown = list(argv)
    for i, v in enumerate(shown):
        if v == "--token" and i + 1 < len(shown):
            shown[i + 1] = "***"
        elif v.startswith("--token="):
            shown[i] = "--token=***"
        elif "://" in v:
            shown[i] = _shown_url(v)
    return " ".join([_PROG, *(shlex.quote(v) for v in shown)])


def _number(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


class _Run:
    """One load test: the clients, their schedule, and what they measured."""

    def __init__(
        self,
        opts: LoadTestOptions,
        progress: Progress,
        before_clients: Callable[[], None] | None = None,
    ) -> None:
        self.opts = opts
        self.progress = progress
        self.before_clients = before_clients
        self.url = _with_query(opts.url, token=opts.token) if opts.token else opts.url
        self.t0 = 0.0
        self.clients: list[LoadClient] = []
        self.plans: list[_Plan] = []
        self.maps_used: dict[str, dict[str, Any]] = {}
        self.tick_s = 0.05
        self.attempted = 0
        self.connect_s: list[float] = []
        self.failures: Counter[str] = Counter()
        self.readers: list[asyncio.Task[None]] = []
        self.heap: list[tuple[float, int, int]] = []
        self.stopping = False
        self.sampling = True
        self.lags: list[tuple[float, float]] = []
        # Round trips in ms, drained from the clients once a second (a long run of
        # many clients would otherwise keep every pong twice, as tuples).
        self.window_rtts: array[float] = array("d")
        self.window_from: float | None = None
        self.series: dict[str, list[Any]] = {
            k: []
            for k in (
                "t_s",
                "connected",
                "bytes_per_client_s_median",
                "bytes_per_client_s_p99",
                "frames_per_client_s_median",
                "frames_per_client_s_p99",
                "ping_rtt_ms_p50",
                "ping_rtt_ms_p99",
            )
        }

    # -- before the clients ---------------------------------------------------------------------

    async def probe(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        """One connection first: is the server there, and what is its map?"""
        probe = LoadClient(-1, self.url, proto=self.opts.proto)
        try:
            hello = await probe.connect(session, timeout_s=self.opts.connect_timeout)
        except ConnectFailedError as e:
            raise LoadTestError(f"cannot load-test {_shown_url(self.opts.url)}: {e}") from None
        await probe.close()
        return hello

    def plan(self, hello: dict[str, Any]) -> None:
        """Each client's map and path, from the maps the hello describes."""
        opts = self.opts
        maps: dict[str, Any] = hello["maps"]
        for name in opts.maps:
            if name not in maps:
                raise LoadTestError(
                    f"the server has no map {name!r} (it has: {', '.join(sorted(maps))})"
                )
        usable: dict[str, tuple[tuple[float, float, float, float], float]] = {}
        for name in opts.maps or sorted(maps):
            spec = maps[name]
            bounds = spec.get("bounds") if isinstance(spec, dict) else None
            cell = spec.get("cell") if isinstance(spec, dict) else None
            if (
                isinstance(bounds, list)
                and len(bounds) == 4
                and all(_number(v) for v in bounds)
                and bounds[2] > bounds[0]
                and bounds[3] > bounds[1]
                and _number(cell)
                and cell > 0
            ):
                usable[name] = ((bounds[0], bounds[1], bounds[2], bounds[3]), float(cell))
            elif opts.maps:
                raise LoadTestError(f"the hello gives map {name!r} no bounds and cell size")
        if not usable:
            raise LoadTestError("the server's hello names no map with bounds and a cell size")
        rate = hello.get("rate")
        self.tick_s = 1.0 / rate if _number(rate) and rate > 0 else 0.05
        pannings: dict[str, Panning] = {}
        for name, (extent, cell) in usable.items():
            w, h = opts.view or (_VIEW_CELLS[0] * cell, _VIEW_CELLS[1] * cell)
            speed = opts.speed if opts.speed is not None else _SPEED_CELLS * cell
            pannings[name] = Panning(extent, w, h, speed, opts.seed)
            self.maps_used[name] = {
                "extent": list(extent),
                "cell": cell,
                "view": [w, h],
                "speed": speed,
            }
        names = list(pannings)
        k = opts.sample
        sampled = {(i * opts.clients) // k for i in range(k)} if k else set()
        for i in range(opts.clients):
            name = names[i % len(names)]
            pan = pannings[name]
            self.plans.append(_Plan(name, pan, pan.path(i)))
            mirror = strict_mirror(opts.proto) if i in sampled else None
            self.clients.append(
                LoadClient(i, self.url, mirror=mirror, compress=opts.compression, proto=opts.proto)
            )

    # -- while the clients run ----------------------------------------------------------------

    async def connect_all(self, session: aiohttp.ClientSession) -> None:
        """Connects every client at its moment of the ramp; each starts reading and panning."""
        opts = self.opts
        sem = asyncio.Semaphore(opts.connect_concurrency)
        n = len(self.clients)

        async def one(c: LoadClient) -> None:
            await asyncio.sleep(max(0.0, self.t0 + c.index * opts.ramp / n - time.monotonic()))
            async with sem:
                start = time.monotonic()
                try:
                    await c.connect(session, timeout_s=opts.connect_timeout)
                except ConnectFailedError as e:
                    self.failures[str(e)] += 1
                    return
                finally:
                    self.attempted += 1
                self.connect_s.append(time.monotonic() - start)
            plan = self.plans[c.index]
            now = time.monotonic()
            await c.send_view(plan.map, plan.panning.rect(plan.path, now - self.t0), opts.margin)
            self.readers.append(asyncio.create_task(c.read()))
            # Each client keeps its own phase, so that views and pings are spread in time.
            phase = view_phase(opts.seed, c.index, opts.view_interval)
            nxt = self.t0 + phase
            nxt += max(0, math.ceil((now - nxt) / opts.view_interval)) * opts.view_interval
            heapq.heappush(self.heap, (nxt, 2 * c.index, c.index))
            ping_at = now + view_phase(opts.seed + 1, c.index, opts.ping_interval)
            heapq.heappush(self.heap, (ping_at, 2 * c.index + 1, c.index))

        def status() -> str:
            return (
                f"{self.attempted - sum(self.failures.values())}/{n} connected,"
                f" {sum(self.failures.values())} failed"
            )

        tracker = asyncio.create_task(
            self.progress.track("connecting", lambda: self.attempted / n, status)
        )
        try:
            await asyncio.gather(*(one(c) for c in self.clients))
        finally:
            tracker.cancel()
            await asyncio.gather(tracker, return_exceptions=True)

    async def schedule(self) -> None:
        """Sends every client's views and pings when they are due, until told to stop."""
        opts = self.opts
        heap = self.heap
        while not self.stopping:
            now = time.monotonic()
            while heap and heap[0][0] <= now and not self.stopping:
                due, seq, i = heapq.heappop(heap)
                c = self.clients[i]
                if not c.connected:
                    continue
                if seq % 2 == 0:
                    plan = self.plans[i]
                    rect = plan.panning.rect(plan.path, now - self.t0)
                    await c.send_view(plan.map, rect, opts.margin)
                    interval = opts.view_interval
                else:
                    await c.ping_for_rtt()
                    interval = opts.ping_interval
                nxt = due + interval
                if nxt <= now:
                    nxt = now + interval  # behind: skip the missed beats, keep the pace
                heapq.heappush(heap, (nxt, seq, i))
            delay = heap[0][0] - time.monotonic() if heap else 0.05
            await asyncio.sleep(min(max(delay, 0.001), 0.05))

    async def sample(self) -> None:
        """Once a second: every connected client's rates and the pongs that came meanwhile."""
        prev: dict[int, tuple[int, int]] = {}
        last = time.monotonic()
        s = self.series
        while self.sampling:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            dt = max(now - last, 1e-6)
            last = now
            b_rates: list[float] = []
            f_rates: list[float] = []
            rtts = self.drain_rtts()
            connected = 0
            for c in self.clients:
                if not c.connected:
                    prev.pop(c.index, None)
                    continue
                connected += 1
                cur = (_wire(c), c.frames)
                before = prev.get(c.index)
                if before is not None:  # a client that just connected has no full second yet
                    b_rates.append((cur[0] - before[0]) / dt)
                    f_rates.append((cur[1] - before[1]) / dt)
                prev[c.index] = cur
            s["t_s"].append(round(now - self.t0, 2))
            s["connected"].append(connected)
            for name, values, nd in (
                ("bytes_per_client_s", b_rates, 1),
                ("frames_per_client_s", f_rates, 2),
            ):
                s[f"{name}_median"].append(round(percentile(values, 50), nd) if values else None)
                s[f"{name}_p99"].append(round(percentile(values, 99), nd) if values else None)
            s["ping_rtt_ms_p50"].append(round(percentile(rtts, 50), 2) if rtts else None)
            s["ping_rtt_ms_p99"].append(round(percentile(rtts, 99), 2) if rtts else None)

    def drain_rtts(self) -> list[float]:
        """The round trips (ms) of the pongs since the last call; those in the window kept."""
        out: list[float] = []
        start = self.window_from
        for c in self.clients:
            if not c.rtts:
                continue
            for at, rtt in c.rtts:
                out.append(rtt * 1000)
                if start is not None and at >= start:
                    self.window_rtts.append(rtt * 1000)
            c.rtts.clear()
        return out

    async def watch_lag(self) -> None:
        """How late the event loop wakes from a 50 ms sleep: late means frames read late."""
        period = 0.05
        while True:
            t = time.perf_counter()
            await asyncio.sleep(period)
            self.lags.append((time.monotonic(), time.perf_counter() - t - period))

    def status(self) -> str:
        """The running phase's figures for the progress bar: the last second's."""
        s = self.series
        if not s["t_s"]:
            return f"{sum(c.connected for c in self.clients)} clients"
        b, f, rtt = (
            s["bytes_per_client_s_median"][-1],
            s["frames_per_client_s_median"][-1],
            s["ping_rtt_ms_p50"][-1],
        )
        errors = sum(sum(c.errors.values()) for c in self.clients)
        return (
            f"{s['connected'][-1]} clients, "
            + (f"{b / 1024:.1f} KiB/s {f:.1f} frames/s per client, " if b is not None else "")
            + (f"ping p50 {rtt:.1f} ms, " if rtt is not None else "")
            + f"errors {errors}"
        )

    # -- the measured window ---------------------------------------------------------------------

    def mark(self) -> dict[str, Any]:
        """The counters at the window's start."""
        t = os.times()
        self.drain_rtts()  # what came before the window is not its
        self.window_from = time.monotonic()
        return {
            "at": self.window_from,
            "cpu": t.user + t.system,
            "clients": {
                c.index: (_wire(c), c.bytes, c.frames, c.ticks) for c in self.clients if c.connected
            },
        }

    def window(self, mark: dict[str, Any]) -> dict[str, Any]:
        """The window's figures, from the counters now and at `mark`."""
        end = time.monotonic()
        t = os.times()
        elapsed = max(end - mark["at"], 1e-9)
        cpu_percent = 100 * (t.user + t.system - mark["cpu"]) / elapsed
        wire: list[float] = []
        payload: list[float] = []
        frames: list[float] = []
        ticks: list[float] = []
        closed: Counter[str] = Counter()
        for c in self.clients:
            m = mark["clients"].get(c.index)
            if m is None:
                continue
            wire.append((_wire(c) - m[0]) / elapsed)
            payload.append((c.bytes - m[1]) / elapsed)
            frames.append((c.frames - m[2]) / elapsed)
            ticks.append((c.ticks - m[3]) / elapsed)
            if not c.connected:
                closed[str(c.close_code)] += 1
        self.drain_rtts()
        self.window_from = None  # the check's pings are not the window's
        rtts = self.window_rtts
        lags = [lag * 1000 for at, lag in self.lags if mark["at"] <= at <= end]
        lag = {
            "p50": round(percentile(lags, 50), 2),
            "p99": round(percentile(lags, 99), 2),
            "max": round(max(lags, default=0.0), 2),
        }
        reasons = []
        if cpu_percent >= _SATURATED_CPU_PERCENT:
            reasons.append(f"it used {cpu_percent:.0f}% of a core")
        if lag["p99"] > _SATURATED_LAG_MS:
            reasons.append(f"its event loop lag p99 was {lag['p99']:.0f} ms")
        return {
            "window_start_s": round(mark["at"] - self.t0, 3),
            "window_s": round(elapsed, 3),
            "bytes_per_client_s": spread(wire),
            "payload_bytes_per_client_s": spread(payload),
            "frames_per_client_s": spread(frames, 2),
            "tick_frames_per_client_s": spread(ticks, 2),
            "ping_rtt_ms": {
                "p50": round(percentile(rtts, 50), 2),
                "p99": round(percentile(rtts, 99), 2),
                "max": round(max(rtts, default=0.0), 2),
                "samples": len(rtts),
            },
            "closed_during_run": sum(closed.values()),
            "close_codes": dict(sorted(closed.items())),
            "loadgen": {
                "cpu_percent": round(cpu_percent, 1),
                "loop_lag_ms": lag,
                "saturated": bool(reasons),
                "saturation_reasons": reasons,
            },
        }

    # -- the check ---------------------------------------------------------------------------

    async def check_all(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        """Each sampled client against a fresh checker (synkworld/_loadtest_check.py)."""
        sampled = [c for c in self.clients if c.mirror is not None]
        live = [c for c in sampled if c.connected]
        # The server has read each client's last view once its pong is back; the
        # keys that view changes arrive with the next tick frame or so.
        await asyncio.gather(*(c.sync(self.opts.check_timeout) for c in live))
        await asyncio.sleep(max(0.3, 5 * self.tick_s))
        done = 0

        async def one(c: LoadClient) -> dict[str, Any]:
            nonlocal done
            # The server may close clients under load (1013, too far behind), and a
            # client may not have got in at all: figures of the run, not wrong caches.
            excused = not c.connected
            try:
                r = await check_client(
                    session,
                    self.url,
                    c,
                    timeout_s=self.opts.check_timeout,
                    tick_s=self.tick_s,
                    compress=self.opts.compression,
                )
            finally:
                done += 1
            r["excused"] = excused
            return r

        tracker = asyncio.create_task(
            self.progress.track(
                "checking",
                lambda: done / max(len(sampled), 1),
                lambda: f"{done}/{len(sampled)} sampled clients compared",
            )
        )
        try:
            return list(await asyncio.gather(*(one(c) for c in sampled)))
        finally:
            tracker.cancel()
            await asyncio.gather(tracker, return_exceptions=True)

    async def close_all(self) -> None:
        """Closes every client and stops their readers."""
        await asyncio.gather(*(c.close() for c in self.clients))
        for r in self.readers:
            r.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)

    # -- the whole run -----------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Probe, plan, connect, measure, check; the result (not yet written anywhere)."""
        opts = self.opts
        started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, connect=opts.connect_timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            hello = await self.probe(session)
            self.plan(hello)
            if self.before_clients is not None:
                self.before_clients()
            self.progress.note(
                f"{_shown_url(opts.url)}: maps {', '.join(self.maps_used)}, "
                f"{hello.get('rate')} ticks/s; {opts.clients} clients"
                + (f" over {opts.ramp:g} s" if opts.ramp else "")
            )
            self.t0 = time.monotonic()
            background = [
                asyncio.create_task(self.schedule()),
                asyncio.create_task(self.sample()),
                asyncio.create_task(self.watch_lag()),
            ]
            try:
                await self.connect_all(session)
                if not any(c.connected for c in self.clients):
                    reasons = "; ".join(r for r, _ in self.failures.most_common(2))
                    raise LoadTestError(f"no client could connect: {reasons}")
                mark = self.mark()
                await self.progress.wait(opts.seconds, "running", self.status)
                window = self.window(mark)
                self.sampling = False
                self.stopping = True
                checks = await self.check_all(session)
            finally:
                self.sampling = False
                self.stopping = True
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                await self.close_all()
        return self.result(hello, started_at, window, checks)

    def result(
        self,
        hello: dict[str, Any],
        started_at: str,
        window: dict[str, Any],
        checks: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """Everything the JSON file holds (bench/README.md lists the fields)."""
        opts = self.opts
        errors: Counter[str] = Counter()
        examples: list[str] = []
        for c in self.clients:
            errors.update(c.errors)
            examples += c.error_examples[: max(0, 5 - len(examples))]
        connected = sum(1 for c in self.clients if c.ws is not None)
        connect_ms = [s * 1000 for s in self.connect_s]
        violations = sum(r["violations"] + r["checker_violations"] for r in checks)
        mismatches = sum(r["mismatches"] for r in checks)
        checked = sum(1 for r in checks if r["checked"])
        ok = not checks or (
            violations == 0
            and mismatches == 0
            and checked > 0
            and all(r["ok"] or r["excused"] for r in checks)
        )
        settings = asdict(opts)
        for k in ("argv", "token", "quiet"):
            settings.pop(k)
        settings["url"] = _shown_url(opts.url)
        settings["token"] = "***" if opts.token else None
        settings["out"] = str(opts.out) if opts.out else None
        return {
            "tool": _PROG,
            "version": __version__,
            "command": _shown_command(opts.argv),
            "url": _shown_url(opts.url),
            "started_at": started_at,
            "ok": ok,
            "settings": settings,
            "server": {
                "proto": hello.get("proto"),
                "rate": hello.get("rate"),
                "tick_at_start": hello.get("tick"),
                "maps": hello.get("maps"),
            },
            "maps_used": self.maps_used,
            "window_start_s": window["window_start_s"],
            "window_s": window["window_s"],
            "clients": {
                "requested": opts.clients,
                "connected": connected,
                "connect_failures": sum(self.failures.values()),
                "connect_failure_reasons": dict(self.failures.most_common(5)),
                "connect_ms": {
                    "p50": round(percentile(connect_ms, 50), 1),
                    "p99": round(percentile(connect_ms, 99), 1),
                    "max": round(max(connect_ms, default=0.0), 1),
                },
                "closed_during_run": window["closed_during_run"],
                "close_codes": window["close_codes"],
            },
            "bytes_per_client_s": window["bytes_per_client_s"],
            "payload_bytes_per_client_s": window["payload_bytes_per_client_s"],
            "frames_per_client_s": window["frames_per_client_s"],
            "tick_frames_per_client_s": window["tick_frames_per_client_s"],
            "ping_rtt_ms": window["ping_rtt_ms"],
            "errors_received": {
                "total": sum(errors.values()),
                "by_code": dict(errors.most_common()),
                "examples": examples,
                "bad_frames": sum(c.bad_frames for c in self.clients),
            },
            "resyncs": {
                "total": sum(c.resyncs for c in self.clients),
                "clients": sum(1 for c in self.clients if c.resyncs),
            },
            "correctness": {
                "ok": ok,
                "sampled": len(checks),
                "checked": checked,
                "mismatches": mismatches,
                "violations": violations,
                "clients": checks,
            },
            "loadgen": window["loadgen"],
            "series": self.series,
        }


def _wire(c: LoadClient) -> int:
    return c.wire_bytes if c.wire is not None else c.bytes


async def run_loadtest(
    opts: LoadTestOptions,
    progress: Progress | None = None,
    *,
    before_clients: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Runs one load test; its result as the JSON file holds it (nothing is written).

    `before_clients` runs once the server answered and before any client
    connects (it may raise `LoadTestError` to stop there). Raises
    `LoadTestError` when the server cannot be reached or offers no map to pan over.
    """
    return await _Run(opts, progress or Progress(enabled=False), before_clients).run()


def _out_dir(opts: LoadTestOptions) -> Path:
    return opts.out or Path.cwd() / time.strftime("loadtest-%Y%m%d-%H%M%S")


def _make_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".loadtest-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise LoadTestError(f"cannot write the results to {out}: {e.strerror or e}") from None


def _raise_fd_limit(clients: int) -> None:
    try:
        import resource
    except ImportError:  # not on this platform: the system's limit stands
        return
    need = clients + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < need:
        raise LoadTestError(
            f"{clients} clients need about {need} open files; the limit is {soft} (ulimit -n)"
        )


def main(argv: Sequence[str]) -> int:
    """`synkworld loadtest ARGS`: 0 when the check passed, 1 when it failed, 2 when it
    could not run (bad arguments, a server that cannot be reached)."""
    try:
        try:
            opts = parse_args(argv)
        except SystemExit as e:  # --help
            return int(e.code or 0)
        _raise_fd_limit(opts.clients)
        out = _out_dir(opts)
        progress = Progress(enabled=not opts.quiet)
        # Made once the server answered: a run that cannot start leaves no empty
        # directory behind, and one that cannot write its results does not start.
        result = asyncio.run(run_loadtest(opts, progress, before_clients=lambda: _make_dir(out)))
    except LoadTestError as e:
        sys.stderr.write(f"{_PROG}: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{_PROG}: interrupted\n")
        return 130
    json_path, svg_path = out / "loadtest.json", out / "loadtest.svg"
    result["files"] = {"json": str(json_path), "svg": str(svg_path)}
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    write_svg(result, svg_path)
    sys.stdout.write(summary(result) + "\n")
    sys.stdout.write(f"results: {json_path} and {svg_path}\n")
    return 0 if result["correctness"]["ok"] else 1
