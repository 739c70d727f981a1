"""The grid-world scenario on N processes sharing one map through Redis (`--processes N`).

    python -m bench.gridworld --processes 2                 # one process, then two, side by side
    python -m bench.gridworld --processes 2 --clients 1000

`run_cluster_once` starts a redis-server of its own (loopback, no persistence),
seeds a SQLite store with the scenario's entities, starts N
``bench.gridworld_server --cluster`` processes (each an owner; the regions are
shared out by the cluster itself), waits until every region is owned and every
entity loaded, then runs the same clients as one process does, client i on
process i mod N (the sampled clients, which decode every frame and whose
caches are checked, take turns). Every process steps the whole motion in
lockstep from one global tick and moves the entities it holds, so the world
after the motion is the same as on one process and the sampled clients'
caches are checked against the union of the processes' worlds.

Pinning: server k on CPU k mod n, the load generators on the CPUs after the
servers' (on two cores they share with a server), redis-server unpinned. The
figure compared is CPU per tick (the process's own CPU time), which a shared
core disturbs far less than wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil  # type: ignore[import-untyped]

from bench.gridworld import (
    Child,
    LoadGenerators,
    Options,
    Progress,
    _figures,
    _http,
    _r,
    percentile,
)
from bench.gridworld_scenario import Scenario, runqueue_wait_s
from bench.gridworld_server import entity_documents

__all__ = ["run_cluster_once", "scaling"]

REGION_CELLS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _regions(sc: Scenario) -> int:
    """The map's regions and the channel regions (`ClusterSettings.channel_regions`)."""
    from synkworld import ClusterSettings

    per_side = -(-round(sc.map_size / sc.cell_size) // REGION_CELLS)
    return int(per_side * per_side) + ClusterSettings().channel_regions


class RedisServer:
    """A redis-server on a free loopback port, persistence off, stopped by PID."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing (Debian: apt-get install redis-server)")
        self.binary = binary
        self.port = _free_port()
        self.workdir = workdir
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            self.binary,
            *("--bind", "127.0.0.1", "--port", str(self.port), "--save", ""),
            *("--appendonly", "no", "--hz", "100", "--dir", str(self.workdir)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    async def used_memory(self) -> dict[str, int]:
        """INFO memory's figures, read with a plain RESP request."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(b"*2\r\n$4\r\nINFO\r\n$6\r\nmemory\r\n")
            header = await reader.readline()
            body = await reader.readexactly(int(header[1:]) + 2)
        finally:
            writer.close()
        out: dict[str, int] = {}
        for line in body.decode().splitlines():
            name, _, value = line.partition(":")
            if name in ("used_memory", "used_memory_peak", "used_memory_rss"):
                out[name] = int(value)
        return out

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 10)
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()


async def _seed(db: Path, sc: Scenario) -> None:
    from synkworld.store import SQLiteStore, WriteBatch

    store = SQLiteStore(str(db))
    try:
        await store.apply(WriteBatch(upserts=entity_documents(sc)))
    finally:
        await store.close()


async def _shared_out(
    http: aiohttp.ClientSession, urls: list[str], sc: Scenario, timeout_s: float
) -> list[dict[str, Any]]:
    """Waits until every region is owned, every entity loaded, and that held for a second."""
    total = _regions(sc)
    deadline = time.monotonic() + timeout_s
    stable_since: float | None = None
    last: list[Any] = []
    health: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        health = [await _http(http, "GET", u + "/healthz") for u in urls]
        states = [await _http(http, "GET", u + "/bench/state") for u in urls]
        now = [(h.get("regions"), s["objects"]) for h, s in zip(health, states, strict=True)]
        complete = (
            sum(int(h.get("regions") or 0) for h in health) == total
            and all(int(h.get("regions") or 0) > 0 for h in health)
            and sum(s["objects"] for s in states) == sc.entities
        )
        if complete and now == last:
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since >= 1.0:
                return health
        else:
            stable_since = None
        last = now
        await asyncio.sleep(0.25)
    raise RuntimeError(f"the regions were not shared out in {timeout_s:g} s: {health}")


def _cpu_layout(opts: Options, processes: int, loadgens: int) -> tuple[list[Any], list[Any]]:
    if not opts.pin or not hasattr(os, "sched_getaffinity"):
        return [None] * processes, [None] * loadgens
    cpus = sorted(opts.cpus if opts.cpus is not None else os.sched_getaffinity(0))
    servers = [cpus[k % len(cpus)] for k in range(processes)]
    rest = cpus[processes:] or cpus[-1:]
    return servers, [rest[k % len(rest)] for k in range(loadgens)]


