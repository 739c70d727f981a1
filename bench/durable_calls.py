"""What a durable handler costs: the demo's pin drops, acknowledged before or after the write.

Starts two demo servers side by side (same world size, each its own SQLite file
or MongoDB database), one with durable pins (the default) and one started with
``--pins-not-durable``, and drops pins on both in alternation from one client
each, one call at a time (30 ms apart, under the rate limit), so that both see the
same machine load. Prints and
writes JSON: call-to-reply latency (p50, p90, p99, max) of each, and the
difference of the medians.

    .venv/bin/python -m bench.durable_calls [--calls 300] [--agents 3000] [--mongo URI]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from synkworld.testing import start_process

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def demo(
    tmp: Path, name: str, agents: int, mongo: str | None, durable: bool
) -> AsyncIterator[str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "synkworld.demo", "--port", str(port), "--agents", str(agents)]
    cmd += ["--mongo", mongo] if mongo else ["--db", str(tmp / f"{name}.sqlite3")]
    if not durable:
        cmd.append("--pins-not-durable")
    log = (tmp / f"{name}.log").open("wb")
    proc = start_process(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                if proc.poll() is not None:
                    raise RuntimeError(f"the {name} demo exited; see {tmp / name}.log")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url + "/healthz") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


async def drop(ws: aiohttp.ClientWebSocketResponse, call_id: int) -> float:
    started = time.perf_counter()
    await ws.send_json(
        {"m": "call", "id": call_id, "name": "drop_marker", "args": {"x": 500, "y": 500}}
    )
    while True:
        msg = await ws.receive_json(timeout=30)
        if msg.get("m") == "error" and msg.get("id") is None:
            raise RuntimeError(f"the server refused a message: {msg}")
        if msg.get("m") in ("reply", "error") and msg.get("id") == call_id:
            if msg["m"] == "error":
                raise RuntimeError(f"drop_marker failed: {msg}")
            return (time.perf_counter() - started) * 1000


def summary(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    return {
        "p50_ms": statistics.median(s),
        "p90_ms": s[int(0.9 * (len(s) - 1))],
        "p99_ms": s[int(0.99 * (len(s) - 1))],
        "max_ms": s[-1],
    }


async def run(a: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        async with (
            demo(tmp, "durable", a.agents, a.mongo, True) as durable_url,
            demo(tmp, "plain", a.agents, a.mongo, False) as plain_url,
            aiohttp.ClientSession() as http,
            http.ws_connect(durable_url + "/ws") as durable_ws,
            http.ws_connect(plain_url + "/ws") as plain_ws,
        ):
            await durable_ws.receive_json()
            await plain_ws.receive_json()
            times: dict[str, list[float]] = {"durable": [], "plain": []}
            for i in range(a.calls):
                # Alternating, so that both see the same moments of the machine;
                # paced under the demo's rate limit (60 messages/s per client).
                times["durable"].append(await drop(durable_ws, i))
                times["plain"].append(await drop(plain_ws, i))
                await asyncio.sleep(0.03)
    result: dict[str, Any] = {
        "bench": "durable_calls",
        "calls": a.calls,
        "agents": a.agents,
        "store": "mongodb" if a.mongo else "sqlite",
        "durable": summary(times["durable"]),
        "not_durable": summary(times["plain"]),
    }
    result["median_cost_ms"] = result["durable"]["p50_ms"] - result["not_durable"]["p50_ms"]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.durable_calls", description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--agents", type=int, default=3000)
    p.add_argument("--mongo", default=None, metavar="URI", help="MongoDB instead of SQLite")
    p.add_argument("--out", type=Path, default=RESULTS / "durable_calls.json")
    a = p.parse_args(argv)
    result = asyncio.run(run(a))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
