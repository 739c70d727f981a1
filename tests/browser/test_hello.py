"""The README's first page (examples/hello) in headless Chromium: it connects, draws the boats."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.served import Served

try:  # tests/browser is a package in some layouts and a plain folder in others
    from tests.browser import demo_helpers as h
except ImportError:  # pragma: no cover
    import demo_helpers as h  # type: ignore[no-redef]

pytest.importorskip("playwright.async_api", reason="the playwright package is not installed")

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not h.CHROMIUM.exists(), reason=f"no Chromium at {h.CHROMIUM}"),
    pytest.mark.timeout(90),
]


async def test_the_hello_page_shows_the_boats_sailing(tmp_path: Path) -> None:
    served = Served(
        [sys.executable, "-m", "synkworld", "serve", "app:make_server"],
        cwd=ROOT / "examples" / "hello",
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        log=tmp_path / "hello.log",
    )
    try:
        await served.healthy()
        async with h.chromium() as browser:
            page = await browser.new_page(viewport={"width": 1100, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(served.url + "/")
            status = page.locator("#status")
            await status.filter(has_text="20 boats in view").wait_for(timeout=15_000)
            # The boats are drawn where they are: dark pixels on the light sea.
            drawn = """() => {
                const c = document.getElementById("sea").getContext("2d");
                const d = c.getImageData(0, 0, 1000, 1000).data;
                let n = 0;
                for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
                return n;
            }"""
            assert await page.evaluate(drawn) >= 20 * 50
            await page.screenshot(path=str(tmp_path / "hello.png"))
            assert errors == []
        assert served.stop() == 0
    finally:
        served.kill()
