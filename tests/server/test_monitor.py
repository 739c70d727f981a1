"""/monitor and /monitor/data over real loopback HTTP: off by default, access, the figures."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from synkworld import ConfigError, RefusedError, Server, TickLoop
from synkworld.store import MemoryStore
from synkworld.testing import FakeClock
from tests.server.support import Harness, Ship, make_world

pytestmark = pytest.mark.timeout(60)

TOKEN = "monitor-s3cret"


def make_server(monitor: bool | str, clock: FakeClock | None = None) -> Server:
    world = make_world()
    loop = TickLoop(world, clock=clock or FakeClock())
    return Server(world, loop=loop, autotick=False, freeze_gc=False, monitor=monitor)


async def get(h: Harness, path: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    async with h.http.get(h.url + path, **kw) as r:
        return r.status, dict(r.headers), await r.read()


async def test_the_monitor_is_off_by_default(serve: Any) -> None:
    async with serve() as h:
        assert h.server.monitor is None
        for path in ("/monitor", "/monitor/data"):
            status, _, _ = await get(h, path)
            assert status == 404, path


async def test_a_token_of_its_own_admits_only_that_token(serve: Any) -> None:
    async with serve(make_server(TOKEN)) as h:
        for path in ("/monitor", "/monitor/data"):
            status, headers, _ = await get(h, path)
            assert status == 401, path
            assert headers["WWW-Authenticate"].startswith("Bearer")
            status, _, _ = await get(h, path, params={"token": "guess"})
            assert status == 403, path
            status, _, _ = await get(h, path, headers={"Authorization": "Bearer guess"})
            assert status == 403, path

        status, headers, body = await get(h, "/monitor", params={"token": TOKEN})
        assert status == 200
        assert headers["Content-Type"].startswith("text/html")
        assert b"synkworld monitor" in body
        csp = headers["Content-Security-Policy"]
        assert "script-src 'sha256-" in csp and "connect-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["Cache-Control"] == "no-store"

        status, headers, body = await get(
            h, "/monitor/data", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        assert headers["Cache-Control"] == "no-store"


async def test_true_puts_the_monitor_behind_the_authenticate_hook(serve: Any) -> None:
    server = make_server(True)

    def authenticate(request: aiohttp.web.Request, token: str | None) -> Any:
        if token == "admin":
            return {"user": "admin"}
        if token == "player":
            raise RefusedError("players may not see the monitor", status=403)
        return None

    server.authenticate = authenticate
    async with serve(server) as h:
        assert (await get(h, "/monitor/data"))[0] == 401
        assert (await get(h, "/monitor/data", params={"token": "player"}))[0] == 403
        assert (await get(h, "/monitor/data", params={"token": "admin"}))[0] == 200
        status, _, body = await get(h, "/monitor", headers={"Authorization": "Bearer admin"})
        assert status == 200 and b"<canvas" in body


def test_true_without_a_hook_is_refused_when_the_application_is_made() -> None:
    with pytest.raises(ConfigError, match="authenticate"):
        make_server(True).make_app()


def test_an_empty_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="empty"):
        make_server("  ")


async def test_configure_turns_the_monitor_on(serve: Any) -> None:
    server = make_server(False)
    server.configure(monitor=TOKEN)
    async with serve(server) as h:
        assert (await get(h, "/monitor/data", params={"token": TOKEN}))[0] == 200


async def test_the_data_has_the_live_figures(serve: Any) -> None:
    clock = FakeClock()
    server = make_server(TOKEN, clock)
    server.persist(MemoryStore())
    async with serve(server) as h:
        ship = h.world.create(Ship(x=50, y=50))  # main:0:0
        near, also_near, far = await h.connect(), await h.connect(), await h.connect()
        for c in (near, also_near):
            await c.send({"m": "view", "map": "main", "rect": [10, 10, 90, 90], "margin": 0})
        await far.send({"m": "view", "map": "main", "rect": [510, 510, 590, 590], "margin": 0})
        for c in (near, also_near, far):
            await c.sync()
        h.step()  # the clients take their keys
        for i in range(1, 13):
            ship.hp = i
            clock.advance(0.5)
            h.step()
        for c in (near, also_near):
            await c.recv_until(lambda f: f["m"] == "tick" and f["n"] == h.world.tick)

        async with h.http.get(h.url + "/monitor/data", params={"token": TOKEN}) as r:
            assert r.status == 200
            d = await r.json()
        assert d["tick"] == h.world.tick == 13
        assert d["clients"] == 3 and d["clients_lagging"] == 0
        assert d["keys_held"] == 2 and d["subscriptions"] == 3
        assert d["frames_dropped"] == 0 and d["resyncs"] == 0
        assert set(d["phases_ms"]) == {"simulate", "commit", "bus", "frames"}
        # One point per second of the fake clock: 12 ticks, 0.5 s apart.
        assert len(d["history"]) == 6
        assert all(p["ticks"] == 2 for p in d["history"])
        assert d["store"] is not None and d["store"]["pending_objects"] >= 0
        hot = d["cells"]["by_bytes"]
        assert [c["key"] for c in hot] == ["main:0:0"]
        assert hot[0]["subscribers"] == 2 and hot[0]["bytes_per_s"] > 0
        assert [(c["key"], c["subscribers"]) for c in d["cells"]["by_subscribers"]] == [
            ("main:0:0", 2),
            ("main:5:5", 1),
        ]

        await far.ws.close()
        await also_near.ws.close()
        for _ in range(1000):  # until the server has seen both closes
            if len(h.server.loop.sessions) == 1:
                break
            await asyncio.sleep(0.01)
        async with h.http.get(h.url + "/monitor/data", params={"token": TOKEN}) as r:
            d = await r.json()
        assert d["clients"] == 1 and d["subscriptions"] == 1 and d["keys_held"] == 1


async def test_metrics_carry_the_top_k_cells_only(serve: Any) -> None:
    async with serve() as h:
        for i in range(100):
            h.world.create(Ship(x=(i % 10) * 100 + 50, y=(i // 10) * 100 + 50))  # every cell
        c = await h.connect()
        await c.send({"m": "view", "map": "main", "rect": [0, 0, 999, 999], "margin": 0})
        await c.sync()
        h.step()
        for ship in list(h.world):
            assert isinstance(ship, Ship)
            ship.hp += 1
        h.step()
        async with h.http.get(h.url + "/metrics") as r:
            text = await r.text()
        found = {f.name: f for f in text_string_to_metric_families(text)}
        by_bytes = found["synkworld_cell_bytes_per_second"].samples
        subscribers = found["synkworld_cell_subscribers"].samples
        assert len(subscribers) == 10  # 100 cells are held; the top 10 are reported
        assert {s.value for s in subscribers} == {1.0}
        assert len(by_bytes) == 10 and all(s.value > 0 for s in by_bytes)
        assert found["synkworld_keys_subscribed"].samples[0].value == 100
        assert found["synkworld_subscriptions"].samples[0].value == 100
