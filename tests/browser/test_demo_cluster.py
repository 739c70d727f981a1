"""The demo map on two processes sharing one map through Redis, in headless Chromium.

What `make demo-cluster` runs (scripts/demo-cluster.sh), on free loopback
ports: a redis-server without persistence, and two demo processes with the
same Redis, world and SQLite store. A page on each process:

1. says which process it is on, and the two say different processes;
2. shows the same map: for one view, at one tick, each page's cache equals the
   truth (the union of what the two processes own in that view: each one's
   `truth` knows only its own objects), and the two caches equal each other;
3. sees what the other page does within a couple of seconds: a pin dropped on
   one (in a cell the other process owns, so the call is forwarded there) and
   the other's avatar steered with the arrow keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

try:  # tests/browser is a package in some layouts and a plain folder in others
    from tests.browser import demo_helpers as h
except ImportError:  # pragma: no cover
    import demo_helpers as h  # type: ignore[no-redef]
from tests.bus.support import RedisServer

pytest.importorskip("playwright.async_api", reason="the playwright package is not installed")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.redis,
    pytest.mark.skipif(not h.CHROMIUM.exists(), reason=f"no Chromium at {h.CHROMIUM}"),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server"),
    pytest.mark.timeout(120),
]

AGENTS = 1500
REGION = 4 * 500.0  # the demo's --region-cells (4) times its cell size: one owner per region
SEEN_WITHIN_S = 3.0  # "within a couple of seconds", with some room for a busy machine

# Every tick frame and resync, the page keeps a copy of what it holds, by tick (the last 200),
# and notes the ticks of its resyncs.
RECORD = """() => {
    if (window.__byTick) return;
    const byTick = (window.__byTick = new Map());
    window.__resyncs = [];
    const keep = () => {
        const d = JSON.parse(JSON.stringify(demo.dump()));
        byTick.set(d.tick, d);
        for (const n of byTick.keys()) if (n < d.tick - 200) byTick.delete(n);
    };
    synk.on("tick", keep);
    synk.on("resync", (msg) => {
        keep();
        __resyncs.push(msg.n);
    });
}"""

# The server's truth, asked right after a tick frame arrives: the two pages' calls then
# usually land in the same tick of the two processes.
TRUTH_AFTER_A_FRAME = """async () => {
    await new Promise((ok) => { const off = synk.on("tick", () => { off(); ok(); }); });
    return await synk.call("truth");
}"""

HELD_AT = """async (n) => {
    // The page's copy of tick n: its frame may come after the truth's reply. None when the
    // page went past n without it (a frame dropped for a slow page, then a resync).
    const t0 = performance.now();
    while (!__byTick.has(n) && synk.tick < n + 3 && performance.now() - t0 < 10000)
        await new Promise((ok) => setTimeout(ok, 10));
    return __byTick.get(n) ?? null;
}"""

SPOT_IN = """(keys) => {
    // A free spot on the canvas in one of `keys` (nearest the middle first): [sx, sy, key].
    const cell = synk.hello.maps.main.cell;
    const keyAt = (sx, sy) => {
        const w = demo.toWorld(sx, sy);
        return `main:${Math.floor(Math.round(w.x) / cell)}:${Math.floor(Math.round(w.y) / cell)}`;
    };
    const wanted = new Set(keys);
    const mid = [innerWidth / 2, innerHeight / 2];
    const off = (p) => Math.hypot(p[0] - mid[0], p[1] - mid[1]);
    const centres = keys.map((k) => {
        const [, cx, cy] = k.split(":").map(Number);
        const p = demo.toScreen((cx + 0.5) * cell, (cy + 0.5) * cell);
        return [p.x, p.y];
    }).sort((p, q) => off(p) - off(q));
    const map = document.getElementById("map");
    for (const [x, y] of centres) {
        if (x < 40 || y < 40 || x > innerWidth - 40 || y > innerHeight - 40) continue;
        const spot = (FREE_SPOT)([x, y]);
        if (!spot) continue;
        const key = keyAt(spot[0], spot[1]);
        if (wanted.has(key) && document.elementFromPoint(spot[0], spot[1]) === map)
            return [spot[0], spot[1], key];
    }
    return null;
}""".replace("(FREE_SPOT)", f"({h.FREE_SPOT})")


class DemoProcess(h.DemoServer):
    """`python -m synkworld.demo --redis ...`, as scripts/demo-cluster.sh starts it."""

    def __init__(self, redis: str, db: Path, log: Path) -> None:
        port = h.free_port()
        self.node = f"demo-{port}"
        args = ["--host", "127.0.0.1", "--redis", redis, "--node", self.node]
        super().__init__(db, log, port=port, agents=AGENTS, args=args)

    async def health(self, http: aiohttp.ClientSession) -> dict[str, Any] | None:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"{self.node} is not running:\n{self.log_tail()}")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with http.get(f"{self.url}/healthz") as r:
                if r.status == 200:
                    return dict(await r.json())
        return None


async def owning(http: aiohttp.ClientSession, nodes: list[DemoProcess], timeout_s: float) -> None:
    """Waits until every process answers /healthz and owns some regions of the map."""
    deadline = time.monotonic() + timeout_s
    health: list[dict[str, Any] | None] = []
    while time.monotonic() < deadline:
        health = [await n.health(http) for n in nodes]
        if all(b and b.get("ok") and int(b.get("regions", 0)) > 0 for b in health):
            for n, b in zip(nodes, health, strict=True):
                assert b is not None and b["node"] == n.node, b
            return
        await asyncio.sleep(0.1)
    tails = "\n".join(f"-- {n.node}:\n{n.log_tail()}" for n in nodes)
    raise AssertionError(f"not every process owns regions after {timeout_s} s: {health}\n{tails}")


async def same_view(pages: list[Any], cx: float, cy: float, timeout_s: float = 15.0) -> None:
    """Puts every page on the first page's zoom, centred on (cx, cy), and waits until settled.

    A page that steered its avatar in the last 2 s may still pan to keep it in sight: retried.
    """
    scale = await pages[0].evaluate("demo.view.scale")
    deadline = time.monotonic() + timeout_s
    while True:
        for page in pages:
            await page.evaluate(
                "([s, x, y]) => { demo.view.scale = s; demo.centreOn(x, y); }", [scale, cx, cy]
            )
        for page in pages:
            await h.wait_settled(page)
        views = [
            await page.evaluate("[demo.view.cx, demo.view.cy, demo.requested]") for page in pages
        ]
        if all(v == [cx, cy, views[0][2]] for v in views):
            return
        assert time.monotonic() < deadline, f"the pages keep other views: {views}"
        await asyncio.sleep(0.3)


async def one_tick(pages: list[Any], timeout_s: float = 30.0) -> tuple[dict[str, Any], list[Any]]:
    """The truth of both processes at one tick, and what each page held at that tick.

    Each process's `truth` knows only the objects it owns: the truth of the view is their
    union, at a tick where both answered.
    """
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        truths = await asyncio.gather(*(page.evaluate(TRUTH_AFTER_A_FRAME) for page in pages))
        n = truths[0]["tick"]
        if any(t["tick"] != n for t in truths):
            last = f"ticks {[t['tick'] for t in truths]}"
            continue
        dumps = await asyncio.gather(*(page.evaluate(HELD_AT, n) for page in pages))
        if any(d is None for d in dumps):
            last = f"a page skipped tick {n}"
            continue
        held = [t["held"] for t in truths]
        assert all(x == held[0] for x in held), "the two sessions hold different keys"
        # Every object of the view is on exactly one process; each owns part of the view.
        ids = [set(t["objs"]) for t in truths]
        assert all(ids), f"a process owns nothing in the view: {[len(i) for i in ids]}"
        both = set.intersection(*ids)
        assert not both, f"objects on both processes at tick {n}: {sorted(both)[:8]}"
        objs: dict[str, Any] = {}
        for t in truths:
            objs.update(t["objs"])
        return {"tick": n, "held": held[0], "objs": objs}, dumps
    raise AssertionError(f"no tick that both processes and both pages have: last {last}")


def in_flight(truth: dict[str, Any], dumps: list[Any]) -> set[str]:
    """Objects both pages hold alike that neither process has: handed over at this tick.

    A handover leaves the source's world at the commit and enters the adopter's after
    the frames; a `truth` asked in between finds it in neither.
    """
    extra = set.union(*(set(d["objs"]) for d in dumps)) - set(truth["objs"])
    return {i for i in extra if all(d["objs"].get(i) == dumps[0]["objs"][i] for d in dumps)}


async def assert_same_map(
    pages: list[Any], names: list[str], out: Path, attempts: int = 6
) -> dict[str, Any]:
    """At one tick, each page holds the truth of both processes, and the two pages agree."""
    for attempt in range(attempts):
        truth, dumps = await one_tick(pages)
        n = truth["tick"]
        moving = in_flight(truth, dumps)
        if moving and attempt < attempts - 1:
            # Would pass but for objects crossing a border now: ask again at another tick.
            rest = [
                {**d, "objs": {i: o for i, o in d["objs"].items() if i not in moving}}
                for d in dumps
            ]
            if not any(h.differences(truth, d) for d in rest):
                continue
        resyncs = [await page.evaluate("__resyncs.slice(-5)") for page in pages]
        (out / f"tick{n}.json").write_text(json.dumps({"truth": truth, "pages": dumps}))
        for name, dump, rs in zip(names, dumps, resyncs, strict=True):
            assert dump["stale"] == 0, f"{name}: {dump['stale']} stale objects"
            diffs = h.differences(truth, dump)
            assert not diffs, (
                f"{name} differs from the truth at tick {n} (its last resyncs at {rs}; "
                f"both truths and pages in {out}/tick{n}.json):\n" + "\n".join(diffs)
            )
        diffs = h.differences(dumps[0], dumps[1])
        assert not diffs, f"the two pages differ at tick {n}:\n" + "\n".join(diffs)
        agents = sum(1 for o in truth["objs"].values() if o["t"] == "agent")
        assert agents >= 50, f"the view holds only {agents} agents"
        return truth
    raise AssertionError("unreachable")


async def seen(page: Any, what: str, condition: str, arg: Any) -> float:
    """Seconds until `condition(arg)` holds on the page (10 s at most, else it fails)."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    started = time.monotonic()
    try:
        await page.wait_for_function(condition, arg=arg, timeout=10_000, polling=20)
    except PlaywrightTimeout:
        raise AssertionError(f"the other page never saw {what} (10 s)") from None
    return time.monotonic() - started


