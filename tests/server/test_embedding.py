"""Embedding: `Server.setup(app)` on an aiohttp application of the user's, under their runner."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from synkworld import ConfigError, Server, TickChanges
from synkworld.store import SQLiteStore
from tests.server.support import Ship, WsClient, make_world

pytestmark = pytest.mark.timeout(60)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    """Serves `app` as its owner would: a plain AppRunner and TCPSite on a free loopback port."""
    runner = web.AppRunner(app, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def users_app(seen: list[str]) -> web.Application:
    """An application with a route and a middleware of its own, as a user would write it."""

    @web.middleware
    async def remember(request: web.Request, handler: Handler) -> web.StreamResponse:
        seen.append(request.path)
        response = await handler(request)
        if not response.prepared:
            response.headers["X-Users-Middleware"] = "ran"
        return response

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="the user's own route")

    app = web.Application(middlewares=[remember])
    app.router.add_get("/hello", hello)
    return app


async def test_a_users_app_ticks_serves_its_routes_and_shuts_down(tmp_path: Path) -> None:
    seen: list[str] = []
    app = users_app(seen)
    world = make_world()
    ship = world.create(Ship(x=150, y=150))
    server = Server(world, tick_rate_hz=50, freeze_gc=False)
    store = SQLiteStore(tmp_path / "world.sqlite3")
    server.persist(store)

    @server.simulation
    def wear(dt: float) -> None:
        ship.hp += 1

    hooks: list[int] = []

    async def hook() -> None:
        hooks.append(world.tick)

    server.on_shutdown(hook)
    server.setup(app)
    async with aiohttp.ClientSession() as http:
        async with serve_app(app) as url:
            async with http.get(url + "/hello") as r:
                assert (r.status, await r.text()) == (200, "the user's own route")
                assert r.headers["X-Users-Middleware"] == "ran"
            for path in ("/healthz", "/metrics", "/synkworld/client.js"):
                async with http.get(url + path) as r:
                    assert r.status == 200, path
                    assert r.headers["X-Users-Middleware"] == "ran"
            c = WsClient(await http.ws_connect(url + "/ws"))
            c.hello = await c.recv()
            assert c.hello["m"] == "hello"
            await c.send({"m": "view", "rect": [120, 120, 180, 180], "margin": 0})
            # The simulation runs in the server's own tick loop: hp keeps rising on the wire.
            await c.recv_until(lambda f: f["m"] == "tick" and ship.id in c.ref.view())
            first = c.ref.objs[ship.id].s["hp"]
            await c.recv_until(lambda f: f["m"] == "tick" and c.ref.objs[ship.id].s["hp"] > first)
            assert seen.count("/ws") == 1
        # The application's shutdown closed the client with a closing handshake, then
        # its cleanup ran the hooks and flushed the store.
        msg = await c.ws.receive(timeout=5)
        while msg.type is aiohttp.WSMsgType.TEXT:
            msg = await c.ws.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
    stopped_at = world.tick
    assert hooks == [stopped_at]
    await asyncio.sleep(0.1)
    assert world.tick == stopped_at
    async with SQLiteStore(tmp_path / "world.sqlite3") as check:
        docs = {d["_id"]: d for d in await check.load()}
    assert docs[ship.id]["hp"] == ship.hp > 10


async def test_make_app_under_any_runner_ticks_and_accepts_clients() -> None:
    """Regression: `web.run_app(server.make_app())` never ticked, and /ws answered 503."""
    world = make_world(20)
    server = Server(world, tick_rate_hz=50, freeze_gc=False)
    async with aiohttp.ClientSession() as http, serve_app(server.make_app()) as url:
        c = WsClient(await http.ws_connect(url + "/ws"))
        c.hello = await c.recv()
        await c.send({"m": "view", "rect": [0, 0, 999, 999], "margin": 0})
        frame = await c.recv_until(lambda f: f["m"] == "tick" and bool(f.get("snap")))
        assert frame["n"] > c.hello["tick"]
        assert len(c.ref.view()) == 20


async def test_one_application_per_server() -> None:
    server = Server(make_world(), freeze_gc=False)
    first, second = web.Application(), web.Application()
    server.setup(first)
    server.setup(second)
    async with serve_app(first):
        with pytest.raises(ConfigError, match="one application per server"):
            async with serve_app(second):
                pass
        with pytest.raises(ConfigError, match="runs already"):
            server.setup(web.Application())
        with pytest.raises(ConfigError, match="cannot be reconfigured"):
            server.configure(compression=True)


async def test_a_tick_loop_that_dies_is_raised_at_cleanup_after_the_last_flush(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = make_world()
    ship = world.create(Ship(x=150, y=150))
    server = Server(world, tick_rate_hz=50, freeze_gc=False)
    server.persist(SQLiteStore(tmp_path / "world.sqlite3"))

    def breaks(changes: TickChanges) -> None:
        if changes.tick == 3:
            ship.hp = 99  # written by the flush at shutdown, never by a tick
            raise RuntimeError("a listener's bug")

    server.on_changes(breaks)
    app = web.Application()
    server.setup(app)

    async def serve_until_the_tick_dies() -> None:
        async with aiohttp.ClientSession() as http, serve_app(app) as url:
            for _ in range(100):
                if "the tick loop stopped" in caplog.text:
                    break
                await asyncio.sleep(0.02)
            assert any(
                r.levelno == logging.CRITICAL and r.message == "the tick loop stopped"
                for r in caplog.records
            )
            # A server that no longer ticks takes no clients.
            async with http.get(url + "/ws") as r:
                assert r.status == 503

    with pytest.raises(RuntimeError, match="a listener's bug"):
        await serve_until_the_tick_dies()
    async with SQLiteStore(tmp_path / "world.sqlite3") as check:
        docs = {d["_id"]: d for d in await check.load()}
    assert docs[ship.id]["hp"] == 99


async def test_running_shares_the_lifetime_and_reports_a_dead_tick_loop_on_exit() -> None:
    world = make_world()
    server = Server(world, tick_rate_hz=50, freeze_gc=False)

    def breaks(changes: TickChanges) -> None:
        raise RuntimeError("broken from the first tick")

    server.on_changes(breaks)

    async def serve_until_ws_refuses() -> None:
        async with server.running() as url, aiohttp.ClientSession() as http:
            for _ in range(100):
                async with http.get(url + "/ws") as r:
                    if r.status == 503:
                        return
                await asyncio.sleep(0.02)
            raise AssertionError("/ws kept accepting after the tick loop died")

    with pytest.raises(RuntimeError, match="broken from the first tick"):
        await serve_until_ws_refuses()


async def test_running_on_a_port_in_use_fails_before_anything_starts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: the startup ticked (and logged "stopped at tick 1") before the bind failed."""
    caplog.set_level(logging.INFO, "synkworld.transport")
    server = Server(make_world(), tick_rate_hz=50, freeze_gc=False)
    stepped: list[float] = []
    server.simulation(stepped.append)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="address already in use"):
            async with server.running("127.0.0.1", taken.getsockname()[1]):
                pass
    assert stepped == []
    assert "stopped at tick" not in caplog.text
    # Nothing started, so nothing is left running: the server can still serve.
    async with (
        aiohttp.ClientSession() as http,
        server.running() as url,
        http.get(url + "/healthz") as r,
    ):
        assert r.status == 200
