"""Regression: HTTP connections that never sent a request, or sent it a byte at a time, were
never timed out; 600 of them under a 512 fd limit locked out new clients and /healthz."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from synkworld import Limits, Server
from synkworld.testing import start_process
from tests.server.support import WsClient, make_world

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


async def _open_idle(url: str, n: int, *, source: str = "127.0.0.1") -> list[socket.socket]:
    """`n` connected sockets that send nothing.

    Opened a few dozen at a time: past the listen backlog, the kernel drops
    handshakes and the client retries them a second or more later.
    """
    host, port = url.removeprefix("http://").split(":")
    out = []
    for i in range(n):
        s = socket.socket()
        s.bind((source, 0))
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect((host, int(port)))
        out.append(s)
        if i % 50 == 49:
            await asyncio.sleep(0.02)
    return out


def _closed_by_server(s: socket.socket) -> bool:
    """True when the server closed the socket (EOF or reset); reads any 503 it sent first."""
    try:
        while True:
            data = s.recv(4096)
            if not data:
                return True
    except BlockingIOError:
        return False
    except (ConnectionError, OSError):
        return True


@contextlib.contextmanager
def _closing(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


async def _wait_all_closed(socks: list[socket.socket], timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if all(_closed_by_server(s) for s in socks):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"{sum(not _closed_by_server(s) for s in socks)} sockets still open after {timeout_s}s"
    )


async def _real_client_works(url: str, http: aiohttp.ClientSession) -> None:
    timeout = aiohttp.ClientTimeout(total=5)
    async with http.get(url + "/healthz", timeout=timeout) as r:
        assert r.status == 200
    c = WsClient(await http.ws_connect(url + "/ws", timeout=aiohttp.ClientWSTimeout(ws_close=5)))
    c.hello = await c.recv()
    assert c.hello["m"] == "hello"
    await c.sync()
    await c.ws.close()


async def test_idle_and_trickling_connections_are_closed_and_real_clients_still_connect() -> None:
    limits = Limits(header_timeout_s=1.0)
    server = Server(make_world(5), limits=limits, autotick=False, freeze_gc=False)
    async with aiohttp.ClientSession() as http, server.running() as url:
        with (
            _closing(await _open_idle(url, 600)) as idle,
            _closing(await _open_idle(url, 20)) as trickling,
        ):
            await asyncio.sleep(0.2)
            await _real_client_works(url, http)
            sent = 0
            started = time.monotonic()
            # One byte of a request every 0.1 s: never a complete request line.
            while time.monotonic() - started < 0.8:
                for s in trickling:
                    with contextlib.suppress(OSError):
                        s.send(b"GET /healthz HTTP/1.1\r\n"[sent % 23 : sent % 23 + 1])
                sent += 1
                await asyncio.sleep(0.1)
            await _real_client_works(url, http)
            took = await _wait_all_closed([*idle, *trickling], timeout_s=5.0)
            assert time.monotonic() - started + took < 1.0 + 3.0
        stats = server._site.guard.statistics()  # type: ignore[union-attr]
        assert stats.timed_out >= 620
        await _real_client_works(url, http)


async def test_a_full_server_makes_room_by_closing_the_oldest_connection_without_a_request() -> (
    None
):
    limits = Limits(max_connections=100)
    server = Server(make_world(5), limits=limits, autotick=False, freeze_gc=False)
    async with aiohttp.ClientSession() as http, server.running() as url:
        with _closing(await _open_idle(url, 300)) as idle:
            await asyncio.sleep(0.3)
            await _real_client_works(url, http)
            # The first 200 made room for the next ones, oldest first.
            await _wait_all_closed(idle[:200], timeout_s=3.0)
            assert not any(_closed_by_server(s) for s in idle[-50:])
        assert server._site.guard.statistics().evicted >= 200  # type: ignore[union-attr]


async def test_one_address_is_held_to_its_limit_and_others_still_connect() -> None:
    limits = Limits(max_connections_per_address=50)
    server = Server(make_world(5), limits=limits, autotick=False, freeze_gc=False)
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as other, server.running() as url:
        with _closing(await _open_idle(url, 120)) as idle:
            await asyncio.sleep(0.3)
            refused = [s for s in idle if _closed_by_server(s)]
            assert len(refused) == 70
            await _real_client_works(url, other)
        assert server._site.guard.statistics().refused == 70  # type: ignore[union-attr]


def _fd_limit_512() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))


async def test_600_idle_sockets_under_a_512_fd_limit_leave_the_server_usable(
    tmp_path: Path,
) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("wb")
    proc = start_process(
        [
            sys.executable,
            "-m",
            "synkworld",
            "serve",
            "examples.minimal_server:make_server",
            "--port",
            str(port),
        ],
        before_exec=_fd_limit_512,
        cwd=ROOT,
        stdout=log,
        stderr=log,
    )
    try:
        async with aiohttp.ClientSession() as http:
            await _wait_healthy(url, http)
            with _closing(await _open_idle(url, 600)):
                await asyncio.sleep(1.0)
                accepted = 0
                for _ in range(20):
                    await _real_client_works(url, http)
                    accepted += 1
                assert accepted == 20
                print(f"\n600 idle sockets open under a 512 fd limit: {accepted}/20 clients served")
                await asyncio.sleep(2.0)
            assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert text.count("\n") < 50, text[-3000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_healthy(url: str, http: aiohttp.ClientSession) -> None:
    for _ in range(300):
        with contextlib.suppress(aiohttp.ClientConnectionError):
            async with http.get(url + "/healthz") as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise AssertionError("no /healthz")