async def test_demo_on_two_processes(tmp_path: Path) -> None:
    redis = RedisServer(h.free_port(), tmp_path / "redis.log")
    db = tmp_path / "world.sqlite3"
    nodes: list[DemoProcess] = []
    try:
        redis.start()
        nodes = [DemoProcess(redis.url, db, tmp_path / f"demo{i}.log") for i in range(2)]
        async with aiohttp.ClientSession() as http:
            # One after the other: the first seeds the store before it serves. (Started at
            # once, as the script does, one may stop at start-up on "SQLite: database is
            # locked", seldom; not what this test is about.)
            for n in nodes:
                await n.start(timeout_s=30)
            await owning(http, nodes, timeout_s=30)
        async with h.chromium() as browser:
            pages = [await h.open_demo(browser, n.url) for n in nodes]
            a, b = pages

            # -- 1. each page says which process it is on; they are different -------------
            said = []
            for n, page in zip(nodes, pages, strict=True):
                await page.wait_for_function(
                    "document.getElementById('s-node').textContent !== '\\u2013'", timeout=10_000
                )
                text = (await page.text_content("#s-node")) or ""
                m = re.fullmatch(r"(\S+) \((\d+) regions\)", text.strip())
                assert m, f"the page on {n.url} says {text!r}"
                assert m[1] == n.node, f"the page on {n.url} says {text!r}, not {n.node}"
                said.append(m[1])
            assert said[0] != said[1], f"both pages say they are on {said[0]}"

            # -- 2. one map: the same view, at one tick, equals the truth on both pages ----
            for page in pages:
                await page.evaluate(RECORD)
            await same_view(pages, 10_000, 10_000)
            truth = await assert_same_map(pages, said, tmp_path)
            ids_a = await a.evaluate("demo.avatarId")
            ids_b = await b.evaluate("demo.avatarId")
            assert ids_a != ids_b and {ids_a, ids_b} <= set(truth["objs"]), "avatars not in view"

            # -- 3a. a pin dropped on page A, in a cell process B owns, shows on page B ------
            theirs = sorted(
                {o["k"] for o in (await b.evaluate("synk.call('truth')"))["objs"].values()}
            )
            spot = await a.evaluate(SPOT_IN, theirs)
            assert spot, f"no free spot on page A in a cell of {said[1]}"
            clicked = time.monotonic()
            await a.mouse.click(spot[0], spot[1])
            await a.wait_for_function(
                "() => demo.drops[0] && ('ok' in demo.drops[0] || 'error' in demo.drops[0])",
                timeout=10_000,
            )
            drop = await a.evaluate("demo.drops[0]")
            assert "error" not in drop, f"the pin was refused: {drop}"
            marker_id = drop["ok"]["id"]
            await seen(
                b,
                f"the pin {drop}",
                """([id, d]) => { const s = synk.get(id)?.state;
                    return !!s && s.x === d.x && s.y === d.y && s.label === d.label; }""",
                [marker_id, drop],
            )
            pin_s = time.monotonic() - clicked
            assert pin_s < SEEN_WITHIN_S, f"page B saw the pin after {pin_s:.2f} s"
            # Made by the owner of its cell, through the forwarded call.
            assert marker_id in (await b.evaluate("synk.call('truth')"))["objs"], spot

            # -- 3b. page B steers its avatar with the arrow keys; page A sees it move --------
            await a.wait_for_function("(id) => !!synk.get(id)", arg=ids_b)
            start = await b.evaluate("(id) => ({...synk.get(id).state})", ids_b)
            # Away from the nearest region border: this is about what the other page sees,
            # not about handovers (steps across a border worked in trials, 80 of 80).
            across = "ArrowRight" if start["x"] % REGION < REGION / 2 else "ArrowLeft"
            down = "ArrowDown" if start["y"] % REGION < REGION / 2 else "ArrowUp"
            for k, key in enumerate([across, across, across, down, down], 1):
                await b.keyboard.press(key)
                await b.wait_for_function("(k) => demo.steers >= k", arg=k, timeout=10_000)
            await b.wait_for_function("() => !demo.steering", timeout=10_000)
            last = await b.evaluate("demo.lastSteer")
            assert abs(last["x"] - start["x"]) >= 180 and abs(last["y"] - start["y"]) >= 120, (
                start,
                last,
            )
            steer_s = await seen(
                a,
                f"the avatar at {last}",
                """([id, w]) => { const s = synk.get(id)?.state;
                    return !!s && s.x === w.x && s.y === w.y; }""",
                [ids_b, last],
            )
            assert steer_s < SEEN_WITHIN_S, f"page A saw the avatar move after {steer_s:.2f} s"

            # -- and still one map, now with the pin and the moved avatar --------------------
            await same_view(pages, 10_000, 10_000)
            truth = await assert_same_map(pages, said, tmp_path)
            assert truth["objs"][marker_id]["s"]["label"] == drop["label"]
            assert {k: truth["objs"][ids_b]["s"][k] for k in ("x", "y")} == last
            for name, page in zip(said, pages, strict=True):
                assert page.errors == [], f"{name}: {page.errors}"
            resyncs = [await page.evaluate("__resyncs.length") for page in pages]
            print(
                f"pin seen on the other page after {pin_s:.2f} s, avatar after {steer_s:.2f} s;"
                f" resyncs on the pages: {resyncs}"
            )

        for n in nodes:
            n.signal()
        codes = [n.wait(timeout_s=30) for n in nodes]
        assert codes == [0, 0], "\n".join(f"-- {n.node}:\n{n.log_tail()}" for n in nodes)
    finally:
        for n in nodes:
            n.signal()
        for n in nodes:
            n.wait(timeout_s=30)
        redis.stop()