async def run_cluster_once(sc: Scenario, opts: Options, processes: int) -> dict[str, Any]:
    """Runs the scenario on `processes` owners sharing one map; returns its figures."""
    label = f"[{opts.label}cluster of {processes} E={sc.entities} C={sc.clients}]"
    progress = Progress(opts.progress, label)
    procs_lg = max(1, min(sc.loadgen_procs, sc.clients))
    server_cpus, lg_cpus = _cpu_layout(opts, processes, procs_lg)
    logs = opts.out / "logs"
    children: list[Child] = []
    t_started = time.time()
    with tempfile.TemporaryDirectory(prefix="gridworld-cluster-") as tmp:
        redis = RedisServer(Path(tmp))
        try:
            await redis.start()
            db = Path(tmp) / "world.sqlite3"
            progress.note(f"seeding the store with {sc.entities} entities ...")
            await _seed(db, sc)
            ports = [_free_port() for _ in range(processes)]
            urls = [f"http://127.0.0.1:{p}" for p in ports]
            servers: list[Child] = []
            for k in range(processes):
                cluster = {
                    "redis": redis.url,
                    "world": "gridworld",
                    "node": f"p{k}",
                    "db": str(db),
                    "peers": [u for j, u in enumerate(urls) if j != k],
                    "region_cells": REGION_CELLS,
                }
                args = ["--config", orjson.dumps(sc.to_json()).decode()]
                args += ["--cluster", orjson.dumps(cluster).decode(), "--port", str(ports[k])]
                args += ["--max-seconds", str(sc.warmup_s + sc.seconds + 600)]
                child = await Child.start(
                    f"server{k}",
                    "bench.gridworld_server",
                    args,
                    logs / f"cluster{processes}-server{k}.log",
                    server_cpus[k],
                )
                children.append(child)
                servers.append(child)
            for child in servers:
                await child.event(timeout=120)
            sprocs = [psutil.Process(child.pid) for child in servers]
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
                progress.note("sharing out the regions ...")
                health = await _shared_out(http, urls, sc, timeout_s=60 + sc.entities / 500)

                progress.note(f"connecting {sc.clients} clients to {processes} processes ...")
                loadgens = await LoadGenerators.start(
                    sc, opts, urls, lg_cpus, logs / f"cluster{processes}", children
                )

                # One global tick for the first motion step, a second ahead, on every process.
                states = [await _http(http, "GET", u + "/bench/state") for u in urls]
                behind0 = [
                    (await _http(http, "GET", u + "/bench/stats"))["ticks_behind"] for u in urls
                ]
                at = max(s["tick"] for s in states) + round(sc.tick_rate_hz)
                gos = [await _http(http, "POST", u + "/bench/go", {"at": at}) for u in urls]
                t0 = gos[0]["t0"]
                await loadgens.send({"cmd": "go", "t0": t0})
                await progress.wait(sc.warmup_s + max(0.0, t0 - time.time()), "warm-up")

                cpu0 = [p.cpu_times() for p in sprocs]
                wait0 = [runqueue_wait_s(p.pid) for p in sprocs]
                bus0 = [(await _http(http, "GET", u + "/bench/stats"))["bus"] for u in urls]
                t_start = time.time()
                await loadgens.ask({"cmd": "mark"}, timeout=30)
                await progress.wait(sc.seconds, "measuring")
                cpu1 = [p.cpu_times() for p in sprocs]
                wait1 = [runqueue_wait_s(p.pid) for p in sprocs]
                t_end = time.time()
                bus1 = [(await _http(http, "GET", u + "/bench/stats"))["bus"] for u in urls]
                redis_memory = await redis.used_memory()
                windows = await loadgens.ask({"cmd": "end"}, timeout=60)

                progress.note("waiting for the last motion tick, then checking the caches ...")
                deadline = time.monotonic() + opts.freeze_wait_s
                states = [await _http(http, "GET", u + "/bench/state") for u in urls]
                while not all(s["frozen"] for s in states) and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    states = [await _http(http, "GET", u + "/bench/state") for u in urls]
                if not all(s["frozen"] for s in states):
                    raise RuntimeError(f"the motion did not end in time: {states}")
                final_t = sc.motion_ticks / sc.tick_rate_hz
                await loadgens.ask({"cmd": "final", "t": final_t}, timeout=60)
                settled_polls = 0
                deadline = time.monotonic() + 60
                settles: list[dict[str, Any]] = []
                while settled_polls < 3 and time.monotonic() < deadline:
                    await asyncio.sleep(0.15)
                    settles = [await _http(http, "GET", u + "/bench/settled") for u in urls]
                    all_settled = all(s["settled"] for s in settles)
                    settled_polls = settled_polls + 1 if all_settled else 0
                checks = await loadgens.ask({"cmd": "check", "timeout": 15}, timeout=90)
                ids = [await _http(http, "GET", u + "/bench/ids") for u in urls]
                ticks = [await _http(http, "GET", u + "/bench/ticks") for u in urls]
                stats = [await _http(http, "GET", u + "/bench/stats") for u in urls]
                await loadgens.close()
        finally:
            for child in reversed(children):
                await child.stop()
            await redis.stop()

    per_process = []
    for k in range(processes):
        f = _figures(
            sc,
            t_start=t_start,
            t_end=t_end,
            server_cpu_s=_cpu_s(cpu1[k]) - _cpu_s(cpu0[k]),
            server_system_s=cpu1[k].system - cpu0[k].system,
            server_wait_s=wait1[k] - wait0[k],
            windows=windows,
            checks=checks,
            ticks=ticks[k],
            stats=stats[k],
            settled=settled_polls >= 3,
            settle=settles[k] if settles else {},
            settle_state=states[k],
            loadgen_cores=len(set(lg_cpus)) if lg_cpus[0] is not None else None,
            profile={},
            wall_s=time.time() - t_started,
        )
        server = f["server"]
        server["regions"] = health[k].get("regions")
        server["bus"] = _bus_window(bus0[k], bus1[k], server["ticks"])
        per_process.append(f)

    # The clients' figures are the same in every per-process view (they cover all
    # clients); the latency is taken again from the earliest start of each tick
    # over the processes (every process starts tick n at the same clock time).
    result = per_process[0]
    starts: dict[int, float] = {}
    for t in ticks:
        for n, s in zip(t["start_n"], t["start_t"], strict=True):
            starts[n] = min(s, starts.get(n, s))
    by_process: dict[int, list[float]] = {}
    for w in windows:
        for n, t, p in zip(w["lat_n"], w["lat_t"], w["lat_p"], strict=True):
            s = starts.get(n)
            if s is not None:
                by_process.setdefault(p, []).append((t - s) * 1000)
    lat_all = [v for vs in by_process.values() for v in vs]
    result["latency_ms"].update(
        p50=_r(percentile(lat_all, 50)),
        p99=_r(percentile(lat_all, 99)),
        max=_r(max(lat_all, default=0.0)),
        samples=len(lat_all),
        by_process={
            str(p): {"p50": _r(percentile(v, 50)), "p99": _r(percentile(v, 99)), "n": len(v)}
            for p, v in sorted(by_process.items())
        },
    )
    # Every id in exactly one world: none lost, none in two.
    seen: dict[str, int] = {}
    for part in ids:
        for oid in part:
            seen[oid] = seen.get(oid, 0) + 1
    twice = sorted(oid for oid, n in seen.items() if n > 1)
    lost = sc.entities - len(seen)
    result["correctness"]["ids"] = {
        "in_two_worlds": len(twice),
        "examples": twice[:5],
        "lost": lost,
    }
    result["correctness"]["ok"] = result["correctness"]["ok"] and not twice and lost == 0
    # A process that fell behind skips ticks and moves its entities two steps in one
    # commit: one version for two, so its clients' caches differ from one process's.
    result["ticks_skipped_during_motion"] = [
        st["ticks_behind"] - b for st, b in zip(stats, behind0, strict=True)
    ]
    result["servers"] = [f["server"] for f in per_process]
    result["server"] = _summed([f["server"] for f in per_process])
    result["redis"] = redis_memory
    result["processes"] = processes
    result["pinning"] = {"server_cpus": server_cpus, "loadgen_cpus": lg_cpus}
    return result


