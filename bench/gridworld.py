"""The grid-world load test (the scenario "grid-world", bench/README.md).

    python -m bench.gridworld                      # the default scenario, synkworld's frames
    python -m bench.gridworld --compare-naive      # ... then the naive baseline, and the ratios
    python -m bench.gridworld --entities 2000 --clients 100 --seconds 10
    python -m bench.gridworld --proto 2            # the clients speak protocol v2 (binary)
    python -m bench.gridworld --sweep entities     # cost curves (also: clients, both)

The server runs in its own process (pinned to one CPU); the clients are real
WebSocket connections spread over one or more load-generator processes (pinned
to the other CPUs). Results go to ``bench/results/latest.json`` (and a copy named
after the scenario) with PNG plots beside it. See bench/README.md.

The entry point for other front ends (``synkworld bench``) is `main(argv)`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil  # type: ignore[import-untyped]

from bench.gridworld_cache import new_breakdown
from bench.gridworld_scenario import Scenario, runqueue_wait_s
from synkworld.testing import start_process_async

__all__ = ["Options", "main", "run_benchmark", "run_once"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"

# The performance targets, checked against every run (`applies` says where a target is defined).
TICK_P99_LIMIT_MS = 40.0
CPU_PER_TICK_LIMIT_MS = 20.0
NAIVE_RATIO_LIMIT = 1 / 5
BYTES_PER_CLIENT_LIMIT = 20 * 1024
# Protocol v2's byte targets (KB = 1000 bytes), by (entities, clients).
BYTES_PER_CLIENT_LIMIT_V2 = {(2_000, 100): 7_000, (10_000, 500): 25_000}
LATENCY_EXTRA_MS = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    """How to run (as opposed to what to run, which is the `Scenario`)."""

    out: Path = DEFAULT_OUT
    pin: bool = True
    progress: bool = True
    plots: bool = True
    breakdown_every: int = 10
    connect_concurrency: int = 50
    profile: bool = False
    label: str = ""
    cpus: tuple[int, ...] | None = None  # the CPUs to spread over; None: this process's
    freeze_wait_s: float = 60.0


# -- child processes ----------------------------------------------------------------------


class Child:
    """A bench child process speaking JSON lines on stdin/stdout; stderr goes to a log file."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path

    @classmethod
    async def start(
        cls, name: str, module: str, args: list[str], log_path: Path, cpu: int | None
    ) -> Child:
        """Starts ``python -m module args`` from the repository root."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", module, *args]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
        with open(log_path, "wb") as log:
            proc = await start_process_async(
                *cmd,
                cwd=ROOT,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                limit=64 * 1024 * 1024,
            )
        return cls(name, proc, log_path)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    async def event(self, timeout: float) -> dict[str, Any]:
        """The next JSON line the child writes."""
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise RuntimeError(
                f"{self.name}: no answer in {timeout:g}s; see {self.log_path}"
            ) from None
        if not line:
            code = await self.proc.wait()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited ({code}); its log ends with:\n{tail}")
        event: dict[str, Any] = orjson.loads(line)
        return event

    async def send(self, cmd: dict[str, Any]) -> None:
        """Writes one command line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(cmd) + b"\n")
        await self.proc.stdin.drain()

    async def stop(self) -> None:
        """Ends the process: stdin closed, then SIGTERM, then SIGKILL."""
        proc = self.proc
        if proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        for signal_it, wait_s in ((None, 3.0), (proc.terminate, 5.0), (proc.kill, 5.0)):
            if proc.returncode is not None:
                break
            if signal_it is not None:
                with contextlib.suppress(ProcessLookupError):
                    signal_it()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), wait_s)


# -- progress -------------------------------------------------------------------------------


