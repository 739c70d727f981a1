"""What sharing a map costs per tick: the demo world on 1..N processes through Redis, no clients.

    python -m bench.cluster_ticks --agents 10000 --processes 1,2 --seconds 20

For each process count it starts a redis-server of its own and that many demo
processes (`synkworld.demo --redis ...`, a fresh SQLite store each), waits
for the regions to be shared out, then reads every process's /metrics twice,
`--seconds` apart: ticks run, CPU seconds used, time in the bus phase, bytes
appended. It writes bench/results/cluster_ticks.json. Clients are not part of
it (bench.gridworld measures those): this is the cost of the simulation, the
encoding and the bus, split over processes.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for name in (
        "synkworld_tick_duration_seconds_count",
        "synkworld_tick_duration_seconds_sum",
        "process_cpu_seconds_total",
        "synkworld_bus_appended_bytes_total",
        "synkworld_bus_append_seconds_total",
        "synkworld_bus_regions_owned",
    ):
        m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    m = re.search(r'^synkworld_tick_phase_seconds_total\{phase="bus"\} ([0-9.e+]+)$', text, re.M)
    out["bus_seconds"] = float(m.group(1)) if m else 0.0
    return out


def wait_healthy(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no /healthz on port {port}")


def run(processes: int, agents: int, seconds: float, warmup_s: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        redis_port = free_port()
        redis = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(redis_port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--hz",
                "100",
                "--dir",
                tmp,
            ],
            stdout=subprocess.DEVNULL,
        )
        ports = [free_port() for _ in range(processes)]
        procs = []
        try:
            time.sleep(0.3)
            for i, port in enumerate(ports):
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "synkworld.demo",
                            "--port",
                            str(port),
                            "--agents",
                            str(agents),
                            "--db",
                            f"{tmp}/world.sqlite3",
                            "--redis",
                            f"redis://127.0.0.1:{redis_port}/0",
                            "--node",
                            f"b{i}",
                        ],
                        cwd=ROOT,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
                wait_healthy(port)
            time.sleep(warmup_s)
            before = [metrics(p) for p in ports]
            time.sleep(seconds)
            after = [metrics(p) for p in ports]
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
            redis.terminate()
            redis.wait()
    per_process = []
    for b, a in zip(before, after, strict=True):
        ticks = (
            a["synkworld_tick_duration_seconds_count"] - b["synkworld_tick_duration_seconds_count"]
        )
        per_process.append(
            {
                "regions": a["synkworld_bus_regions_owned"],
                "ticks": ticks,
                "tick_ms": 1000
                * (
                    a["synkworld_tick_duration_seconds_sum"]
                    - b["synkworld_tick_duration_seconds_sum"]
                )
                / max(ticks, 1),
                "bus_ms": 1000 * (a["bus_seconds"] - b["bus_seconds"]) / max(ticks, 1),
                "cpu_ms_per_tick": 1000
                * (a["process_cpu_seconds_total"] - b["process_cpu_seconds_total"])
                / max(ticks, 1),
                "append_ms": 1000
                * (
                    a["synkworld_bus_append_seconds_total"]
                    - b["synkworld_bus_append_seconds_total"]
                )
                / max(ticks, 1),
                "bytes_per_tick": (
                    a["synkworld_bus_appended_bytes_total"]
                    - b["synkworld_bus_appended_bytes_total"]
                )
                / max(ticks, 1),
            }
        )
    return {
        "processes": processes,
        "agents": agents,
        "seconds": seconds,
        "per_process": per_process,
        "cpu_ms_per_tick_total": sum(p["cpu_ms_per_tick"] for p in per_process),  # type: ignore[misc]
        "ticks_per_s": min(p["ticks"] for p in per_process) / seconds,  # type: ignore[type-var]
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.cluster_ticks", description=__doc__)
    p.add_argument("--agents", type=int, default=10_000)
    p.add_argument("--processes", default="1,2")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup-s", type=float, default=12.0)
    a = p.parse_args(argv)
    results = [run(int(n), a.agents, a.seconds, a.warmup_s) for n in a.processes.split(",")]
    for r in results:
        pp = r["per_process"]
        print(
            f"{r['processes']} process(es), {r['agents']} agents: "
            f"{r['ticks_per_s']:.1f} ticks/s, CPU {r['cpu_ms_per_tick_total']:.1f} ms/tick in all; "
            + "; ".join(
                f"[{q['regions']:.0f} regions: tick {q['tick_ms']:.1f} ms, "
                f"bus {q['bus_ms']:.1f} ms, "
                f"CPU {q['cpu_ms_per_tick']:.1f} ms, {q['bytes_per_tick'] / 1024:.0f} KiB/tick]"
                for q in pp  # type: ignore[attr-defined]
            )
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cluster_ticks.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
