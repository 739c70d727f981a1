"""Several real processes on one map through a real redis-server, over real WebSockets.

Three `synkworld serve` processes (two owners and a gateway) share the
walkers' map; a client on each views all of it. Walkers cross the owners'
borders the whole time. After each fault (Redis restarted empty, an owner
stopped past its lease and resumed, an owner killed) the test waits until
every client is settled again, then asks: do the clients on different
processes receive the same bytes for the same tick, and does each hold every
walker exactly once? It prints how long each recovery took.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from synkworld.store import SQLiteStore, WriteBatch
from synkworld.testing import ReferenceClient, start_process
from tests.bus.support import RedisServer, free_port
from tests.cluster.walkers_app import SIZE, seed_documents

ROOT = Path(__file__).resolve().parents[2]
WALKERS = 150
TTL = 2.0
pytestmark = [pytest.mark.redis, pytest.mark.timeout(240)]


@dataclass
class Proc:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Viewer:
    """A client of one process that views the whole map and keeps every frame by tick."""

    proc: Proc
    mirror: ReferenceClient | None = None
    frames: dict[int, str] = field(default_factory=dict)
    closed: bool = False
    error: str | None = None
    raw: list[str] = field(default_factory=list)
    debug: object = None
    ws: aiohttp.ClientWebSocketResponse | None = None
    task: asyncio.Task[None] | None = None

    async def run(self, http: aiohttp.ClientSession) -> None:
        async with http.ws_connect(self.proc.url + "/ws", max_msg_size=0) as ws:
            self.ws = ws
            hello = await ws.receive_json()
            self.mirror = ReferenceClient(hello["maps"])
            await ws.send_json({"m": "view", "rect": [0, 0, SIZE, SIZE], "margin": 0})
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                frame = msg.data
                self.raw.append(frame)
                del self.raw[:-200]
                try:
                    body = self.mirror.apply_frame(frame)
                except Exception as e:
                    self.error = f"{self.proc.name}: {type(e).__name__}: {e} in {frame[:2000]}"
                    raise
                if body.get("m") == "tick":
                    self.frames[body["n"]] = frame
                elif body.get("m") == "reply":
                    self.debug = body.get("ok")
            self.ws = None
        self.closed = True


def serve(name: str, port: int, redis: str, db: Path, *, gateway: bool = False) -> Proc:
    args = [
        sys.executable,
        "-m",
        "synkworld",
        "serve",
        "tests.cluster.walkers_app:make",
        "--port",
        str(port),
        "--redis",
        redis,
        "--world",
        "walkers",
        "--node",
        name,
        "--region-cells",
        "2",
        "--lease-ttl-s",
        str(TTL),
        "--log-level",
        "WARNING",
    ]
    if gateway:
        args.append("--gateway")
    env = {**os.environ, "SYNKWORLD_TEST_DB": str(db)}
    with (db.parent / f"{name}.log").open("ab") as log:
        return Proc(name, port, start_process(args, cwd=ROOT, env=env, stdout=log, stderr=log))


def stop(procs: list[Proc], timeout_s: float = 20.0) -> None:
    """SIGTERM to every process at once, then each is waited for (killed if it hangs)."""
    for p in procs:
        if p.process.poll() is None:
            p.process.send_signal(signal.SIGTERM)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.process.wait(timeout=timeout_s)
        if p.process.poll() is None:
            p.process.kill()
            p.process.wait()


async def healthy(http: aiohttp.ClientSession, proc: Proc) -> dict[str, object]:
    for _ in range(400):
        if proc.process.poll() is not None:
            raise AssertionError(f"{proc.name} exited with {proc.process.returncode}")
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(proc.url + "/healthz") as r:
                body: dict[str, object] = await r.json()
                return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{proc.name} never answered /healthz")


async def settled(viewers: list[Viewer], timeout_s: float) -> float:
    """Seconds until every viewer holds every walker once and twins agree on 10 new ticks."""
    started = time.monotonic()
    floor = max((max(v.frames, default=0) for v in viewers), default=0)
    last = ""
    while time.monotonic() - started < timeout_s:
        await asyncio.sleep(0.2)
        broken = [v.error for v in viewers if v.error]
        assert not broken, broken
        live = [v for v in viewers if not v.closed]
        mirrors = [v.mirror for v in live]
        if not live or any(m is None for m in mirrors):
            continue
        counts = [len(m.objs) for m in mirrors if m is not None]
        common = {n for n in set.intersection(*(set(v.frames) for v in live)) if n > floor}
        recent = sorted(common)[-10:]
        same = len(recent) == 10 and all(len({v.frames[n] for v in live}) == 1 for n in recent)
        last = f"counts {counts}, {len(common)} common ticks, twins agree: {same}; " + ", ".join(
            f"{v.proc.name}: last {max(v.frames, default=0)} "
            f"resyncs {v.mirror.resyncs if v.mirror else '-'}"
            for v in live
        )
        if recent and not same:
            n = recent[-1]
            last += "".join(f"\n{v.proc.name}: {v.frames[n][:600]}" for v in live)
        if same and all(c == WALKERS for c in counts):
            return time.monotonic() - started
    everyone = {f"w{i}" for i in range(WALKERS)}
    gone = sorted(set.union(*(everyone - set(v.mirror.objs) for v in viewers if v.mirror)))
    for v in viewers:
        if v.ws is not None and not v.closed:
            await v.ws.send_json({"m": "call", "id": 99, "name": "debug", "args": {"ids": gone}})
    await asyncio.sleep(0.5)
    states = {v.proc.name: v.debug for v in viewers}
    missing = [sorted(everyone - set(v.mirror.objs)) for v in viewers if v.mirror]
    last += f" missing {missing}"
    raise AssertionError(f"not settled after {timeout_s} s: {last} {states}")


async def run_cluster(tmp_path: Path, faults: list[str]) -> dict[str, float]:
    """Three processes and a client on each through `faults`; seconds to settle after each."""
    redis = RedisServer(free_port(), tmp_path / "redis.log")
    redis.start()
    db = tmp_path / "world.sqlite3"
    store = SQLiteStore(db)
    await store.apply(WriteBatch(upserts=seed_documents(WALKERS)))
    await store.close()
    procs = [
        serve("p0", free_port(), redis.url, db),
        serve("p1", free_port(), redis.url, db),
        serve("gw", free_port(), redis.url, db, gateway=True),
    ]
    figures: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession() as http:
            for p in procs:
                await healthy(http, p)
            viewers = [Viewer(p) for p in procs]
            for v in viewers:
                v.task = asyncio.create_task(v.run(http))
            figures["start"] = await settled(viewers, 30)
            await asyncio.sleep(10)  # crossing borders all along
            figures["steady"] = await settled(viewers, 5)
            regions = [int((await healthy(http, p))["regions"]) for p in procs]  # type: ignore[arg-type]
            assert regions[0] > 0 and regions[1] > 0 and regions[2] == 0

            if "redis restart" in faults:
                # Redis restarts empty: owners take their leases again; every client resyncs.
                resyncs = [v.mirror.resyncs for v in viewers if v.mirror]
                redis.stop()
                await asyncio.sleep(1.0)
                redis.start()
                figures["redis restart"] = await settled(viewers, 30)
                after = [v.mirror.resyncs for v in viewers if v.mirror]
                assert all(a > r for a, r in zip(after, resyncs, strict=True)), (resyncs, after)

            if "stall" in faults:
                # An owner stalls past its lease: the other takes its regions from the
                # store; on waking it is fenced, and nothing is there twice.
                procs[1].process.send_signal(signal.SIGSTOP)
                await asyncio.sleep(TTL * 2 + 1)
                procs[1].process.send_signal(signal.SIGCONT)
                figures["stall"] = await settled(viewers, 30)

            if "kill" in faults:
                # An owner dies: the other takes everything over from the store.
                procs[0].process.kill()
                procs[0].process.wait()
                figures["kill"] = await settled(viewers, 30)
                assert viewers[0].closed
                assert int((await healthy(http, procs[1]))["regions"]) == 20  # type: ignore[arg-type]
            for v in viewers:
                if v.task is not None:
                    v.task.cancel()
            print("\nsettled after (s):", {k: round(t, 2) for k, t in figures.items()})
    finally:
        stop(procs)
        redis.stop()
    # A graceful shutdown (SIGTERM) ends with 0.
    assert all(p.process.returncode == 0 for p in procs[1:])
    return figures


async def test_three_processes_share_one_map_and_survive_an_owner_killed(tmp_path: Path) -> None:
    await run_cluster(tmp_path, ["kill"])


async def test_three_processes_share_one_map_through_a_redis_restart_and_a_stall(
    tmp_path: Path,
) -> None:
    await run_cluster(tmp_path, ["redis restart", "stall"])