def _cpu_s(t: Any) -> float:
    return float(t.user + t.system)


def _bus_window(before: dict[str, Any], after: dict[str, Any], ticks: int) -> dict[str, Any]:
    d = {k: after[k] - before[k] for k in after if isinstance(after[k], int | float)}
    per = max(ticks, 1)
    return {
        "append_ms_per_tick": _r(1000 * d["append_seconds"] / per, 3),
        "read_ms_per_tick": _r(1000 * d["read_seconds"] / per, 3),
        "bytes_appended_per_tick": _r(d["bytes_appended"] / per, 0),
        "bytes_read_per_tick": _r(d["bytes_read"] / per, 0),
        "handovers_sent": d["handovers_sent"],
        "handovers_adopted": d["handovers_adopted"],
        "handovers_resent": d["handovers_resent"],
        "resyncs_owed": d["resyncs_owed"],
        "gaps": d["gaps"],
        "regions_late_at_end": after["regions_late"],
    }


def _summed(servers: list[dict[str, Any]]) -> dict[str, Any]:
    """The processes' figures as one server's: CPU summed, tick times of the slowest."""
    out = dict(servers[0])
    for name in ("cpu_ms_per_tick", "cpu_ms_per_tick_net", "cpu_system_ms_per_tick"):
        out[name] = _r(sum(s[name] for s in servers))
    out["cpu_percent_of_core"] = _r(sum(s["cpu_percent_of_core"] for s in servers), 1)
    out["tick_rate_hz"] = min(s["tick_rate_hz"] for s in servers)
    for name in ("tick_ms_p50", "tick_ms_p99", "tick_ms_max", "tick_ms_mean"):
        out[name] = max(s[name] for s in servers)
    for name in ("frames_dropped", "resyncs", "closed_slow", "ticks_behind"):
        out[name] = sum(s[name] for s in servers)
    out["peak_rss_mb"] = _r(sum(s["peak_rss_mb"] for s in servers), 1)
    return out


