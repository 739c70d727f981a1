"""A well-behaved client that keeps a cache, and the check of a fresh one against the truth."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any

import aiohttp
import orjson

from bench.gridworld_cache import compare_with_truth, holding, sampled_client
from bench.reliability.world import WorldSpec

WS_TEXT = aiohttp.WSMsgType.TEXT
WS_DONE = (
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.ERROR,
)


def hello_problems(hello: dict[str, Any], spec: WorldSpec, rate_hz: float) -> list[str]:
    """What is wrong with a `hello` frame for the busy world (nothing: [])."""
    problems = []
    if hello.get("m") != "hello" or hello.get("proto") != 1:
        problems.append(
            f"not a protocol 1 hello: m={hello.get('m')!r} proto={hello.get('proto')!r}"
        )
    sid = hello.get("sid")
    if not isinstance(sid, str) or not sid:
        problems.append(f"sid {sid!r}")
    tick = hello.get("tick")
    if not isinstance(tick, int) or isinstance(tick, bool) or tick < 0:
        problems.append(f"tick {tick!r}")
    if hello.get("rate") != rate_hz:
        problems.append(f"rate {hello.get('rate')!r} != {rate_hz!r}")
    main = (hello.get("maps") or {}).get("main") or {}
    s = spec.map_size
    expected = {"cell": spec.cell_size, "origin": [0, 0], "bounds": [0, 0, s, s], "pos": ["x", "y"]}
    for k, v in expected.items():
        if main.get(k) != v:
            problems.append(f"maps.main.{k} {main.get(k)!r} != {v!r}")
    return problems


class CacheClient:
    """One well-behaved client: a WebSocket, a `synkworld.Mirror`, and `truth` calls to check it."""

    def __init__(self, url: str, rect: list[float], margin: int = 1) -> None:
        self.url = url
        self.rect = rect
        self.margin = margin
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.cache = sampled_client()
        self.hello: dict[str, Any] = {}
        self.snapshot = asyncio.Event()
        self.snapshot_at: float | None = None
        self.snapshot_tick = 0
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self._replies: dict[int, asyncio.Future[tuple[float, dict[str, Any]]]] = {}
        self._checks: set[int] = set()
        self._next_id = 0
        self._reader: asyncio.Task[None] | None = None
        self.connect_attempts = 0

    async def connect(self, http: aiohttp.ClientSession, timeout: float) -> None:
        """Connects (retrying until `timeout`), reads `hello`, sends the `view`."""
        self.cache = sampled_client()
        self.snapshot = asyncio.Event()
        self.snapshot_at = None
        self.closed = asyncio.Event()
        self.close_code = None
        deadline = time.monotonic() + timeout
        while True:
            self.connect_attempts += 1
            try:
                ws = await http.ws_connect(
                    self.url + "/ws", max_msg_size=0, heartbeat=None, autoping=True
                )
                break
            except (aiohttp.ClientError, OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)
        self.ws = ws
        msg = await ws.receive(timeout=max(1.0, deadline - time.monotonic()))
        if msg.type is not WS_TEXT:
            raise ConnectionError(f"expected hello, got {msg.type!r}")
        self.hello = orjson.loads(msg.data)
        self.cache.apply(self.hello)
        self._reader = asyncio.create_task(self._read(ws))
        view = {"m": "view", "map": "main", "rect": self.rect, "margin": self.margin}
        await ws.send_str(orjson.dumps(view).decode())

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        cache = self.cache
        try:
            while True:
                msg = await ws.receive()
                if msg.type is WS_TEXT:
                    t = time.monotonic()
                    m = orjson.loads(msg.data)
                    kind = m.get("m")
                    if kind in ("reply", "error") and m.get("id") in self._replies:
                        fut = self._replies.pop(m["id"])
                        if m.get("id") in self._checks:
                            # Compared here, before the frames after the reply (often
                            # already buffered) are applied: the truth is of this point.
                            self._checks.discard(m["id"])
                            m["compared"] = self._compare(m)
                        if not fut.done():
                            fut.set_result((t, m))
                        continue
                    cache.apply(m)
                    if self.snapshot_at is None and kind == "tick" and "snap" in m:
                        self.snapshot_at = t
                        self.snapshot_tick = m["n"]
                        self.snapshot.set()
                elif msg.type in WS_DONE:
                    break
        finally:
            self.close_code = ws.close_code
            self.closed.set()
            for fut in self._replies.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("closed before the reply"))
            self._replies.clear()

    def _compare(self, reply: dict[str, Any]) -> tuple[int, list[str]]:
        if reply.get("m") != "reply":
            return 1, [f"truth call answered {reply}"]
        bad, examples = compare_with_truth(holding(self.cache), reply["ok"])
        return bad + self.cache.violations, examples + self.cache.violation_examples

    async def call(
        self, name: str, args: dict[str, Any], timeout: float, *, compare: bool = False
    ) -> tuple[float, Any]:
        """Calls a handler; returns the reply's arrival (monotonic) and the message.

        With `compare`, the reply is the truth, compared with the cache on arrival
        (``reply["compared"]``: mismatches and examples).
        """
        ws = self.ws
        if ws is None or ws.closed:
            raise ConnectionError("not connected")
        self._next_id += 1
        call_id = self._next_id
        if compare:
            self._checks.add(call_id)
        fut: asyncio.Future[tuple[float, dict[str, Any]]] = (
            asyncio.get_running_loop().create_future()
        )
        self._replies[call_id] = fut
        msg = {"m": "call", "id": call_id, "name": name, "args": args}
        await ws.send_str(orjson.dumps(msg).decode())
        return await asyncio.wait_for(fut, timeout)

    async def check(self, timeout: float) -> tuple[int, list[str], float]:
        """Compares the cache with the server's truth at the reply's place in the stream.

        Returns (mismatches, examples, when the reply arrived); protocol
        violations the cache saw count as mismatches.
        """
        t, reply = await self.call("truth", {}, timeout, compare=True)
        bad, examples = reply["compared"]
        return bad, examples, t

    async def close(self) -> None:
        """Closes the connection (bounded)."""
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 2.0)
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 2.0)


def viewport(
    rng: random.Random, spec: WorldSpec, w: float = 1000.0, h: float = 750.0
) -> list[float]:
    """A random viewport rectangle inside the map."""
    x = rng.uniform(0, max(spec.map_size - w, 0.0))
    y = rng.uniform(0, max(spec.map_size - h, 0.0))
    return [round(x, 1), round(y, 1), round(x + w, 1), round(y + h, 1)]


async def fresh_client_check(
    http: aiohttp.ClientSession, url: str, spec: WorldSpec, rate_hz: float, seed: int
) -> dict[str, Any]:
    """A new well-behaved client: its hello, its first snapshot, and its cache against the truth."""
    client = CacheClient(url, viewport(random.Random(seed), spec))
    try:
        await client.connect(http, 10.0)
        problems = hello_problems(client.hello, spec, rate_hz)
        await asyncio.wait_for(client.snapshot.wait(), 10.0)
        bad, examples, _ = await client.check(10.0)
        view = holding(client.cache)
        return {
            "ok": not problems and bad == 0 and len(view["held"]) > 0,
            "hello_problems": problems,
            "keys": len(view["held"]),
            "objects": len(view["objs"]),
            "mismatches": bad,
            "examples": examples[:5],
        }
    except (aiohttp.ClientError, OSError, TimeoutError, ConnectionError) as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    finally:
        await client.close()
