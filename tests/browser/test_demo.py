"""The demo map in headless Chromium: drawing, panning, avatars and pins across a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

try:  # tests/browser is a package in some layouts and a plain folder in others
    from tests.browser import demo_helpers as h
except ImportError:  # pragma: no cover
    import demo_helpers as h  # type: ignore[no-redef]

pytest.importorskip("playwright.async_api", reason="the playwright package is not installed")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not h.CHROMIUM.exists(), reason=f"no Chromium at {h.CHROMIUM}"),
    pytest.mark.timeout(120),
]

STEP = 60  # units per arrow press (the page's STEER_STEP)


async def agents_held(page: Any) -> int:
    return int(
        await page.evaluate("[...synk.cache.objects()].filter((o) => o.type === 'agent').length")
    )


async def assert_holds_the_truth(page: Any) -> dict[str, Any]:
    """The page's objects equal the server's for its held keys, at one instant."""
    await h.wait_settled(page)
    truth, mine = await h.truth_and_dump(page)
    diffs = h.differences(truth, mine)
    assert not diffs, "the page differs from the server's truth:\n" + "\n".join(diffs)
    agents = sum(1 for o in truth["objs"].values() if o["t"] == "agent")
    assert agents >= 50, f"the page holds only {agents} agents"
    return truth


async def test_demo_page(tmp_path: Path) -> None:
    server = h.DemoServer(tmp_path / "demo.sqlite3", tmp_path / "server.log", agents=1500)
    try:
        await server.start()
        async with h.chromium() as browser:
            page = await h.open_demo(browser, server.url)

            # -- it draws the map: many colours, not one flat fill -------------------------
            await page.wait_for_timeout(300)
            png = await page.screenshot()
            (tmp_path / "start.png").write_bytes(png)
            px = await h.pixel_stats(page, png)
            assert (px["width"], px["height"]) == (1280, 800)
            assert px["distinct"] > 300, px
            assert px["colourful"] > 3000, px  # the agents' glyphs, in their palette
            assert 0.05 < px["nonBackground"] < 0.95, px
            assert await agents_held(page) >= 50

            # -- the overlay counts what arrives -------------------------------------------------
            await page.wait_for_function(
                """() => /ms$/.test(document.getElementById("s-rtt").textContent)
                    && +document.getElementById("s-fps").textContent > 0
                    && /B\\/s$/.test(document.getElementById("s-bytes").textContent)""",
                timeout=15_000,
            )
            held_text = await page.text_content("#s-objects")
            assert held_text is not None and int(held_text.replace(",", "")) > 0

            # -- Chromium offered permessage-deflate, and the demo server took it -----------------
            async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as r:
                metrics = await r.text()
            compressed = next(
                f
                for f in text_string_to_metric_families(metrics)
                if f.name == "synkworld_clients_compressed"
            )
            assert compressed.samples[0].value == 1

            # -- click an agent: the side panel shows its fields, kept up to date ----------------
            x, y, _ = await page.evaluate(h.NEAREST_AGENT, [820, 430])
            await page.mouse.click(x, y)
            await page.wait_for_function("() => synk.get(demo.selected)?.type === 'agent'")
            chosen = await page.evaluate("({...synk.get(demo.selected).state})")
            await page.wait_for_selector("#inspector:not([hidden])")
            assert await page.text_content("#i-name") == chosen["name"]
            sub = await page.text_content("#i-sub")
            assert sub is not None and sub.startswith(f"{chosen['kind']} · "), sub
            shown = "() => ['x', 'y'].map((f) => "
            shown += "document.querySelector(`#i-fields dd[data-field=${f}]`).textContent).join()"
            first = await page.evaluate(shown)
            await page.wait_for_function(f"(was) => ({shown})() !== was", arg=first)
            await page.keyboard.press("Escape")
            assert await page.evaluate("demo.selected") is None
            assert await page.evaluate("demo.drops.length") == 0, "the click dropped a pin"

            # -- the wheel zooms in and out about the cursor -------------------------------------
            before = await page.evaluate("({...demo.view})")
            await page.mouse.move(640, 400)
            await page.mouse.wheel(0, -240)
            await page.wait_for_function("(s) => demo.view.scale > s * 1.2", arg=before["scale"])
            await page.mouse.wheel(0, 240)
            await page.wait_for_function(
                "(s) => Math.abs(demo.view.scale - s) < s * 1e-6", arg=before["scale"]
            )

            # -- drag to pan; what the page holds is the server's truth ----------------------
            before = await page.evaluate("({...demo.view})")
            await page.mouse.move(640, 400)
            await page.mouse.down()
            await page.mouse.move(490, 330, steps=6)
            await page.mouse.move(340, 260, steps=6)
            await page.mouse.up()
            after = await page.evaluate("({...demo.view})")
            scale = before["scale"]
            assert after["cx"] == pytest.approx(before["cx"] + 300 / scale, abs=1)
            assert after["cy"] == pytest.approx(before["cy"] + 140 / scale, abs=1)
            assert await page.evaluate("demo.selected") is None, "a drag is not a click"
            await assert_holds_the_truth(page)

            # -- a second player: arrows steer its avatar; page 1 sees it move --------------
            other = await h.open_demo(browser, server.url, viewport={"width": 960, "height": 700})
            mine_id = await page.evaluate("demo.avatarId")
            other_id = await other.evaluate("demo.avatarId")
            assert other_id and other_id != mine_id
            assert await other.evaluate("demo.players") == 2
            # Avatars spawn spread out, maybe beyond this page's view since its drag:
            # it goes to where the other one stands.
            await other.wait_for_function("(id) => !!synk.get(id)", arg=other_id)
            at = await other.evaluate("(id) => ({...synk.get(id).state})", other_id)
            await page.evaluate("([x, y]) => demo.centreOn(x, y)", [at["x"], at["y"]])
            await page.wait_for_function("(id) => !!synk.get(id)", arg=other_id)
            start = await page.evaluate("(id) => ({...synk.get(id).state})", other_id)
            presses = ["ArrowRight", "ArrowRight", "ArrowRight", "ArrowDown", "ArrowDown"]
            for n, key in enumerate(presses, 1):
                await other.keyboard.press(key)
                await other.wait_for_function("(n) => demo.steers >= n", arg=n)
            await other.wait_for_function("() => !demo.steering")
            # Each press is one step (a key held past 250 ms repeats; a slow machine may do that).
            last = await other.evaluate("demo.lastSteer")
            assert last["x"] - start["x"] >= 3 * STEP and (last["x"] - start["x"]) % STEP == 0
            assert last["y"] - start["y"] >= 2 * STEP and (last["y"] - start["y"]) % STEP == 0
            await page.wait_for_function(
                "([id, w]) => { const s = synk.get(id)?.state; return s && s.x === w.x"
                " && s.y === w.y; }",
                arg=[other_id, last],
                timeout=10_000,
            )
            # Page 1 may not steer page 2's avatar.
            code = await page.evaluate(
                """(id) => synk.call("steer", {avatar: id, dx: 10, dy: 0})
                    .then(() => "ok", (err) => err.code)""",
                other_id,
            )
            assert code == "forbidden"
            await page.wait_for_timeout(300)  # a few ticks: it did not move
            assert await page.evaluate("(id) => synk.get(id).state.x", other_id) == last["x"]
            await other.close()
            # The avatar leaves with its tab (deleted at the next tick).
            await page.wait_for_function("(id) => !synk.get(id)", arg=other_id)

            # -- a pin dropped by a click survives a restart --------------------------------
            spot = await page.evaluate(h.FREE_SPOT)
            assert spot, "no free spot to click"
            await page.mouse.click(*spot)
            answered = "(d) => d && ('ok' in d || 'error' in d)"
            await page.wait_for_function(f"() => ({answered})(demo.drops[0])")
            assert await page.evaluate("demo.drops.length") == 1
            drop = await page.evaluate("demo.drops[0]")
            assert "error" not in drop, drop
            marker_id = drop["ok"]["id"]
            assert isinstance(marker_id, str) and marker_id
            await page.wait_for_function("(id) => !!synk.get(id)", arg=marker_id)
            marker = await page.evaluate("(id) => ({...synk.get(id).state})", marker_id)
            assert (marker["x"], marker["y"], marker["label"]) == (
                drop["x"],
                drop["y"],
                drop["label"],
            )
            truth = await assert_holds_the_truth(page)
            assert truth["objs"][marker_id]["s"] == marker

            assert server.stop() == 0, server.log_tail()
            await page.wait_for_function("synk.state !== 'ready'")
            await server.start()
            # The page reconnects by itself: a new session, a new avatar, the same pin.
            await page.wait_for_function(
                "(old) => synk.state === 'ready' && demo.avatarId && demo.avatarId !== old",
                arg=mine_id,
                timeout=30_000,
            )
            truth = await assert_holds_the_truth(page)
            assert truth["objs"][marker_id]["s"] == marker
            assert await page.evaluate("(id) => ({...synk.get(id).state})", marker_id) == marker
            assert await agents_held(page) >= 50

            await page.screenshot(path=str(tmp_path / "end.png"))
            assert page.errors == [], page.errors
    finally:
        server.stop()