class LoadGenerators:
    """The load-generator processes of one run, each with its share of the clients."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children

    @classmethod
    async def start(
        cls,
        sc: Scenario,
        opts: Options,
        urls: list[str],
        cpus: list[int | None],
        log_prefix: Path,
        started: list[Child],
    ) -> LoadGenerators:
        """Starts them (added to `started` as they start) and waits until every client is in.

        Client i connects to ``urls[i mod len(urls)]``; the sampled clients (evenly
        spaced, so possibly all even) take turns, so that every server has some checked.
        """
        n = max(1, min(sc.loadgen_procs, sc.clients))
        sampled = sc.sampled()
        # Round robin, the sampled clients apart: each process decodes its share of them.
        sampled_set = set(sampled)
        others = [i for i in range(sc.clients) if i not in sampled_set]
        shares = [sampled[k::n] + others[k::n] for k in range(n)]
        server_of = {i: i % len(urls) for i in range(sc.clients)}
        server_of.update({i: k % len(urls) for k, i in enumerate(sampled)})
        children: list[Child] = []
        for k in range(n):
            config = {
                "url": urls[0],
                "urls": urls,
                "scenario": sc.to_json(),
                "indices": sorted(shares[k]),
                "sampled": sampled[k::n],
                "process_of": {str(i): server_of[i] for i in shares[k]},
                "breakdown_every": opts.breakdown_every,
                "connect_concurrency": opts.connect_concurrency,
            }
            lg = await Child.start(
                f"loadgen{k}",
                "bench.gridworld_loadgen",
                ["--config", orjson.dumps(config).decode()],
                log_prefix.with_name(f"{log_prefix.name}-loadgen{k}.log"),
                cpus[k % len(cpus)],
            )
            children.append(lg)
            started.append(lg)
        connected = [await lg.event(timeout=120 + sc.clients / 10) for lg in children]
        failed = sum(e["failed"] for e in connected)
        if failed:
            raise RuntimeError(f"{failed} of {sc.clients} clients failed to connect")
        return cls(children)

    async def send(self, cmd: dict[str, Any]) -> None:
        """Sends a command that has no answer to every load generator."""
        for lg in self.children:
            await lg.send(cmd)

    async def ask(self, cmd: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        """Sends a command to every load generator; their answers."""
        await self.send(cmd)
        return [await lg.event(timeout=timeout) for lg in self.children]

    async def close(self) -> None:
        """Closes every client (a load generator already gone is not an error)."""
        await self.send({"cmd": "close"})
        for lg in self.children:
            with contextlib.suppress(RuntimeError):
                await lg.event(timeout=20)


class Progress:
    """Progress on stderr: a redrawn bar on a terminal, a line every few seconds otherwise."""

    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled = enabled
        self.label = label
        self.tty = sys.stderr.isatty()

    def note(self, text: str) -> None:
        """Prints a line of its own."""
        if self.enabled:
            sys.stderr.write(("\r\x1b[K" if self.tty else "") + f"{self.label} {text}\n")
            sys.stderr.flush()

    async def wait(self, seconds: float, phase: str) -> None:
        """Sleeps `seconds`, showing how far it got."""
        start = time.monotonic()
        end = start + seconds
        width = 30
        step = 0.5 if self.tty else 5.0
        while True:
            now = time.monotonic()
            if self.enabled:
                done = min(1.0, (now - start) / seconds) if seconds > 0 else 1.0
                bar = "#" * round(done * width)
                line = (
                    f"{self.label} {phase:<9} [{bar:<{width}}] "
                    f"{min(now - start, seconds):5.1f}/{seconds:g} s"
                )
                sys.stderr.write(f"\r\x1b[K{line}" if self.tty else line + "\n")
                sys.stderr.flush()
            if now >= end:
                break
            await asyncio.sleep(min(step, end - now))
        if self.enabled and self.tty:
            sys.stderr.write("\n")


# -- statistics -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank on the sorted values); 0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    return float(s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))])


def _r(v: float, nd: int = 2) -> float:
    return round(float(v), nd)


def _cpus(opts: Options) -> tuple[int | None, list[int | None]]:
    """The server's CPU and the CPUs the load generators may use."""
    if not opts.pin or not hasattr(os, "sched_getaffinity"):
        return None, [None]  # pinning is Linux-only
    cpus = sorted(opts.cpus if opts.cpus is not None else os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, [None]
    return cpus[0], list(cpus[1:])


# -- one run ----------------------------------------------------------------------------------


async def _http(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> dict[str, Any]:
    data = None if body is None else orjson.dumps(body)
    async with http.request(method, url, data=data) as resp:
        resp.raise_for_status()
        result: dict[str, Any] = orjson.loads(await resp.read())
        return result


async def run_once(sc: Scenario, opts: Options) -> dict[str, Any]:
    """Runs one mode of the scenario end to end; returns its figures."""
    mode_name = "naive" if sc.mode == "per-client" else "synkworld"
    label = f"[{opts.label}{mode_name} v{sc.proto} E={sc.entities} C={sc.clients}]"
    progress = Progress(opts.progress, label)
    server_cpu, lg_cpus = _cpus(opts)
    logs = opts.out / "logs"
    children: list[Child] = []
    t_started = time.time()
    try:
        server_args = ["--config", orjson.dumps(sc.to_json()).decode()]
        server_args += ["--max-seconds", str(sc.warmup_s + sc.seconds + 600)]
        if opts.profile:
            server_args += ["--profile"]
        server = await Child.start(
            "server",
            "bench.gridworld_server",
            server_args,
            logs / f"{mode_name}-server.log",
            server_cpu,
        )
        children.append(server)
        progress.note(f"building {sc.entities} entities ...")
        ready = await server.event(timeout=120 + sc.entities / 200)
        url: str = ready["url"]
        sproc = psutil.Process(ready["pid"])

        procs = max(1, min(sc.loadgen_procs, sc.clients))
        progress.note(f"connecting {sc.clients} clients over {procs} load generator(s) ...")
        loadgens = await LoadGenerators.start(sc, opts, [url], lg_cpus, logs / mode_name, children)

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            go = await _http(http, "POST", url + "/bench/go")
            await loadgens.send({"cmd": "go", "t0": go["t0"]})
            await progress.wait(sc.warmup_s, "warm-up")

            # The measured window: the server's CPU is read from outside, by pid.
            if opts.profile:
                await _http(http, "POST", url + "/bench/profile/start")
            cpu0 = sproc.cpu_times()
            wait0 = runqueue_wait_s(sproc.pid)
            t_start = time.time()
            await loadgens.ask({"cmd": "mark"}, timeout=30)
            await progress.wait(sc.seconds, "measuring")
            cpu1 = sproc.cpu_times()
            wait1 = runqueue_wait_s(sproc.pid)
            t_end = time.time()
            windows = await loadgens.ask({"cmd": "end"}, timeout=60)
            profile: dict[str, Any] = {}
            if opts.profile:
                profile = await _http(http, "POST", url + "/bench/profile/stop")

            progress.note("waiting for the last motion tick, then checking the caches ...")
            # Correctness: the motion stops by itself after `motion_ticks`; then every
            # client sends its final viewport, the server settles, and the sampled
            # clients' caches are compared with the server's world.
            # A server far behind its rate would take long to finish its motion ticks:
            # past `freeze_wait_s` it is frozen where it is (no longer comparable by digest).
            deadline = time.monotonic() + opts.freeze_wait_s
            state = await _http(http, "GET", url + "/bench/state")
            while not state["frozen"] and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                state = await _http(http, "GET", url + "/bench/state")
            if not state["frozen"]:
                state = await _http(http, "POST", url + "/bench/freeze")
            final_t = (
                sc.motion_ticks / sc.tick_rate_hz
                if not state.get("forced_freeze")
                else time.time() - go["t0"]
            )
            await loadgens.ask({"cmd": "final", "t": final_t}, timeout=60)
            settled_polls = 0
            deadline = time.monotonic() + 60
            settle: dict[str, Any] = {}
            while settled_polls < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.15)
                settle = await _http(http, "GET", url + "/bench/settled")
                settled_polls = settled_polls + 1 if settle["settled"] else 0
            checks = await loadgens.ask({"cmd": "check", "timeout": 15}, timeout=90)
            ticks = await _http(http, "GET", url + "/bench/ticks")
            stats = await _http(http, "GET", url + "/bench/stats")
            await loadgens.close()
    finally:
        for child in reversed(children):
            await child.stop()

    figures = _figures(
        sc,
        t_start=t_start,
        t_end=t_end,
        server_cpu_s=(cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
        server_system_s=cpu1.system - cpu0.system,
        server_wait_s=wait1 - wait0,
        windows=windows,
        checks=checks,
        ticks=ticks,
        stats=stats,
        settled=settled_polls >= 3,
        settle=settle,
        settle_state=state,
        loadgen_cores=(
            len({lg_cpus[k % len(lg_cpus)] for k in range(procs)})
            if server_cpu is not None
            else None
        ),
        profile=profile,
        wall_s=time.time() - t_started,
    )
    figures["pinning"] = {
        "server_cpu": server_cpu,
        "loadgen_cpus": [lg_cpus[k % len(lg_cpus)] for k in range(procs)],
    }
    return figures


def _figures(
    sc: Scenario,
    *,
    t_start: float,
    t_end: float,
    server_cpu_s: float,
    server_system_s: float,
    server_wait_s: float,
    windows: list[dict[str, Any]],
    checks: list[dict[str, Any]],
    ticks: dict[str, Any],
    stats: dict[str, Any],
    settled: bool,
    settle: dict[str, Any],
    settle_state: dict[str, Any],
    loadgen_cores: int | None,
    profile: dict[str, Any],
    wall_s: float,
) -> dict[str, Any]:
    window_s = t_end - t_start
    starts = dict(zip(ticks["start_n"], ticks["start_t"], strict=True))
    in_window = [n for n, t in starts.items() if t_start <= t < t_end]
    durations = dict(zip(ticks["done_n"], ticks["done_s"], strict=True))
    dur_ms = [durations[n] * 1000 for n in in_window if n in durations]
    phases_of = dict(zip(ticks["done_n"], ticks.get("phases", []), strict=False))
    window_phases = [phases_of[n] for n in in_window if n in phases_of]
    n_ticks = len(in_window)
    # CPU of each tick from one tick's start to the next's: the tick and the writes after it.
    cpu_at = dict(zip(ticks["start_n"], ticks["start_cpu"], strict=True))
    tick_cpu_ms = [
        (cpu_at[n + 1] - cpu_at[n]) * 1000 for n in in_window if n + 1 in cpu_at and n in cpu_at
    ]

    # Latency: arrival (wall clock, load generator) minus the start of the tick (server).
    lat_ms: list[float] = []
    for w in windows:
        for n, t in zip(w["lat_n"], w["lat_t"], strict=True):
            s = starts.get(n)
            if s is not None:
                lat_ms.append((t - s) * 1000)

    bytes_s: list[float] = []  # what arrived on the sockets
    payload_s: list[float] = []  # the JSON of the frames, decompressed
    frames_s: list[float] = []
    for w in windows:
        el = w["elapsed_s"]
        bytes_s += [b / el for b in w["wire_bytes"]]
        payload_s += [b / el for b in w["bytes"]]
        frames_s += [f / el for f in w["frames"]]

    breakdown = new_breakdown(sc.proto)
    for w in windows:
        breakdown.merge(w["breakdown"])

    results = [r for c in checks for r in c["clients"]]
    correct = bool(results) and all(r["ok"] for r in results) and settled

    lg_cpu = [w["cpu_percent"] for w in windows]
    lg_wait = [w["runqueue_wait_percent"] for w in windows]
    lag_p99 = max((w["lag_ms"]["p99"] for w in windows), default=0.0)
    reasons = []
    if any(c >= 85 for c in lg_cpu):
        reasons.append("a load generator process used >= 85% of a core")
    if loadgen_cores and sum(lg_cpu) >= 85 * loadgen_cores:
        reasons.append("the load generators used >= 85% of their cores")
    if lag_p99 > 50:
        reasons.append(
            f"event loop lag p99 {lag_p99:.0f} ms > 50 ms (frames read late; the load "
            f"generator waited {max(lg_wait, default=0):.0f}% of the window for a CPU)"
        )
    closed = sum(w["closed"] for w in windows)

    period_ms = 1000 / sc.tick_rate_hz
    cpu_ms = server_cpu_s * 1000 / n_ticks if n_ticks else 0.0
    decodes = [p[4] for p in window_phases if len(p) > 4]
    decode_ms = 1000 * statistics.fmean(decodes) if decodes else 0.0
    breakdown_summary = breakdown.summary()
    return {
        "proto": sc.proto,
        "scenario": sc.to_json(),
        "window_s": _r(window_s, 3),
        "wall_s": _r(wall_s, 1),
        "server": {
            "cpu_ms_per_tick": _r(cpu_ms),
            "cpu_ms_per_tick_p50": _r(percentile(tick_cpu_ms, 50)),
            "cpu_ms_per_tick_p99": _r(percentile(tick_cpu_ms, 99)),
            # The kernel's share: mostly the socket writes (on loopback, the
            # receiving side's TCP work too).
            "cpu_system_ms_per_tick": _r(server_system_s * 1000 / n_ticks if n_ticks else 0.0),
            "cpu_percent_of_core": _r(100 * server_cpu_s / window_s, 1),
            # Time the server was runnable but another process had its CPU: the noise.
            "runqueue_wait_percent": _r(100 * server_wait_s / window_s, 1),
            "ticks": n_ticks,
            "tick_rate_hz": _r(n_ticks / window_s),
            "tick_ms_p50": _r(percentile(dur_ms, 50)),
            "tick_ms_p99": _r(percentile(dur_ms, 99)),
            "tick_ms_max": _r(max(dur_ms, default=0.0)),
            "tick_ms_mean": _r(statistics.fmean(dur_ms) if dur_ms else 0.0),
            # Where a tick's time goes (median ms per phase): the simulation
            # step, World.commit (batches), the bus (publish, delivery), and
            # the frames with the engine's own writes to idle sockets.
            "tick_phase_ms_p50": {
                name: _r(percentile([p[i] * 1000 for p in window_phases if len(p) > i], 50))
                for i, name in enumerate(("simulate", "commit", "bus", "frames"))
            },
            # The naive baseline decodes each tick's batches once to build its
            # per-client messages: harness work, not the baseline's own, so
            # `cpu_ms_per_tick_net` leaves it out (equal to cpu_ms_per_tick
            # for synkworld).
            "harness_decode_ms_per_tick": _r(decode_ms),
            "cpu_ms_per_tick_net": _r(cpu_ms - decode_ms),
            "peak_rss_mb": stats["peak_rss_mb"],
            "rss_mb": stats["rss_mb"],
            "ticks_behind": stats["ticks_behind"],
            "frames_dropped": stats["frames_dropped"],
            "resyncs": stats["resyncs"],
            "closed_slow": stats["closed_slow"],
            "errors": stats["errors"],
        },
        "clients": {
            "connected": sum(w["clients"] for w in windows),
            "closed_during_run": closed,
            "close_codes": sorted({c for w in windows for c in w["close_codes"]}),
            "bytes_per_client_s": {
                "mean": _r(statistics.fmean(bytes_s) if bytes_s else 0.0, 1),
                "median": _r(percentile(bytes_s, 50), 1),
                "p99": _r(percentile(bytes_s, 99), 1),
            },
            # The frames as the client reads them (decompressed): JSON in v1, binary in v2.
            "payload_bytes_per_client_s": {
                "mean": _r(statistics.fmean(payload_s) if payload_s else 0.0, 1),
                "median": _r(percentile(payload_s, 50), 1),
                "p99": _r(percentile(payload_s, 99), 1),
            },
            # Per tick of the server: comparable between runs whose tick rates differ.
            "bytes_per_client_tick": {
                "mean": _r(statistics.fmean(bytes_s) * window_s / n_ticks if n_ticks else 0, 1),
                "p99": _r(percentile(bytes_s, 99) * window_s / n_ticks if n_ticks else 0, 1),
            },
            "frames_per_client_s": {
                "mean": _r(statistics.fmean(frames_s) if frames_s else 0.0),
                "p99": _r(percentile(frames_s, 99)),
            },
            "bytes_per_entity_per_tick": breakdown_summary["bytes_per_entity_update"],
        },
        "latency_ms": {
            "p50": _r(percentile(lat_ms, 50)),
            "p99": _r(percentile(lat_ms, 99)),
            "max": _r(max(lat_ms, default=0.0)),
            "samples": len(lat_ms),
            "limit_p99": _r(2 * period_ms + LATENCY_EXTRA_MS),
        },
        "correctness": {
            "ok": correct,
            "settled": settled,
            "forced_freeze": bool(settle_state.get("forced_freeze")),
            "motion_ticks": settle_state.get("motion_ticks"),
            "final_tick": settle.get("tick"),
            "clients_checked": len(results),
            "objects_checked": sum(r["objects"] for r in results),
            "failed": [r for r in results if not r["ok"]][:5],
            "resyncs": sum(r["resyncs"] for r in results),
            "digests": {str(r["index"]): r["digest"] for r in results},
        },
        "loadgen": {
            "procs": len(windows),
            "cores": loadgen_cores,
            "cpu_percent": lg_cpu,
            "cpu_percent_total": _r(sum(lg_cpu), 1),
            "runqueue_wait_percent": lg_wait,
            "loop_lag_ms": [w["lag_ms"] for w in windows],
            "saturated": bool(reasons),
            "saturation_reasons": reasons,
        },
        "frame_breakdown": breakdown_summary,
        "profile": profile,
        "series": {
            "tick_ms": [_r(v, 3) for v in dur_ms],
            "tick_cpu_ms": [_r(v, 3) for v in tick_cpu_ms],
            "latency_ms_quantiles": [_r(percentile(lat_ms, q), 3) for q in range(0, 101)],
            "bytes_per_client_s": [_r(v, 1) for v in bytes_s],
        },
    }


# -- the whole benchmark --------------------------------------------------------------------


def _targets(sc: Scenario, run: dict[str, Any], naive: dict[str, Any] | None) -> dict[str, Any]:
    """Issue 7's targets, with where each one is defined and whether this run meets it."""
    s = run["server"]
    default = Scenario()
    is_default = (sc.entities, sc.clients) == (default.entities, default.clients)
    small = (sc.entities, sc.clients) == (2_000, 100)
    rate_ok = s["tick_rate_hz"] >= 0.98 * sc.tick_rate_hz
    out: dict[str, Any] = {
        "tick_rate_kept": {
            "value": s["tick_rate_hz"],
            "limit": f">= {0.98 * sc.tick_rate_hz:g} (98% of {sc.tick_rate_hz:g})",
            "applies": is_default,
            "met": rate_ok,
        },
        "tick_p99_ms": {
            "value": s["tick_ms_p99"],
            "limit": f"< {TICK_P99_LIMIT_MS:g}",
            "applies": is_default,
            "met": s["tick_ms_p99"] < TICK_P99_LIMIT_MS,
        },
        "cpu_ms_per_tick": {
            "value": s["cpu_ms_per_tick"],
            "limit": f"<= {CPU_PER_TICK_LIMIT_MS:g}",
            "applies": is_default,
            "met": s["cpu_ms_per_tick"] <= CPU_PER_TICK_LIMIT_MS,
        },
        "bytes_per_client_s_mean": {
            "value": run["clients"]["bytes_per_client_s"]["mean"],
            "limit": f"<= {BYTES_PER_CLIENT_LIMIT} (E=2000, C=100)",
            "applies": small,
            "met": run["clients"]["bytes_per_client_s"]["mean"] <= BYTES_PER_CLIENT_LIMIT,
        },
        "latency_p99_ms": {
            "value": run["latency_ms"]["p99"],
            "limit": f"< {run['latency_ms']['limit_p99']:g} (two ticks + {LATENCY_EXTRA_MS:g} ms)",
            "applies": True,
            "met": run["latency_ms"]["p99"] < run["latency_ms"]["limit_p99"],
        },
        "correctness": {
            "value": run["correctness"]["ok"],
            "applies": True,
            "met": run["correctness"]["ok"],
        },
    }
    if sc.proto == 2:
        size = (sc.entities, sc.clients)
        limit = BYTES_PER_CLIENT_LIMIT_V2.get(size)
        mean = run["clients"]["bytes_per_client_s"]["mean"]
        out["v2_bytes_per_client_s_mean"] = {
            "value": mean,
            "limit": ", ".join(
                f"<= {v} (E={e}, C={c})" for (e, c), v in BYTES_PER_CLIENT_LIMIT_V2.items()
            ),
            "applies": limit is not None,
            "met": mean
            <= (limit if limit is not None else min(BYTES_PER_CLIENT_LIMIT_V2.values())),
        }
    if naive is not None:
        ratio = s["cpu_ms_per_tick"] / max(naive["server"]["cpu_ms_per_tick_net"], 1e-9)
        out["cpu_vs_naive"] = {
            "value": _r(ratio, 3),
            "limit": f"<= {NAIVE_RATIO_LIMIT:g} (C=500)",
            "applies": sc.clients == default.clients,
            "met": ratio <= NAIVE_RATIO_LIMIT,
        }
    return out


def _ratios(run: dict[str, Any], naive: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: float, b: float) -> float:
        return _r(a / b, 3) if b else 0.0

    s, n = run["server"], naive["server"]
    cb, nb = (
        run["clients"]["bytes_per_client_s"]["mean"],
        naive["clients"]["bytes_per_client_s"]["mean"],
    )
    ct, nt = (
        run["clients"]["bytes_per_client_tick"]["mean"],
        naive["clients"]["bytes_per_client_tick"]["mean"],
    )
    comparable = not (run["correctness"]["forced_freeze"] or naive["correctness"]["forced_freeze"])
    same = run["correctness"]["digests"] == naive["correctness"]["digests"] if comparable else None
    return {
        # The naive baseline's CPU without the harness's decoding of the batches.
        "cpu_ms_per_tick": {
            "synkworld": s["cpu_ms_per_tick"],
            "naive": n["cpu_ms_per_tick_net"],
            "naive_with_decoding": n["cpu_ms_per_tick"],
            "synkworld_over_naive": ratio(s["cpu_ms_per_tick"], n["cpu_ms_per_tick_net"]),
            "naive_over_synkworld": ratio(n["cpu_ms_per_tick_net"], s["cpu_ms_per_tick"]),
        },
        "tick_ms_p50": {
            "synkworld": s["tick_ms_p50"],
            "naive": n["tick_ms_p50"],
            "synkworld_over_naive": ratio(s["tick_ms_p50"], n["tick_ms_p50"]),
        },
        "tick_ms_p99": {
            "synkworld": s["tick_ms_p99"],
            "naive": n["tick_ms_p99"],
            "synkworld_over_naive": ratio(s["tick_ms_p99"], n["tick_ms_p99"]),
        },
        "cpu_ms_per_tick_p50": {
            "synkworld": s["cpu_ms_per_tick_p50"],
            "naive": n["cpu_ms_per_tick_p50"],
            "synkworld_over_naive": ratio(s["cpu_ms_per_tick_p50"], n["cpu_ms_per_tick_p50"]),
        },
        "bytes_per_client_s": {"synkworld": cb, "naive": nb, "synkworld_over_naive": ratio(cb, nb)},
        "bytes_per_client_tick": {
            "synkworld": ct,
            "naive": nt,
            "synkworld_over_naive": ratio(ct, nt),
        },
        # None when a run had to be frozen early (a server far behind): then the two
        # worlds differ and their caches cannot be compared.
        "same_client_caches": same,
    }


PROTO_CLUSTER_ERROR = (
    "--proto 2 runs on one process: a cluster (--processes > 1) speaks protocol v1 only"
)


async def run_benchmark(
    sc: Scenario, opts: Options, *, compare_naive: bool = False, processes: int = 1
) -> dict[str, Any]:
    """Runs the scenario (and, with `compare_naive`, the naive baseline right after).

    With `processes` > 1 it runs on one process and then on that many sharing
    the map through Redis, and compares the two (`scaling`).
    """
    if processes > 1:
        if compare_naive:
            raise ValueError("--compare-naive runs on one process: leave out --processes")
        if sc.proto != 1:
            raise ValueError(PROTO_CLUSTER_ERROR)
        from bench.gridworld_cluster import run_cluster_once, scaling

        single = await run_once(dataclasses.replace(sc, mode="shared"), opts)
        cluster = await run_cluster_once(dataclasses.replace(sc, mode="shared"), opts, processes)
        return {
            "proto": sc.proto,
            "scenario": sc.to_json(),
            "runs": {"synkworld": single, f"cluster{processes}": cluster},
            "targets": _targets(sc, single, None),
            "scaling": scaling(single, cluster),
        }
    runs: dict[str, Any] = {}
    if sc.mode == "per-client" and not compare_naive:
        runs["naive"] = await run_once(sc, opts)
        main = runs["naive"]
        naive = None
    else:
        runs["synkworld"] = main = await run_once(dataclasses.replace(sc, mode="shared"), opts)
        naive = None
        if compare_naive:
            runs["naive"] = naive = await run_once(dataclasses.replace(sc, mode="per-client"), opts)
    result: dict[str, Any] = {
        "proto": sc.proto,
        "scenario": sc.to_json(),
        "runs": runs,
        "targets": _targets(sc, main, naive),
    }
    if naive is not None:
        result["ratios"] = _ratios(main, naive)
    return result


async def run_sweep(
    sc: Scenario, opts: Options, *, axis: str, points: list[int], compare_naive: bool
) -> list[dict[str, Any]]:
    """Runs the scenario at each point of one axis (entities or clients)."""
    out = []
    for value in points:
        point = (
            dataclasses.replace(sc, entities=value)
            if axis == "entities"
            else dataclasses.replace(sc, clients=value)
        )
        label = f"sweep over {axis}: "
        r = await run_benchmark(
            point, dataclasses.replace(opts, label=label, plots=False), compare_naive=compare_naive
        )
        out.append({"axis": axis, "value": value, **_sweep_point(r)})
    return out


def _sweep_point(r: dict[str, Any]) -> dict[str, Any]:
    def pick(run: dict[str, Any]) -> dict[str, Any]:
        return {
            "cpu_ms_per_tick": run["server"]["cpu_ms_per_tick_net"],
            "tick_rate_hz": run["server"]["tick_rate_hz"],
            "tick_ms_p50": run["server"]["tick_ms_p50"],
            "tick_ms_p99": run["server"]["tick_ms_p99"],
            "peak_rss_mb": run["server"]["peak_rss_mb"],
            "bytes_per_client_s": run["clients"]["bytes_per_client_s"]["mean"],
            "latency_ms_p99": run["latency_ms"]["p99"],
            "correct": run["correctness"]["ok"],
            "loadgen_saturated": run["loadgen"]["saturated"],
            "loadgen_saturation_reasons": run["loadgen"]["saturation_reasons"],
            "loadgen_cpu_percent": run["loadgen"]["cpu_percent_total"],
        }

    return {name: pick(run) for name, run in r["runs"].items()}


# -- command line ----------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.replace(" ", "").split(",") if v]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; every scenario parameter is a flag with the scenario's default."""
    d = Scenario()
    p = argparse.ArgumentParser(
        prog="python -m bench.gridworld",
        description="The grid-world load test (bench/README.md); results in bench/results/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("scenario")
    g.add_argument("--entities", "-E", type=int, default=d.entities)
    g.add_argument("--clients", "-C", type=int, default=d.clients)
    g.add_argument("--seconds", type=float, default=d.seconds, help="measured window")
    g.add_argument("--warmup", type=float, default=d.warmup_s, help="warm-up before it")
    g.add_argument("--tick-rate-hz", type=float, default=d.tick_rate_hz)
    g.add_argument("--map-size", type=float, default=d.map_size)
    g.add_argument("--cell-size", type=float, default=d.cell_size)
    g.add_argument("--speed", type=float, default=d.speed, help="entity speed, units/s")
    g.add_argument(
        "--hp-fraction",
        type=float,
        default=d.hp_fraction,
        help="fraction of entities changing hp each tick",
    )
    g.add_argument("--viewport", type=str, default=f"{d.viewport_w:g}x{d.viewport_h:g}")
    g.add_argument("--pan-speed", type=float, default=d.pan_speed, help="viewport units/s")
    g.add_argument(
        "--view-interval",
        type=float,
        default=d.view_interval_s,
        help="seconds between a client's view messages",
    )
    g.add_argument("--margin", type=int, default=d.margin, help="view margin in cells")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument(
        "--mode",
        choices=["shared", "per-client"],
        default="shared",
        help="frames joined from shared batches, or the naive per-client baseline",
    )
    g.add_argument(
        "--compression",
        action="store_true",
        help="permessage-deflate: the server enables it and every client offers it",
    )
    g.add_argument(
        "--proto",
        type=int,
        choices=(1, 2),
        default=d.proto,
        help="the protocol the clients speak: 1 (JSON text frames) or 2 (binary frames, "
        "docs/protocol-v2.md; one process only)",
    )
    g.add_argument(
        "--no-direct-writes",
        action="store_true",
        help="every frame through aiohttp's writer instead of straight to idle sockets",
    )
    h = p.add_argument_group("harness")
    h.add_argument(
        "--compare-naive",
        action="store_true",
        help="run the naive baseline right after, and report the ratios",
    )
    h.add_argument(
        "--sample-clients",
        type=int,
        default=d.sample_clients,
        help="clients that decode every frame (latency, correctness, breakdown)",
    )
    h.add_argument("--loadgen-procs", type=int, default=d.loadgen_procs)
    h.add_argument(
        "--breakdown-every",
        type=int,
        default=10,
        help="take apart every n-th frame of each sampled client",
    )
    h.add_argument(
        "--freeze-wait",
        type=float,
        default=60.0,
        help="seconds to wait after the window for the server's last motion tick",
    )
    h.add_argument(
        "--processes",
        type=int,
        default=1,
        help="N > 1: run on one process, then on N sharing the map through Redis, and compare",
    )
    h.add_argument("--out", type=Path, default=DEFAULT_OUT)
    h.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    h.add_argument("--no-plots", action="store_true")
    h.add_argument(
        "--replot",
        type=Path,
        default=None,
        metavar="JSON",
        help="only draw the plots of a results file again, beside it",
    )
    h.add_argument("--quiet", action="store_true", help="no progress bar")
    h.add_argument(
        "--profile",
        action="store_true",
        help="profile the server with pyinstrument over the measured window",
    )
    s = p.add_argument_group("sweep")
    s.add_argument("--sweep", choices=["entities", "clients", "both"], default=None)
    s.add_argument("--sweep-entities", type=_ints, default=[1000, 2500, 5000, 10000, 20000, 40000])
    s.add_argument("--sweep-clients", type=_ints, default=[50, 100, 250, 500, 1000, 2000])
    s.add_argument("--sweep-seconds", type=float, default=8.0, help="measured window per point")
    s.add_argument("--sweep-warmup", type=float, default=2.0)
    return p.parse_args(argv)


def _scenario(a: argparse.Namespace) -> Scenario:
    vw, _, vh = a.viewport.partition("x")
    return Scenario(
        map_size=a.map_size,
        cell_size=a.cell_size,
        entities=a.entities,
        speed=a.speed,
        hp_fraction=a.hp_fraction,
        tick_rate_hz=a.tick_rate_hz,
        warmup_s=a.warmup,
        seconds=a.seconds,
        clients=a.clients,
        viewport_w=float(vw),
        viewport_h=float(vh or vw),
        pan_speed=a.pan_speed,
        view_interval_s=a.view_interval,
        margin=a.margin,
        seed=a.seed,
        sample_clients=a.sample_clients,
        loadgen_procs=a.loadgen_procs,
        mode=a.mode,
        compression=a.compression,
        direct_writes=not a.no_direct_writes,
        proto=a.proto,
    )


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
        "engine": _engine_version(),
    }


def _engine_version() -> dict[str, Any]:
    """The commit of the checkout, and whether synkworld/ differs from it."""
    import subprocess

    def git(*args: str) -> str:
        # Read-only: no index refresh (and no index.lock) while others use the checkout.
        env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
        try:
            out = subprocess.run(
                ["git", *args],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
                env=env,
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "synkworld_modified": bool(git("status", "--porcelain", "--", "synkworld")),
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _summary_line(result: dict[str, Any]) -> str:
    lines = []
    for name, run in result.get("runs", {}).items():
        s, c, lat = run["server"], run["clients"], run["latency_ms"]
        b = c["bytes_per_client_s"]
        lines.append(
            f"{name:>9} v{run.get('proto', 1)}: cpu {s['cpu_ms_per_tick']:.2f} ms/tick"
            f" (p50 {s['cpu_ms_per_tick_p50']:.2f})"
            + (
                f" ({s['cpu_ms_per_tick_net']:.2f} without decoding)"
                if s.get("harness_decode_ms_per_tick")
                else ""
            )
            + f", {s['tick_rate_hz']:.2f} ticks/s, "
            f"tick p50 {s['tick_ms_p50']:.1f} / p99 {s['tick_ms_p99']:.1f} ms, "
            f"{b['mean'] / 1024:.1f} KiB/client/s ({b['mean'] / 1000:.1f} kB; "
            f"median {b.get('median', 0) / 1000:.1f}, p99 {b['p99'] / 1000:.1f} kB), "
            f"latency p50 {lat['p50']:.1f} / p99 {lat['p99']:.1f} ms, "
            f"correct {run['correctness']['ok']}, "
            f"loadgen {run['loadgen']['cpu_percent_total']:.0f}% cpu"
            + (" SATURATED" if run["loadgen"]["saturated"] else "")
        )
    if "ratios" in result:
        r = result["ratios"]
        lines.append(
            f"    ratio: cpu synkworld/naive {r['cpu_ms_per_tick']['synkworld_over_naive']:.3f}, "
            f"bytes/tick {r['bytes_per_client_tick']['synkworld_over_naive']:.3f}, "
            f"same caches {r['same_client_caches']}"
        )
    if "scaling" in result:
        g = result["scaling"]
        lines.append(
            f"  scaling: {g['processes']} processes {g['cpu_ms_per_tick_each']} ms/tick, "
            f"sum {g['cpu_ms_per_tick_sum']:.2f} against one {g['cpu_ms_per_tick_single']:.2f}: "
            f"efficiency {g['efficiency']:.3f} (target {g['target']}), "
            f"bus calls {g['bus_call_ms_per_tick_each']} ms/tick, "
            f"Redis {g['redis_used_memory_mb']} MB, same caches {g['same_client_caches']}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the load test from the command line; returns the exit status (0 when it ran)."""
    a = parse_args(argv)
    if a.proto != 1 and a.processes > 1:
        sys.stderr.write(f"python -m bench.gridworld: {PROTO_CLUSTER_ERROR}\n")
        return 2
    if a.replot is not None:
        from bench.gridworld_plots import plot_result

        for path in plot_result(orjson.loads(a.replot.read_bytes()), a.replot.parent):
            sys.stderr.write(f"plot: {path}\n")
        return 0
    sc = _scenario(a)
    opts = Options(
        out=a.out,
        pin=not a.no_pin,
        progress=not a.quiet,
        plots=not a.no_plots,
        breakdown_every=a.breakdown_every,
        profile=a.profile,
        cpus=tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else None,
        freeze_wait_s=a.freeze_wait,
    )
    opts.out.mkdir(parents=True, exist_ok=True)
    server_cpu, lg_cpus = _cpus(opts)
    if server_cpu is not None:
        # The coordinator stays off the server's core too.
        os.sched_setaffinity(0, {c for c in lg_cpus if c is not None})
    command = "python -m bench.gridworld " + " ".join(
        shlex.quote(v) for v in (sys.argv[1:] if argv is None else argv)
    )
    result: dict[str, Any] = {
        "command": command.strip(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": _machine(),
    }
    if a.sweep is None:
        result.update(
            asyncio.run(
                run_benchmark(sc, opts, compare_naive=a.compare_naive, processes=a.processes)
            )
        )
        deflate = "-deflate" if sc.compression else ""
        writes = "" if sc.direct_writes else "-aiohttp-writes"
        procs = f"-P{a.processes}" if a.processes > 1 else ""
        proto = f"-v{sc.proto}" if sc.proto != 1 else ""
        name = f"gridworld-E{sc.entities}-C{sc.clients}{proto}{deflate}{writes}{procs}.json"
    else:
        swept = dataclasses.replace(sc, seconds=a.sweep_seconds, warmup_s=a.sweep_warmup)
        result["scenario"] = swept.to_json()
        sweeps: dict[str, Any] = {}
        axes = ["entities", "clients"] if a.sweep == "both" else [a.sweep]
        for axis in axes:
            points = a.sweep_entities if axis == "entities" else a.sweep_clients
            sweeps[axis] = asyncio.run(
                run_sweep(swept, opts, axis=axis, points=points, compare_naive=a.compare_naive)
            )
        result["sweeps"] = sweeps
        name = f"sweep-{a.sweep}{'-v2' if sc.proto == 2 else ''}.json"
    result["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    data = orjson.dumps(result, option=orjson.OPT_INDENT_2)
    (opts.out / "latest.json").write_bytes(data)
    (opts.out / name).write_bytes(data)
    if opts.plots:
        from bench.gridworld_plots import plot_result

        for path in plot_result(result, opts.out):
            sys.stderr.write(f"plot: {path}\n")
    if a.sweep is None:
        sys.stderr.write(_summary_line(result) + "\n")
    sys.stderr.write(f"results: {opts.out / 'latest.json'} (and {opts.out / name})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
