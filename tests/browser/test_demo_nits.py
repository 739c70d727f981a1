"""The demo page: it says when a view is clipped, C finds your avatar, avatars spawn apart."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from synkworld.demo.world import DemoSettings, spawn_point

try:  # tests/browser is a package in some layouts and a plain folder in others
    from tests.browser import demo_helpers as h
except ImportError:  # pragma: no cover
    import demo_helpers as h  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(120)

F = TypeVar("F", bound=Callable[..., Any])


def in_chromium(test: F) -> F:
    """Marks a test that drives the page in headless Chromium (the spawn test needs neither)."""
    for mark in (
        pytest.mark.browser,
        pytest.mark.skipif(
            importlib.util.find_spec("playwright") is None,
            reason="the playwright package is not installed",
        ),
        pytest.mark.skipif(not h.CHROMIUM.exists(), reason=f"no Chromium at {h.CHROMIUM}"),
    ):
        test = mark(test)
    return test


@pytest.fixture
async def demo_url(tmp_path: Path) -> AsyncIterator[str]:
    server = h.DemoServer(tmp_path / "demo.sqlite3", tmp_path / "server.log", agents=600)
    try:
        await server.start()
        yield server.url
    finally:
        server.stop()


# Whether every cell the screen shows (of the map) is held, after the view settled.
SCREEN_HELD = """() => {
    const {cell, origin, bounds} = synk.hello.maps.main;
    const a = demo.toWorld(0, 0), b = demo.toWorld(innerWidth, innerHeight);
    const lo = (v, o, b0) => Math.max(Math.floor((v - o) / cell), Math.floor((b0 - o) / cell));
    const hi = (v, o, b1) => Math.min(Math.floor((v - o) / cell), Math.floor((b1 - o) / cell));
    for (let cx = lo(a.x, origin[0], bounds[0]); cx <= hi(b.x, origin[0], bounds[2]); cx++)
        for (let cy = lo(a.y, origin[1], bounds[1]); cy <= hi(b.y, origin[1], bounds[3]); cy++)
            if (!synk.held.has(`main:${cx}:${cy}`)) return false;
    return true;
}"""


async def zoom_until(page: Any, key: str, done: str, presses: int = 60) -> int:
    """Presses `key` (the page zooms about the centre) until `done` holds; how many presses."""
    for n in range(1, presses + 1):
        await page.keyboard.press(key)
        if await page.evaluate(done):
            return n
    raise AssertionError(f"{presses} presses of {key!r} and still not {done}")


@in_chromium
@pytest.mark.parametrize(
    "viewport", [h.VIEWPORT, {"width": 960, "height": 700}], ids=["1280x800", "960x700"]
)
async def test_zoomed_out_fully_the_page_says_only_the_middle_is_shown(
    demo_url: str, viewport: dict[str, int]
) -> None:
    async with h.chromium() as browser:
        page = await h.open_demo(browser, demo_url, viewport=viewport)
        note = page.locator("#clip-note")
        await h.wait_settled(page)
        assert await note.is_hidden(), "the note shows at the zoom the page opens with"
        assert await page.evaluate(SCREEN_HELD), "the page opens on a view it cannot hold"

        # -- all the way out: the screen spans more cells than a page may hold ------------
        await zoom_until(page, "-", "demo.view.scale === 0.03")
        await note.wait_for(state="visible")
        await h.wait_settled(page)
        max_keys = await page.evaluate("demo.maxKeys")
        assert max_keys == 256  # the server's default `max_keys`, from the hello reply
        assert await page.evaluate("synk.held.size") <= max_keys
        assert not await page.evaluate(SCREEN_HELD), "the note shows, yet every cell is held"
        text = " ".join((await note.text_content() or "").split())
        assert "Only the middle of this view is shown" in text
        assert "max_keys" in text and "at most 256" in text, text
        need = int((await page.text_content("#clip-need") or "0").replace(",", ""))
        assert need > max_keys, text

        # -- back in until the screen can be held: the note goes -----------------------------
        await zoom_until(page, "+", "!demo.clipped")
        await note.wait_for(state="hidden")
        await h.wait_settled(page)
        assert await page.evaluate(SCREEN_HELD), "the note went, but cells on screen are not held"
        assert page.errors == [], page.errors


@in_chromium
async def test_c_centres_on_your_avatar_after_panning_away(demo_url: str) -> None:
    async with h.chromium() as browser:
        page = await h.open_demo(browser, demo_url)
        await page.wait_for_function("() => !!synk.get(demo.avatarId)")
        home = await page.evaluate("({...synk.get(demo.avatarId).state})")

        # -- pan away with the mouse until the avatar's cell is no longer held --------------
        for _drag in range(6):
            await page.mouse.move(1000, 560)  # on the sea, clear of the minimap
            await page.mouse.down()
            await page.mouse.move(600, 340, steps=5)
            await page.mouse.move(150, 110, steps=5)
            await page.mouse.up()
            await h.wait_settled(page)
            if not await page.evaluate("!!synk.get(demo.avatarId)"):
                break
        else:
            raise AssertionError("six drags and the avatar's cell is still held")
        # The overlay still says where you are (it said "out of view"), and how to get there.
        await page.wait_for_function(
            "(want) => document.getElementById('s-you').textContent === want",
            arg=f"{home['x']:.0f}, {home['y']:.0f} · C",
        )

        # -- C: the view comes back to the avatar, which is held and drawn mid-screen -------
        await page.keyboard.press("c")
        await page.wait_for_function(
            "([x, y]) => demo.view.cx === x && demo.view.cy === y", arg=[home["x"], home["y"]]
        )
        await h.wait_settled(page)
        await page.wait_for_function("() => !!synk.get(demo.avatarId)")
        at = await page.evaluate(
            "(() => { const s = synk.get(demo.avatarId).state; return demo.toScreen(s.x, s.y); })()"
        )
        assert at["x"] == pytest.approx(h.VIEWPORT["width"] / 2, abs=1)
        assert at["y"] == pytest.approx(h.VIEWPORT["height"] / 2, abs=1)

        # -- and after steering it while away: the steer replies say where it went ----------
        await page.evaluate("demo.centreOn(1000, 1000)")
        await h.wait_settled(page)
        assert not await page.evaluate("!!synk.get(demo.avatarId)")
        await page.keyboard.press("ArrowRight")
        await page.wait_for_function("() => demo.steers >= 1 && !demo.steering")
        last = await page.evaluate("demo.lastSteer")
        assert last["x"] > home["x"] and last["y"] == home["y"], last
        await page.keyboard.press("C")
        await page.wait_for_function(
            "([x, y]) => demo.view.cx === x && demo.view.cy === y", arg=[last["x"], last["y"]]
        )
        await page.wait_for_function("() => !!synk.get(demo.avatarId)")
        assert page.errors == [], page.errors


@in_chromium
async def test_two_tabs_avatars_spawn_apart(demo_url: str) -> None:
    async with h.chromium() as browser:
        one = await h.open_demo(browser, demo_url)
        two = await h.open_demo(browser, demo_url, viewport={"width": 960, "height": 700})
        a = await one.evaluate("synk.call('hello')")
        b = await two.evaluate("synk.call('hello')")
        assert a["avatar"] != b["avatar"]
        assert a["at"] != b["at"], f"both avatars spawned at {a['at']}"
        # Each page sees the other's avatar where the server put it.
        for page, other in ((one, b), (two, a)):
            await page.wait_for_function("(id) => !!synk.get(id)", arg=other["avatar"])
            state = await page.evaluate("(id) => ({...synk.get(id).state})", other["avatar"])
            assert [state["x"], state["y"]] == other["at"]


def test_spawn_points_are_spread_and_fixed_per_session() -> None:
    settings = DemoSettings()
    size = settings.map_size
    sids = [f"session-{i}" for i in range(300)]
    points = [spawn_point(settings, sid) for sid in sids]
    assert points == [spawn_point(settings, sid) for sid in sids], "not the same for a session"
    assert len(set(points)) == len(points), "two sessions spawn at one point"
    xs, ys = zip(*points, strict=True)
    for v in (*xs, *ys):
        assert v == round(v) and 3 * size / 8 <= v <= 5 * size / 8
    # Spread over the square (a quarter of the map wide), not bunched in one corner of it.
    assert max(xs) - min(xs) > 0.9 * size / 4 and max(ys) - min(ys) > 0.9 * size / 4
    assert math.dist((sum(xs) / len(xs), sum(ys) / len(ys)), (size / 2, size / 2)) < size / 40
    # Another world seed, other points.
    other = DemoSettings(seed=settings.seed + 1)
    assert [spawn_point(other, sid) for sid in sids[:20]] != points[:20]
