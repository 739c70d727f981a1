"""The /monitor page in headless Chromium, against a ticking server with clients connected.

The page must show the live figures (clients, held keys, the tick going up, the
hottest cells), draw its chart of tick phases, keep to its content security
policy, and follow a client leaving. A screenshot goes to the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from synkworld import GridMap, Server, SynkObject, World

try:  # tests/browser is a package in some layouts and a plain folder in others
    from tests.browser import demo_helpers as h
except ImportError:  # pragma: no cover
    import demo_helpers as h  # type: ignore[no-redef]

pytest.importorskip("playwright.async_api", reason="the playwright package is not installed")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not h.CHROMIUM.exists(), reason=f"no Chromium at {h.CHROMIUM}"),
    pytest.mark.timeout(90),
]

TOKEN = "let-me-see"


class Buoy(SynkObject, type="monitor-buoy"):
    x: float
    y: float
    hp: int = 0


def make_server() -> Server:
    world = World(GridMap(cell_size=100, bounds=(0, 0, 1000, 1000)))
    buoys = [world.create(Buoy(x=20.0 * i + 10, y=20.0 * i + 10)) for i in range(40)]
    server = Server(world, tick_rate_hz=20, freeze_gc=False, monitor=TOKEN)
    clock = [0.0]

    @server.simulation
    def bob(dt: float) -> None:
        clock[0] += dt
        for i, b in enumerate(buoys):
            world.move(b, 20.0 * i + 10 + 5 * math.sin(clock[0] + i), b.y)

    return server


@contextlib.asynccontextmanager
async def viewer(http: aiohttp.ClientSession, url: str, rect: list[float]) -> AsyncIterator[None]:
    """A WebSocket client holding `rect`'s cells, reading every frame while the block runs."""
    async with http.ws_connect(url.replace("http", "ws") + "/ws") as ws:
        await ws.send_str(orjson.dumps({"m": "view", "map": "main", "rect": rect}).decode())

        async def drain() -> None:
            async for _ in ws:
                pass

        task = asyncio.create_task(drain())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def text(page: Any, selector: str) -> str:
    return str(await page.text_content(selector))


async def test_the_monitor_page_shows_live_figures(tmp_path: Path) -> None:
    server = make_server()
    async with (
        server.running() as url,
        aiohttp.ClientSession() as http,
        viewer(http, url, [0, 0, 250, 250]),
        viewer(http, url, [0, 0, 250, 250]),
        h.chromium() as browser,
    ):
        leaving = viewer(http, url, [600, 600, 900, 900])
        await leaving.__aenter__()
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        refused = await page.goto(f"{url}/monitor?token=wrong")
        assert refused is not None and refused.status == 403

        # From here on, any error (a script failing, a CSP violation, a failed request)
        # is a failure.
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on(
            "console",
            lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
        )
        opened = await page.goto(f"{url}/monitor?token={TOKEN}")
        assert opened is not None and opened.status == 200
        await page.wait_for_function(
            "() => window.synkMonitor && synkMonitor.polls >= 1"
            " && document.getElementById('clients').textContent === '3'",
            timeout=20_000,
        )
        assert "live" in await text(page, "#status")
        first_tick = int((await text(page, "#tick")).replace(",", ""))
        # The numbers move: the page polls again and the tick has gone on.
        await page.wait_for_function(
            f"() => Number(document.getElementById('tick').textContent.replace(/,/g, ''))"
            f" > {first_tick}",
            timeout=20_000,
        )
        held = int(await text(page, "#held"))
        assert held >= 3  # two clients on the same cells, one elsewhere

        # The hottest cells: the two shared viewports' cells lead by subscribers.
        await page.wait_for_function(
            "() => document.querySelectorAll('#by-bytes td.key').length > 0", timeout=20_000
        )
        top_by_subscribers = await page.eval_on_selector_all(
            "#by-subscribers tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
        )
        assert top_by_subscribers[0][0].startswith("main:") and top_by_subscribers[0][1] == "2"
        by_bytes = await page.eval_on_selector_all(
            "#by-bytes tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
        )
        assert all(row[1].endswith("B/s") for row in by_bytes), by_bytes

        # The chart: once two seconds of ticks are in, the phases are drawn in their colours.
        await page.wait_for_function(
            "() => synkMonitor.data && synkMonitor.data.history.length >= 2", timeout=20_000
        )
        await page.wait_for_function("() => synkMonitor.polls >= 4", timeout=20_000)
        painted = await page.evaluate(
            """() => {
                const c = document.getElementById("phases");
                const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
                let lit = 0;
                for (let i = 3; i < px.length; i += 4) if (px[i] > 0) lit++;
                return { lit, total: px.length / 4 };
            }"""
        )
        assert painted["lit"] > 0.01 * painted["total"], painted

        # A client leaves: the page follows.
        await leaving.__aexit__(None, None, None)
        await page.wait_for_function(
            "() => document.getElementById('clients').textContent === '2'", timeout=20_000
        )

        (tmp_path / "monitor.png").write_bytes(await page.screenshot(full_page=True))
        assert problems == [], problems
