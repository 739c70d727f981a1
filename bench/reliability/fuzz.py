"""fuzz: fuzzed frames over many connections; the server survives, answers, does not grow.

Every connection connects, then warm-up passes and one measured pass of fuzzed
frames are spread over them; most connections are paced, some unpaced and mostly
bad (they reach the error limit: 1008), some flood pings (rate limit). A
connection the server closes is opened again. The verdict: the process stays up
and ticking, every connection answers a final ping, a fresh client is correct,
and VmRSS grows by at most ``--rss-limit-mib`` over the measured pass.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from bench.reliability.client import WS_DONE, WS_TEXT, fresh_client_check
from bench.reliability.fuzzer import Fuzzer
from bench.reliability.processes import Child, get_json, rss_bytes, wait_healthz
from bench.reliability.results import Notes, Outcome, check, rounded
from bench.reliability.world import spec_from_args

MiB = 1024 * 1024


@dataclass
class FuzzStats:
    """What the fuzz clients sent and received."""

    sent: Counter[str] = dataclasses.field(default_factory=Counter)
    received: Counter[str] = dataclasses.field(default_factory=Counter)
    errors: Counter[str] = dataclasses.field(default_factory=Counter)
    close_codes: Counter[str] = dataclasses.field(default_factory=Counter)
    # "<close code> after <category of the last frame sent>": which frames closed connections.
    closed_after: Counter[str] = dataclasses.field(default_factory=Counter)
    connects: int = 0
    connect_failures: int = 0
    send_failures: int = 0
    syncs_ok: int = 0
    syncs_failed: int = 0


class FuzzSlot:
    """One of the concurrent connections; it reconnects when the server closes it."""

    def __init__(self, index: int, mode: str, fuzzer: Fuzzer, stats: FuzzStats, url: str) -> None:
        self.index = index
        self.mode = mode  # "normal" (paced), "heavy" (no pause: 1008), "flood" (pings: rate limit)
        self.fuzzer = fuzzer
        self.stats = stats
        self.url = url
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None
        self._pongs: dict[int, asyncio.Future[None]] = {}
        self._ping = 0
        self.quota = 0
        self.last_sent = "nothing"

    async def _connect(self, http: aiohttp.ClientSession, deadline: float) -> bool:
        while time.monotonic() < deadline:
            try:
                ws = await http.ws_connect(self.url + "/ws", max_msg_size=0, heartbeat=None)
            except (aiohttp.ClientError, OSError, TimeoutError):
                self.stats.connect_failures += 1
                await asyncio.sleep(0.05)
                continue
            self.stats.connects += 1
            self.ws = ws
            self.reader = asyncio.create_task(self._read(ws))
            return True
        return False

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        stats = self.stats
        try:
            while True:
                msg = await ws.receive()
                if msg.type is WS_TEXT:
                    data: str = msg.data
                    if data.startswith('{"m":"tick"'):
                        stats.received["tick"] += 1
                        continue
                    m = orjson.loads(data)
                    kind = str(m.get("m"))
                    stats.received[kind] += 1
                    if kind == "error":
                        stats.errors[str(m.get("code"))] += 1
                    elif kind == "pong":
                        fut = self._pongs.pop(m.get("t"), None)
                        if fut is not None and not fut.done():
                            fut.set_result(None)
                elif msg.type in WS_DONE:
                    break
                else:
                    stats.received[f"ws-{msg.type.name.lower()}"] += 1
        finally:
            stats.close_codes[str(ws.close_code)] += 1
            stats.closed_after[f"{ws.close_code} after {self.last_sent}"] += 1
            for fut in self._pongs.values():
                if not fut.done():
                    fut.cancel()
            self._pongs.clear()

    def _live(self) -> bool:
        return (
            self.ws is not None
            and not self.ws.closed
            and self.reader is not None
            and not (self.reader.done())
        )

    async def _wait_closed(self, timeout: float) -> None:
        if self.reader is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.reader), timeout)

    async def send(self, http: aiohttp.ClientSession, frames: int, deadline: float) -> None:
        """Sends `frames` fuzzed frames (reconnecting as needed), then syncs with a ping."""
        rng = self.fuzzer.rng
        left = frames
        while left > 0 and time.monotonic() < deadline:
            if not self._live():
                await self._wait_closed(1.0)
                if not await self._connect(http, deadline):
                    break
            ws = self.ws
            assert ws is not None
            cat, payload, text = self.fuzzer.ping() if self.mode == "flood" else self.fuzzer.frame()
            try:
                if text:
                    await ws.send_frame(payload, aiohttp.WSMsgType.TEXT)
                else:
                    await ws.send_bytes(payload)
            except (ConnectionError, RuntimeError, aiohttp.ClientError):
                self.stats.send_failures += 1
                continue
            self.stats.sent[cat] += 1
            self.last_sent = cat
            left -= 1
            if cat in ("oversized", "bad_utf8"):
                # The server closes the connection for these: see it close before going on.
                await self._wait_closed(5.0)
            elif self.mode == "normal":
                await asyncio.sleep(rng.uniform(0, 0.1))
        await self.sync(http, deadline)

    async def sync(self, http: aiohttp.ClientSession, deadline: float) -> None:
        """Makes sure the slot has an open connection the server still answers (a ping)."""
        for _ in range(3):
            if not self._live():
                await self._wait_closed(1.0)
                if not await self._connect(http, deadline):
                    break
            ws = self.ws
            assert ws is not None
            self._ping += 1
            t = self.index * 1_000_000 + self._ping
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._pongs[t] = fut
            try:
                await ws.send_str(f'{{"m":"ping","t":{t}}}')
                # Flood slots may have spent their tokens: the bucket refills in ~2 s.
                await asyncio.wait_for(fut, 15.0)
                self.stats.syncs_ok += 1
                return
            except (ConnectionError, RuntimeError, aiohttp.ClientError, TimeoutError):
                pass
            except asyncio.CancelledError:
                if fut.cancelled():
                    continue  # the connection closed under the ping: try again
                raise
        self.stats.syncs_failed += 1

    async def close(self) -> None:
        """Closes the connection (bounded)."""
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 3.0)
        await self._wait_closed(3.0)


def _copy_stats(stats: FuzzStats) -> FuzzStats:
    return dataclasses.replace(
        stats,
        sent=Counter(stats.sent),
        received=Counter(stats.received),
        errors=Counter(stats.errors),
        close_codes=Counter(stats.close_codes),
        closed_after=Counter(stats.closed_after),
    )


def _quotas(frames: int, modes: list[str]) -> list[int]:
    """Splits `frames` over the slots, heavy and flood slots taking more than normal ones."""
    weight = {"normal": 1.0, "heavy": 8.0, "flood": 16.0}
    w = [weight[m] for m in modes]
    total = sum(w)
    quotas = [int(frames * x / total) for x in w]
    for i in range(frames - sum(quotas)):
        quotas[i % len(quotas)] += 1
    return quotas


async def run_fuzz(a: argparse.Namespace, notes: Notes) -> Outcome:
    """Fuzzed frames over many connections: the server survives, answers, does not grow."""
    spec = dataclasses.replace(spec_from_args(a), churn=0)
    logs = a.out / "logs"
    rng = random.Random(a.seed)
    stats = FuzzStats()
    only = [c for c in a.only.split(",") if c] if a.only else None
    server = await Child.server(
        "server",
        [
            *spec.flags(),
            *("--port", "0", "--max-seconds", str(a.timeout + 60)),
            *(["--tracemalloc"] if a.tracemalloc else []),
        ],
        logs / "reliability-fuzz-server.log",
    )
    slots: list[FuzzSlot] = []
    rss: dict[str, int] = {}
    rss_samples: list[int] = []
    figures: dict[str, Any] = {}
    deadline = time.monotonic() + a.timeout
    try:
        ready = await server.ready(60)
        url = ready["url"]
        pid = ready["pid"]
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, connect=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            await wait_healthz(http, url, 30)
            n = a.connections
            modes = ["normal"] * n
            picks = rng.sample(range(n), k=min(n, round(n * (a.heavy + a.flood))))
            for j, i in enumerate(picks):
                modes[i] = "heavy" if j < round(n * a.heavy) else "flood"
            slots = [
                FuzzSlot(
                    i, modes[i], Fuzzer(random.Random(a.seed * 100_003 + i), spec, only), stats, url
                )
                for i in range(n)
            ]
            for s, q in zip(slots, _quotas(a.frames, modes), strict=True):
                s.quota = q

            async def sample_rss() -> None:
                while True:
                    rss_samples.append(rss_bytes(pid))
                    await asyncio.sleep(0.25)

            sampler = asyncio.create_task(sample_rss())
            sem = asyncio.Semaphore(100)

            async def connect(s: FuzzSlot) -> None:
                async with sem:
                    await s.sync(http, deadline)

            notes(f"connecting {n} clients")
            await asyncio.gather(*(connect(s) for s in slots))
            await asyncio.sleep(a.settle_s)
            rss["connected"] = rss_bytes(pid)
            # Warm-up passes are the same fuzz as the measured one (the generators go on):
            # the first burst raises the memory's high-water mark (every connection's read
            # buffers full at once); a leak is what a further pass adds.
            for k in range(a.warmup_passes):
                notes(f"warm-up pass {k + 1}: {a.frames} frames over {n} connections")
                await asyncio.gather(*(s.send(http, s.quota, deadline) for s in slots))
                await asyncio.sleep(a.settle_s)
                rss[f"after_warmup_pass_{k + 1}"] = rss_bytes(pid)
            warm_sent = sum(stats.sent.values())
            rss["after_warmup"] = rss_bytes(pid)
            if a.tracemalloc:
                async with http.post(url + "/rel/memory/mark") as resp:
                    resp.raise_for_status()
            before = _copy_stats(stats)
            notes(f"fuzzing: {a.frames} frames over {n} connections")
            t0 = time.monotonic()
            await asyncio.gather(*(s.send(http, s.quota, deadline) for s in slots))
            fuzz_s = time.monotonic() - t0
            alive_after_fuzz = server.alive
            after = _copy_stats(stats)
            await asyncio.sleep(a.settle_s)
            rss["end"] = rss_bytes(pid)
            health_ok = False
            health: dict[str, Any] = {}
            with contextlib.suppress(RuntimeError):
                _, health = await wait_healthz(http, url, 10)
                health_ok = bool(health.get("ok"))
            await asyncio.sleep(0.3)
            _, health2 = await wait_healthz(http, url, 10) if health_ok else (0.0, {})
            ticking = bool(health2) and health2.get("tick", 0) > health.get("tick", 0)
            server_stats = await get_json(http, url + "/rel/stats") if server.alive else {}
            memory: Any = None
            if a.tracemalloc:
                async with http.get(url + "/rel/memory") as resp:
                    memory = orjson.loads(await resp.read())
            notes("a fresh client: hello, snapshot, truth")
            fresh = await fresh_client_check(http, url, spec, a.tick_rate, a.seed)
            await asyncio.gather(*(s.close() for s in slots))
            await asyncio.sleep(a.settle_s)
            rss["after_close"] = rss_bytes(pid)
            sampler.cancel()
            alive_at_end = server.alive
            shutdown_s = await server.terminate(30)
    finally:
        for s in slots:
            if s.reader is not None and not s.reader.done():
                s.reader.cancel()
        await server.stop()

    measured = {
        "sent": after.sent - before.sent,
        "errors": after.errors - before.errors,
        "close_codes": after.close_codes - before.close_codes,
        "closed_after": after.closed_after - before.closed_after,
        "received": after.received - before.received,
    }
    growth = rss["end"] - rss["after_warmup"]
    first_burst = rss.get("after_warmup_pass_1", rss["after_warmup"]) - rss["connected"]
    figures = {
        "frames_sent": sum(measured["sent"].values()),
        "frames_sent_by_category": dict(sorted(measured["sent"].items())),
        "warmup_frames_sent": warm_sent,
        "fuzz_seconds": rounded(fuzz_s, 2),
        "frames_per_s": rounded(sum(measured["sent"].values()) / fuzz_s if fuzz_s else 0.0, 0),
        "error_frames_by_code": dict(sorted(measured["errors"].items())),
        "frames_received_by_kind": dict(sorted(measured["received"].items())),
        "close_codes": dict(sorted(measured["close_codes"].items())),
        "close_codes_after_category": dict(sorted(measured["closed_after"].items())),
        "connections": a.connections,
        "slot_modes": dict(Counter(s.mode for s in slots)),
        "connects_total": stats.connects,
        "connect_failures": stats.connect_failures,
        "send_failures": stats.send_failures,
        "syncs_ok": stats.syncs_ok,
        "syncs_failed": stats.syncs_failed,
        "rss_mib": {k: rounded(v / MiB, 2) for k, v in rss.items()},
        "rss_growth_mib": rounded(growth / MiB, 2),
        "rss_growth_first_pass_mib": rounded(first_burst / MiB, 2),
        "rss_peak_mib": rounded(max(rss_samples, default=0) / MiB, 2),
        "server_errors_by_code": server_stats.get("errors", {}),
        "server_connections_total": server_stats.get("connections_total"),
        "healthz": health,
        "fresh_client": fresh,
        "tracemalloc_growth": memory,
        "sigterm_exit_code": server.proc.returncode,
        "sigterm_shutdown_s": rounded(shutdown_s, 3),
    }
    checks = {
        "server_alive": check(
            alive_after_fuzz and alive_at_end,
            {"after_fuzz": alive_after_fuzz, "at_end": alive_at_end},
        ),
        "healthz": check(health_ok, health),
        "still_ticking": check(ticking, [health.get("tick"), health2.get("tick")]),
        "fresh_client": check(
            fresh["ok"], {k: fresh.get(k) for k in ("keys", "objects", "mismatches")}
        ),
        "every_slot_answered_a_ping_at_the_end": check(
            stats.syncs_failed == 0,
            f"{stats.syncs_failed} failed of {stats.syncs_ok + stats.syncs_failed}",
        ),
        "rss_growth_mib": check(
            growth <= a.rss_limit_mib * MiB, rounded(growth / MiB, 2), a.rss_limit_mib
        ),
    }
    summary = [
        f"{figures['frames_sent']} frames over {a.connections} connections in {fuzz_s:.1f} s "
        f"({figures['frames_per_s']:.0f}/s), {stats.connects} connects",
        f"errors by code: {figures['error_frames_by_code']}",
        f"close codes: {figures['close_codes']}",
        f"server RSS: {figures['rss_mib']} MiB (growth {figures['rss_growth_mib']} MiB)",
        f"SIGTERM afterwards: exit code {server.proc.returncode} in {shutdown_s:.2f} s",
    ]
    return figures, checks, summary
