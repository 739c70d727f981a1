"""reconnect: many clients reconnect at once after a restart; how soon every cache is right.

Every client holds a viewport of the world; the server gets SIGTERM and the same
deterministic world starts on the same port. At the new server's first
``/healthz`` answer every client reconnects, sends its `view` and, after its
snapshot, calls `truth` and compares. Time to correct is the snapshot's arrival
when that first check agrees.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from bench.gridworld_cache import cache_digest
from bench.reliability.client import CacheClient, viewport
from bench.reliability.processes import Child, free_port, wait_healthz
from bench.reliability.results import Notes, Outcome, check, percentile, rounded
from bench.reliability.world import spec_from_args


def listen_drops() -> dict[str, int]:
    """The kernel's counters of connections a full listen queue refused (all of this host)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return {k: int(row[k]) for k in ("ListenOverflows", "ListenDrops") if k in row}
    return {}


async def run_reconnect(a: argparse.Namespace, notes: Notes) -> Outcome:
    """Many clients reconnect at once after a restart; how soon every cache is right."""
    spec = dataclasses.replace(spec_from_args(a), churn=0)
    logs = a.out / "logs"
    port = free_port()
    flags = [*spec.flags(), "--port", str(port), "--max-seconds", str(a.timeout + 60)]
    rng = random.Random(a.seed)
    clients = [CacheClient("", viewport(rng, spec)) for _ in range(a.clients)]
    server = await Child.server("server-1", flags, logs / "reliability-reconnect-server.log")
    servers = [server]
    figures: dict[str, Any] = {}
    try:
        ready = await server.ready(120)
        url = ready["url"]
        for c in clients:
            c.url = url
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, connect=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            await wait_healthz(http, url, 30)
            sem = asyncio.Semaphore(100)

            async def first(c: CacheClient) -> tuple[int, str]:
                async with sem:
                    await c.connect(http, 60)
                    await asyncio.wait_for(c.snapshot.wait(), 60)
                    bad, _, _ = await c.check(60)
                    return bad, cache_digest(c.cache.view())

            notes(f"connecting {a.clients} clients")
            before = await asyncio.gather(*(first(c) for c in clients))
            pre_bad = sum(b for b, _ in before)
            notes("SIGTERM; the same world starts again on the same port")
            shutdown_s = await server.terminate(60)
            await asyncio.gather(*(asyncio.wait_for(c.closed.wait(), 10) for c in clients))
            codes_at_restart = Counter(str(c.close_code) for c in clients)
            server = await Child.server(
                "server-2", flags, logs / "reliability-reconnect-server.log"
            )
            servers.append(server)
            t_spawn = time.monotonic()
            t0, health = await wait_healthz(http, url, 120, interval=0.002)
            start_to_healthz = t0 - t_spawn
            tick0 = health["tick"]
            cpu0 = os.times()
            drops0 = listen_drops()

            async def again(c: CacheClient) -> dict[str, Any]:
                out: dict[str, Any] = {"attempts_before": c.connect_attempts}
                t_start = time.monotonic()
                await c.connect(http, a.reconnect_timeout_s)
                out["connected_s"] = time.monotonic() - t0
                out["connect_attempts"] = c.connect_attempts - out.pop("attempts_before")
                await asyncio.wait_for(c.snapshot.wait(), a.reconnect_timeout_s)
                assert c.snapshot_at is not None
                out["snapshot_s"] = c.snapshot_at - t0
                # The server's tick that carried it, counted from the first /healthz answer.
                out["snapshot_ticks"] = c.snapshot_tick - tick0
                out["hello_to_snapshot_s"] = c.snapshot_at - t_start
                first_bad = None
                for _ in range(5):
                    bad, examples, t_reply = await c.check(a.reconnect_timeout_s)
                    if first_bad is None:
                        first_bad, out["examples"] = bad, examples[:3]
                    if bad == 0:
                        # Correct from the snapshot on if the first check agrees; else from the
                        # reply that found it correct.
                        out["correct_s"] = out["snapshot_s"] if first_bad == 0 else t_reply - t0
                        out["verified_s"] = t_reply - t0
                        break
                    await asyncio.sleep(1 / a.tick_rate)
                out["mismatches"] = first_bad
                out["digest"] = cache_digest(c.cache.view())
                return out

            notes(f"{a.clients} clients reconnect at once")
            results = await asyncio.gather(*(again(c) for c in clients), return_exceptions=True)
            t_all = time.monotonic() - t0
            cpu1 = os.times()
            drops1 = listen_drops()
            alive = server.alive
            await asyncio.gather(*(c.close() for c in clients))
    finally:
        for s in servers:
            await s.stop()
    failures = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    ok = [r for r in results if isinstance(r, dict)]
    correct = [r["correct_s"] for r in ok if "correct_s" in r]
    verified = [r["verified_s"] for r in ok if "verified_s" in r]
    snaps = [r["snapshot_s"] for r in ok]
    mismatches = sum(r["mismatches"] or 0 for r in ok)
    same_world = (
        sum(
            1
            for (_, d), r in zip(before, results, strict=True)
            if isinstance(r, dict) and r["digest"] == d
        )
        if spec.motion == 0 and spec.hp_fraction == 0 and spec.transfers == 0
        else None
    )
    all_correct = len(correct) == a.clients
    total = max(correct) if all_correct else None

    def dist(v: list[float]) -> dict[str, float]:
        return {
            "p50": rounded(percentile(v, 50)),
            "p90": rounded(percentile(v, 90)),
            "p99": rounded(percentile(v, 99)),
            "max": rounded(max(v, default=0.0)),
        }

    figures = {
        "clients": a.clients,
        "objects": spec.entities,
        "world_changes_per_tick": {
            "moving": round(spec.entities * spec.motion),
            "hp": round(spec.entities * spec.hp_fraction),
            "transfers": spec.transfers,
        },
        "pre_restart_mismatches": pre_bad,
        "shutdown_s": rounded(shutdown_s, 3),
        "close_codes_at_restart": dict(codes_at_restart),
        "spawn_to_healthz_s": rounded(start_to_healthz, 3),
        "time_to_correct_s": dist(correct),
        "time_to_all_correct_s": rounded(total) if total is not None else None,
        "time_to_verified_s": dist(verified),
        "snapshot_s": dist(snaps),
        "connected_s": dist([r["connected_s"] for r in ok]),
        "connect_attempts": dict(Counter(r["connect_attempts"] for r in ok)),
        "hello_to_snapshot_s": dist([r["hello_to_snapshot_s"] for r in ok]),
        "snapshot_ticks_after_healthz": dist([r["snapshot_ticks"] for r in ok]),
        # SYNs the new server's full listen queue dropped (the client's kernel resends
        # them 1 s later): system-wide counters, read around the reconnect.
        "listen_queue_drops": {k: drops1.get(k, 0) - v for k, v in drops0.items()},
        # The clients all run in this process: near 100%, they, not the server, set the pace.
        "client_process_cpu_percent": rounded(
            100 * (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / t_all if t_all else 0, 1
        ),
        "clients_correct": len(correct),
        "mismatches": mismatches,
        "mismatch_examples": [e for r in ok for e in r.get("examples", [])][:5],
        "same_caches_as_before_restart": same_world,
        "failures": failures[:5],
        "wall_after_healthz_s": rounded(t_all, 3),
        "server_alive": alive,
    }
    checks = {
        "every_client_correct": check(all_correct, f"{len(correct)} of {a.clients}"),
        "mismatches": check(mismatches == 0 and pre_bad == 0, mismatches, 0),
        "time_to_all_correct_s": check(
            total is not None and total <= a.limit_s, figures["time_to_all_correct_s"], a.limit_s
        ),
    }
    if same_world is not None:
        checks["same_world_after_restart"] = check(
            same_world == a.clients, f"{same_world} of {a.clients}"
        )
    tc = figures["time_to_correct_s"]
    summary = [
        f"{a.clients} clients, {spec.entities} objects; shutdown {shutdown_s:.2f} s, "
        f"spawn to first /healthz {start_to_healthz:.2f} s",
        f"time to correct after /healthz: p50 {tc['p50']:.3f} s, max {tc['max']:.3f} s; "
        f"all correct at {figures['time_to_all_correct_s']} s",
        f"mismatches {mismatches}; connect attempts {figures['connect_attempts']}",
    ]
    return figures, checks, summary