def scaling(single: dict[str, Any], cluster: dict[str, Any]) -> dict[str, Any]:
    """Efficiency (one process's CPU per tick over the sum of N's) and where the rest goes."""
    one = single["server"]["cpu_ms_per_tick"]
    total = cluster["server"]["cpu_ms_per_tick"]
    phases = ("simulate", "commit", "bus", "frames")
    single_phases = single["server"]["tick_phase_ms_p50"]
    summed_phases = {
        p: _r(sum(s["tick_phase_ms_p50"][p] for s in cluster["servers"])) for p in phases
    }
    return {
        "processes": cluster["processes"],
        "cpu_ms_per_tick_single": one,
        "cpu_ms_per_tick_sum": total,
        "cpu_ms_per_tick_each": [s["cpu_ms_per_tick"] for s in cluster["servers"]],
        "efficiency": _r(one / total, 3) if total else 0.0,
        "target": 0.8,
        "met": bool(total) and one / total >= 0.8,
        # Wall-clock phase medians (the bus phase includes waiting for the other
        # regions' entries, which is not CPU): summed over the processes.
        "phase_ms_p50_single": single_phases,
        "phase_ms_p50_sum": summed_phases,
        # Wall time in the bus calls per tick (a read's includes waiting for entries).
        "bus_call_ms_per_tick_each": [
            {"append": s["bus"]["append_ms_per_tick"], "read": s["bus"]["read_ms_per_tick"]}
            for s in cluster["servers"]
        ],
        "bytes_appended_per_tick_each": [
            s["bus"]["bytes_appended_per_tick"] for s in cluster["servers"]
        ],
        "redis_used_memory_mb": _r(cluster["redis"].get("used_memory", 0) / 2**20, 1),
        "latency_ms": {
            "single": {k: single["latency_ms"][k] for k in ("p50", "p99")},
            "cluster": cluster["latency_ms"].get("by_process", {}),
            "limit_p99": single["latency_ms"]["limit_p99"],
        },
        "tick_rate_hz_min": cluster["server"]["tick_rate_hz"],
        "correct": cluster["correctness"]["ok"],
        # None when a process skipped ticks in the motion (then versions differ).
        "same_client_caches": (
            single["correctness"]["digests"] == cluster["correctness"]["digests"]
            if not any(cluster["ticks_skipped_during_motion"])
            and not single["server"]["ticks_behind"]
            else None
        ),
        "ticks_skipped_during_motion": cluster["ticks_skipped_during_motion"],
        "tick_ms_p50_each": [s["tick_ms_p50"] for s in cluster["servers"]],
        "cpu_ms_per_tick_p50_each": [s["cpu_ms_per_tick_p50"] for s in cluster["servers"]],
        "median_cpu_ratio": _r(
            statistics.fmean(s["cpu_ms_per_tick"] for s in cluster["servers"]) / one, 3
        )
        if one
        else 0.0,
    }
