"""The JavaScript library in headless Chromium with protocol v2 (docs/protocol-v2.md).

- The test page (tests/browser/page/) speaks v2 by default and v1 with
  `?protocol=1`: in either version it pans over the app's world and its cache
  must equal the server's truth for its held keys whenever it is sampled.
- The decode time of one recorded v2 frame of the bench's default scenario
  (one client's view of 10k moving objects: about 260 objects in 40 cells,
  mostly motion), decoded and applied by ObjectCache in the page; the median
  is printed and attached to the test report (the test's `user_properties`,
  which report plugins and `--junitxml -o junit_family=legacy` show), and
  only the decoding's result is asserted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from synkworld import GridMap, Server, World
from tests.browser.demo_helpers import CHROMIUM, chromium
from tests.browser.test_browser import (
    CHANNEL,
    PANS,
    ServerProcess,
    expected_keys,
    free_port,
    sample,
    settle,
)
from tests.web.support import WEB
from tests.web.v2_frames import record_grid_world

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"headless Chromium is not installed at {CHROMIUM} (apt-get install chromium)",
    ),
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(free_port(), tmp_path)
    try:
        yield proc
    finally:
        proc.kill()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


@pytest.mark.parametrize("protocol", [2, 1])
async def test_the_page_holds_its_view_in_either_version(
    server: ServerProcess, browser: Any, protocol: int
) -> None:
    page = await browser.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    await server.start()
    await page.goto(f"{server.url}/?protocol={protocol}")
    await page.wait_for_function("window.synk && window.synk.state === 'ready'", timeout=15_000)
    assert await page.evaluate("synk.protocol") == protocol
    assert await page.evaluate("synk.hello.proto") == protocol
    await page.evaluate(f"synk.subscribe({CHANNEL!r})")
    held = 0
    for rect in PANS:
        await page.evaluate("r => synk.setView('main', r, 1)", rect)
        s = await settle(page, expected_keys(rect))
        for _ in range(3):  # the cache keeps up tick by tick, motion included
            await asyncio.sleep(0.07)
            s = await sample(page)
        assert len(s["cache"]["objects"]) > 20
        held += len(s["cache"]["objects"])
    log = await page.evaluate("synkTest.log")
    assert page_errors == []
    assert log["errors"] == []
    assert log["badLerps"] == []
    print(f"protocol {protocol}: {len(PANS)} pans, {held} objects checked")


async def test_decode_time_of_a_bench_frame(
    browser: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    recording = tmp_path / "grid-world.json"
    record_grid_world(recording)
    expected = json.loads(recording.read_text())["views"][-1]
    bench_js = (WEB / "testing" / "decode-bench.js").read_text()
    # Any synkworld server serves the library; the page only needs its origin.
    server = Server(World(GridMap(cell_size=100)), freeze_gc=False)
    async with server.running() as url:
        page = await browser.new_page()
        await page.route(
            "**/decode-bench.js",
            lambda route: route.fulfill(body=bench_js, content_type="text/javascript"),
        )
        await page.route(
            "**/recording.json",
            lambda route: route.fulfill(path=str(recording), content_type="application/json"),
        )
        await page.goto(url + "/healthz")
        result: dict[str, Any] = await page.evaluate(
            """async () => {
                const { ObjectCache } = await import("/synkworld/client.js");
                const { timeDecode } = await import("/decode-bench.js");
                const recording = await (await fetch("/recording.json")).json();
                return timeDecode(ObjectCache, recording);
            }"""
        )
    view = result.pop("view")
    assert result["errors"] == []
    assert view == expected, "the page's cache after the frame is not the reference's"
    assert result["objects"] == len(expected) > 100
    first, again = result["firstMs"], result["repeatMs"]
    # Not record_property: it warns (an error here) under --junitxml's default xunit2.
    request.node.user_properties.extend(
        [
            ("v2_decode_frame", result["frame"]),
            ("v2_decode_objects", result["objects"]),
            ("v2_decode_cells", result["held"]),
            ("v2_decode_first_median_ms", first["median"]),
            ("v2_decode_repeat_median_ms", again["median"]),
        ]
    )
    print(
        f"v2 decode+apply in Chromium, frame {result['frame']['index']} "
        f"({result['frame']['bytes']} bytes, {result['objects']} objects, {result['held']} cells): "
        f"first application median {first['median'] * 1000:.1f} us "
        f"(p90 {first['p90'] * 1000:.1f}), "
        f"repeated median {again['median'] * 1000:.1f} us (p90 {again['p90'] * 1000:.1f})"
    )
