"""The demo server as a subprocess, headless Chromium, and the page's test hooks.

Also makes the screenshot in docs/:

    .venv/bin/python -m tests.browser.demo_helpers docs/demo.png
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO, Any

import aiohttp

from synkworld.testing import start_process

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DemoServer:
    """`python -m synkworld.demo` in a subprocess; its output goes to a log file."""

    def __init__(
        self,
        db: Path,
        log: Path,
        *,
        port: int | None = None,
        agents: int = 1500,
        args: Sequence[str] = (),
    ) -> None:
        self.db = db
        self.log_path = log
        self.port = port or free_port()
        self.agents = agents
        self.args = list(args)  # more command-line options (a cluster's --redis, --node)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    async def start(self, timeout_s: float = 30.0) -> None:
        """Starts the server and waits until /healthz answers."""
        assert self.proc is None, "already running"
        self._log = self.log_path.open("ab")
        cmd = [
            sys.executable,
            "-m",
            "synkworld.demo",
            "--port",
            str(self.port),
            "--db",
            str(self.db),
            "--agents",
            str(self.agents),
            "--test-hooks",
            *self.args,
        ]
        self.proc = start_process(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the demo server exited early:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(f"{self.url}/healthz") as r:
                        if r.status == 200 and (await r.json()).get("ok"):
                            return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no /healthz after {timeout_s}s:\n{self.log_tail()}")
                await asyncio.sleep(0.1)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """Stops the server with SIGTERM (it flushes its store); kills it if it hangs."""
        self.signal()
        return self.wait(timeout_s)

    def signal(self) -> None:
        """Sends SIGTERM (several servers are stopped at once: signal all, then wait)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float = 15.0) -> int | None:
        """Waits for the exit after `signal()`; kills the server if it hangs."""
        proc, self.proc = self.proc, None
        code = None
        if proc is not None:
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """Headless Chromium from the system (Playwright never downloads a browser here)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield browser
        finally:
            await browser.close()


async def open_demo(browser: Any, url: str, *, viewport: dict[str, int] | None = None) -> Any:
    """A new page on the demo, once it knows its avatar and holds some agents."""
    page = await browser.new_page(viewport=viewport or VIEWPORT)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    await page.goto(f"{url}/", timeout=45_000)
    await page.wait_for_function(
        """() => window.demo && demo.avatarId && synk.state === "ready"
             && [...synk.cache.objects()].filter((o) => o.type === "agent").length >= 30""",
        timeout=30_000,
    )
    return page


async def wait_settled(page: Any, *, quiet_ms: int = 400, timeout_ms: int = 15_000) -> None:
    """Waits until the held keys match the requested view and stop changing."""
    await page.wait_for_function(
        """(quietMs) => {
            const held = JSON.stringify([...synk.held].sort());
            const w = (window.__settle ??= {held: "", since: performance.now()});
            if (held !== w.held || synk.state !== "ready" || synk.cache.staleCount > 0) {
                w.held = held;
                w.since = performance.now();
                return false;
            }
            const r = demo.requested, m = synk.hello.maps.main, b = m.bounds, c = m.cell;
            // The view's centre, inside the map: panned to an edge, it lies on the
            // edge, whose cell beyond does not exist.
            const x = Math.min(Math.max((r[0] + r[2]) / 2, b[0]), b[2] - c / 2);
            const y = Math.min(Math.max((r[1] + r[3]) / 2, b[1]), b[3] - c / 2);
            const centre = `main:${Math.floor(x / c)}:${Math.floor(y / c)}`;
            return synk.held.has(centre) && performance.now() - w.since >= quietMs;
        }""",
        arg=quiet_ms,
        timeout=timeout_ms,
        polling=50,
    )
    await page.evaluate("delete window.__settle")


TRUTH_AND_DUMP = """async () => {
    const truth = await synk.call("truth");
    // The reply comes after the frames of its tick: dump now, before another frame is applied.
    return {truth, mine: demo.dump()};
}"""


async def truth_and_dump(page: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The server's truth for the page's session and the page's cache, at the same instant."""
    r = await page.evaluate(TRUTH_AND_DUMP)
    return r["truth"], r["mine"]


def differences(truth: dict[str, Any], mine: dict[str, Any], limit: int = 8) -> list[str]:
    """What differs between the server's truth and a page's dump (empty when equal)."""
    out = []
    if set(truth["held"]) != set(mine["held"]):
        a, b = set(truth["held"]), set(mine["held"])
        out.append(f"held: only server {sorted(a - b)[:5]}, only page {sorted(b - a)[:5]}")
    t, m = truth["objs"], mine["objs"]
    for oid in sorted(set(t) - set(m))[:limit]:
        out.append(f"{oid}: missing in the page (server has {t[oid]})")
    for oid in sorted(set(m) - set(t))[:limit]:
        out.append(f"{oid}: in the page only ({m[oid]})")
    for oid in sorted(set(t) & set(m)):
        if t[oid] != m[oid]:
            out.append(f"{oid}: server {t[oid]} != page {m[oid]}")
            if len(out) >= limit * 3:
                break
    return out


