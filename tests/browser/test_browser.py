"""The JavaScript library in headless Chromium against a server in its own process.

The page (tests/browser/page/) imports the library from the server's static files,
connects, and is panned with `setView`; its cache must equal the server's truth for
its held keys (the app's "truth" call) whenever it is sampled. Then the server
process is killed and started again on the same port: the page must reconnect, keep
the objects the new session still holds (same instances, no teardown), and end up
with a cache equal to the new process's truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from synkworld.testing import start_process
from tests.browser.app import make_map
from tests.browser.demo_helpers import CHROMIUM, chromium

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"headless Chromium is not installed at {CHROMIUM} (apt-get install chromium)",
    ),
]
PANS = [
    [150.0, 150.0, 550.0, 450.0],
    [420.0, 260.0, 820.0, 560.0],
    [905.5, 1210.0, 1305.5, 1510.0],
    [700.0, 650.0, 1100.0, 950.0],
]
AFTER_RESTART = [1250.0, 300.0, 1650.0, 600.0]
CHANNEL = "lobby"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`python -m synkworld serve tests.browser.app:make_server` on a fixed port."""

    def __init__(self, port: int, log_dir: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        log = (self.log_dir / f"server-{self.starts}.log").open("wb")
        try:
            self.proc = start_process(
                [
                    sys.executable,
                    "-m",
                    "synkworld",
                    "serve",
                    "tests.browser.app:make_server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        await self.wait_healthy()

    async def wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited with {self.proc.returncode}: {self.log()}")
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(self.url + "/healthz") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise AssertionError(f"server did not answer /healthz: {self.log()}")

    def kill(self) -> None:
        """SIGKILL: no close frames, no shutdown; the page sees the connection drop."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def log(self) -> str:
        texts = [p.read_text(errors="replace") for p in sorted(self.log_dir.glob("server-*.log"))]
        return "\n".join(texts)[-4000:]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(free_port(), tmp_path)
    try:
        yield proc
    finally:
        proc.kill()


@pytest.fixture
async def page(server: ServerProcess) -> AsyncIterator[Any]:
    async with chromium() as browser:
        context = await browser.new_context()
        yield await context.new_page()


def expected_keys(rect: list[float], margin: int = 1) -> set[str]:
    return {*make_map().keys_in_rect((rect[0], rect[1], rect[2], rect[3]), margin), CHANNEL}


def as_rows(objects: dict[str, list[Any]]) -> dict[str, tuple[Any, ...]]:
    """id -> (type, version, state, key), without the page's instance serial."""
    return {i: tuple(o[:4]) for i, o in objects.items()}


async def sample(page: Any) -> dict[str, Any]:
    """The truth and the cache at the same tick, checked to agree (when settled)."""
    s: dict[str, Any] = await page.evaluate("synkTest.sample()")
    cache, truth = s["cache"], s["truth"]
    if cache["state"] == "ready" and cache["stale"] == 0:
        where = f"tick {truth['tick']}"
        assert cache["held"] == truth["held"], where
        assert as_rows(cache["objects"]) == as_rows(truth["objects"]), where
        assert all(o[4] is not None for o in cache["objects"].values()), where
    return s


async def settle(page: Any, keys: set[str], timeout: float = 15.0) -> dict[str, Any]:
    """Samples until the page holds exactly `keys`, settled; every sample must agree."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = await page.evaluate("synk.state")
        if state == "ready":
            last = await sample(page)
            cache = last["cache"]
            if cache["stale"] == 0 and set(cache["held"]) == keys:
                return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"the page did not settle on {sorted(keys)}; last sample {last}")


async def test_page_pans_and_survives_a_server_restart(server: ServerProcess, page: Any) -> None:
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    await server.start()
    await page.goto(server.url + "/")
    await page.wait_for_function("window.synk && window.synk.state === 'ready'", timeout=15_000)
    await page.evaluate(f"synk.subscribe({CHANNEL!r})")

    # Pans: each view replaces the grid keys; the channel stays.
    checked = 0
    for rect in PANS:
        await page.evaluate("r => synk.setView('main', r, 1)", rect)
        s = await settle(page, expected_keys(rect))
        checked += 1
        # A few more samples while the world moves: the cache keeps up tick by tick.
        for _ in range(3):
            await asyncio.sleep(0.07)
            s = await sample(page)
        assert len(s["cache"]["objects"]) > 20
    before = s["cache"]["objects"]
    assert any(o[0] == "brw-sign" for o in before.values())

    # Kill the server process and start it again on the same port.
    teardowns_before = await page.evaluate("synkTest.log.teardowns.length")
    server.kill()
    await page.wait_for_function("synk.state !== 'ready'", timeout=10_000)
    closes = await page.evaluate("synkTest.log.closes")
    assert closes and all(c["reconnectInMs"] is not None for c in closes)  # failed retries too
    # Objects stay (stale) while the client is away.
    assert await page.evaluate("synk.cache.size") == closes[0]["size"] > 0
    await server.start()
    await page.wait_for_function("synkTest.log.hellos >= 2", timeout=15_000)
    s = await settle(page, expected_keys(PANS[-1]))
    after = s["cache"]["objects"]

    # The same view on the same (replayed) world: every steady ship and sign the page
    # held before is held again, as the same instance, and none was torn down.
    steady = {i for i, o in before.items() if not (o[0] == "brw-ship" and o[2]["roams"])}
    assert steady <= set(after), sorted(steady - set(after))[:10]
    assert sorted(i for i in steady if after[i][4] != before[i][4]) == []
    teardowns = await page.evaluate("synkTest.log.teardowns")
    gone = [t for t in teardowns[teardowns_before:] if t[0] in steady]
    assert gone == []
    kept = [i for i in before if i in after and after[i][4] == before[i][4]]

    # The new session works like the first: one more pan.
    await page.evaluate("r => synk.setView('main', r, 1)", AFTER_RESTART)
    await settle(page, expected_keys(AFTER_RESTART))
    await sample(page)

    log = await page.evaluate("synkTest.log")
    assert page_errors == []
    assert log["hellos"] == 2
    # While the server was down the socket reported errors; nothing else went wrong.
    assert [e for e in log["errors"] if not e.startswith("socket:")] == []
    assert log["badLerps"] == []
    assert log["frames"] > 0
    # The ships' teardown hook ran once for each ship that left, after its rem event.
    assert log["shipTeardowns"] == [t[:3] for t in log["teardowns"] if t[3] == "brw-ship"]
    reasons = {t[1] for t in log["teardowns"]}
    assert reasons <= {"unsubscribed", "moved_out", "session", "resync"}, reasons
    print(
        f"pans checked {checked + 1}, kept across the restart {len(kept)} of {len(before)}, "
        f"teardowns {len(log['teardowns'])}, frames drawn {log['frames']}"
    )
