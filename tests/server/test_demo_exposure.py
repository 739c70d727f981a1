"""The demo server in-process: what it exposes over HTTP, its avatars, its durable pins."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from synkworld.demo.app import make_demo_server
from synkworld.demo.world import Avatar, DemoSettings, Marker
from synkworld.store import SQLiteStore
from tests.server.support import WsClient

pytestmark = pytest.mark.timeout(60)

SMALL = DemoSettings(agents=50, map_size=4000, cell_size=500)


async def test_only_the_client_is_served_from_web(tmp_path: Path) -> None:
    """Regression: /web/ served the whole web/ folder (package.json, node_modules, tests)."""
    server = await make_demo_server(SMALL, SQLiteStore(tmp_path / "w.sqlite3"))
    server.freeze_gc = False
    async with aiohttp.ClientSession() as http, server.running() as url:
        for path in (
            "/web/package.json",
            "/web/package-lock.json",
            "/web/node_modules/.package-lock.json",
            "/web/test/client.test.js",
            "/web/synkworld.js",
        ):
            async with http.get(url + path) as r:
                assert r.status == 404, path
        async with http.get(url + "/synkworld/client.js") as r:
            assert r.status == 200
            assert r.content_type == "text/javascript"
            assert "export class Client" in await r.text()
            etag = r.headers["ETag"]
            assert "max-age" in r.headers["Cache-Control"]
        async with http.get(url + "/synkworld/client.js", headers={"If-None-Match": etag}) as r:
            assert r.status == 304
        async with http.get(url + "/synkworld/client.d.ts") as r:
            assert r.status == 200


async def test_connections_make_no_stored_avatars(tmp_path: Path) -> None:
    """Regression: every connection, authenticated or not, made a stored avatar."""
    db = tmp_path / "w.sqlite3"
    server = await make_demo_server(SMALL, SQLiteStore(db))
    server.freeze_gc = False
    async with aiohttp.ClientSession() as http, server.running() as url:
        clients = []
        for _ in range(20):
            c = WsClient(await http.ws_connect(url + "/ws"))
            c.hello = await c.recv()
            clients.append(c)
        await clients[0].sync()
        assert not any(isinstance(o, Avatar) for o in server.world)
        reply = await clients[0].call("hello", {})
        assert reply["ok"]["avatar"]
        assert sum(isinstance(o, Avatar) for o in server.world) == 1
        await server.world.flush()
        async with SQLiteStore(db) as reader:
            assert not [d for d in await reader.load() if d["t"] == "avatar"]
        for c in clients:
            await c.ws.close()


async def test_a_pin_is_in_the_store_when_its_drop_is_acknowledged(tmp_path: Path) -> None:
    """Regression: pins acknowledged up to 1.25 s before a kill -9 were lost."""
    db = tmp_path / "w.sqlite3"
    server = await make_demo_server(SMALL, SQLiteStore(db))
    server.freeze_gc = False
    async with aiohttp.ClientSession() as http, server.running() as url:
        c = WsClient(await http.ws_connect(url + "/ws"))
        c.hello = await c.recv()
        async with SQLiteStore(db) as reader:
            for i in range(5):
                reply = await c.call("drop_marker", {"x": 100 + i, "y": 200, "label": f"p{i}"}, i)
                marker_id = reply["ok"]["id"]
                stored = {d["_id"]: d for d in await reader.load()}
                assert stored[marker_id]["label"] == f"p{i}"
                assert stored[marker_id]["t"] == Marker.synk_type
        await c.ws.close()