PIXELS = """async (b64) => {
    const img = new Image();
    img.src = "data:image/png;base64," + b64;
    await img.decode();
    const c = document.createElement("canvas");
    c.width = img.width;
    c.height = img.height;
    const g = c.getContext("2d", {willReadFrequently: true});
    g.drawImage(img, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    const counts = new Map();
    let colourful = 0;
    for (let i = 0; i < d.length; i += 4) {
        const rgb = (d[i] << 16) | (d[i + 1] << 8) | d[i + 2];
        counts.set(rgb, (counts.get(rgb) ?? 0) + 1);
        const hi = Math.max(d[i], d[i + 1], d[i + 2]);
        const lo = Math.min(d[i], d[i + 1], d[i + 2]);
        if (hi - lo > 90) colourful++;
    }
    let bg = 0, bgCount = 0;
    for (const [rgb, n] of counts) if (n > bgCount) { bg = rgb; bgCount = n; }
    const total = c.width * c.height;
    return {
        width: c.width,
        height: c.height,
        distinct: counts.size,
        colourful,
        background: "#" + bg.toString(16).padStart(6, "0"),
        nonBackground: (total - bgCount) / total,
    };
}"""


async def pixel_stats(page: Any, png: bytes) -> dict[str, Any]:
    """Decodes a PNG in the page and counts its colours (no image library needed)."""
    return dict(await page.evaluate(PIXELS, base64.b64encode(png).decode()))


FREE_SPOT = """(at) => {
    // A point of open sea near `at` (default: the middle of the screen), no object within 40 px.
    const [cx, cy] = at ?? [innerWidth / 2, innerHeight / 2];
    const near = (x, y) => {
        if (demo.pick(x, y)) return true;
        for (const o of synk.cache.objects()) {
            const p = demo.toScreen(o.state.x, o.state.y);
            if (Math.hypot(p.x - x, p.y - y) < 40) return true;
        }
        return false;
    };
    for (let ring = 0; ring < 12; ring++)
        for (let k = 0; k < 16; k++) {
            const a = (k / 16) * 2 * Math.PI;
            const x = Math.round(cx + Math.cos(a) * ring * 22);
            const y = Math.round(cy + Math.sin(a) * ring * 18);
            if (!near(x, y)) return [x, y];
        }
    return null;
}"""


STEER_TO = """async ([x, y]) => {
    // Steers this page's avatar to (x, y) in the largest steps the server allows.
    let at = await synk.call("steer", {avatar: demo.avatarId, dx: 0, dy: 0});
    while (Math.hypot(x - at.x, y - at.y) >= 1) {
        const dx = x - at.x, dy = y - at.y, k = Math.min(1, 190 / Math.hypot(dx, dy));
        at = await synk.call("steer", {avatar: demo.avatarId, dx: dx * k, dy: dy * k});
        await new Promise((ok) => setTimeout(ok, 30));
    }
}"""


NEAREST_AGENT = """([x, y]) => {
    // The agent drawn nearest to a screen point: [its screen x, y, its id].
    let best = null, bd = Infinity;
    const now = performance.now();
    for (const o of synk.cache.objects()) {
        if (o.type !== "agent") continue;
        const at = o.lerp(now), p = demo.toScreen(at.x, at.y), d = Math.hypot(p.x - x, p.y - y);
        if (d < bd) { bd = d; best = [p.x, p.y, o.id]; }
    }
    return best;
}"""


async def make_docs_screenshot(out: Path, *, agents: int = 3000) -> None:
    """Stages a lively moment of the demo (two players, pins, a selection) and saves it."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        server = DemoServer(Path(tmp) / "demo.sqlite3", Path(tmp) / "server.log", agents=agents)
        await server.start()
        try:
            async with chromium() as browser:
                other = await open_demo(browser, server.url, viewport={"width": 900, "height": 700})
                page = await open_demo(browser, server.url)
                # Both players sail east towards the Lighthouse; the camera follows.
                await other.evaluate(STEER_TO, [15900, 9450])
                await page.evaluate(STEER_TO, [15250, 10350])
                await page.evaluate("demo.centreOn(15700, 10000)")
                await wait_settled(page)
                for at in ((330, 560), (1000, 610), (560, 170)):
                    spot = await page.evaluate(FREE_SPOT, list(at))
                    if spot:
                        await page.mouse.click(*spot)
                        await page.wait_for_timeout(300)
                for key in ("Shift+ArrowUp", "Shift+ArrowRight"):
                    await page.keyboard.press(key)
                    await page.wait_for_timeout(250)
                # On a busy machine, wait a little for the numbers to settle.
                with contextlib.suppress(Exception):
                    await page.wait_for_function(
                        "synk.latencyMs < 60 && demo.meter.rate().frames >= 18", timeout=30_000
                    )
                agent = (await page.evaluate(NEAREST_AGENT, [930, 470]))[2]
                await page.evaluate("(id) => demo.select(id)", agent)
                await page.wait_for_timeout(1200)
                await page.screenshot(path=str(out))
        finally:
            server.stop()


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "demo.png")
    asyncio.run(make_docs_screenshot(target, agents=int(os.environ.get("AGENTS", "3000"))))
    print(f"{target}: {target.stat().st_size // 1024} KiB")
