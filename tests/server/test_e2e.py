"""End to end: the protocol over real WebSockets on loopback, checked by reference clients."""

from __future__ import annotations

import random
from typing import Any

import pytest

from synkworld import Limits, Server
from synkworld.testing import world_truth
from tests.server.support import Harness, Post, Ship, make_world

pytestmark = pytest.mark.timeout(120)


def check(h: Harness) -> None:
    for c in h.clients:
        session = h.server.sessions[c.hello["sid"]]
        assert c.ref.held == session.held
        assert c.ref.view() == world_truth(h.world, session.held)


async def test_hello(serve: Any) -> None:
    async with serve() as h:
        h.step(3)
        c = await h.connect()
        assert c.hello == {
            "m": "hello",
            "proto": 1,
            "sid": c.hello["sid"],
            "tick": 3,
            "rate": 20,
            "maps": {
                "main": {
                    "cell": 100,
                    "origin": [0, 0],
                    "bounds": [0, 0, 1000, 1000],
                    "pos": ["x", "y"],
                    "prec": 1,
                }
            },
        }
        assert len(c.hello["sid"]) >= 12


async def test_view_and_sub(serve: Any) -> None:
    async with serve() as h:
        ship = h.world.create(Ship(x=150, y=150))
        post = h.world.create(Post(text="hi"), key="room")
        h.step()
        c = await h.connect()
        await c.send({"m": "view", "map": "main", "rect": [120, 120, 180, 180], "margin": 0})
        await c.send({"m": "sub", "add": ["room"]})
        await c.sync()
        h.step()
        frame = await c.recv()
        assert frame["sub"] == {"add": ["main:1:1", "room"]}
        assert {e["id"] for s in frame["snap"] for e in s["objs"]} == {ship.id, post.id}
        await c.send({"m": "sub", "rem": ["room"]})
        await c.sync()
        h.step()
        assert (await c.recv())["sub"] == {"rem": ["room"]}
        check(h)


async def test_move_seen_by_holders_of_one_side_the_other_both_and_neither(serve: Any) -> None:
    async with serve() as h:
        ship = h.world.create(Ship(x=150, y=150))  # main:1:1, then to main:2:1
        h.step()
        views = {
            "old": [120, 120, 180, 180],
            "new": [220, 120, 280, 180],
            "both": [120, 120, 280, 180],
            "neither": [820, 820, 880, 880],
        }
        clients = {}
        for name, rect in views.items():
            clients[name] = c = await h.connect()
            await c.send({"m": "view", "rect": rect, "margin": 0})
            await c.sync()
        h.step()
        for c in clients.values():
            await c.sync()
        h.world.move(ship, 250, 150)
        h.step()
        for c in clients.values():
            await c.sync()
        old_frame = clients["old"].frames[-2]
        assert old_frame["b"] == [
            {
                "k": "main:1:1",
                "mod": [{"id": ship.id, "v": 2, "d": {"x": 250.0, "y": 150.0}, "to": "main:2:1"}],
            }
        ]
        new_frame = clients["new"].frames[-2]
        assert new_frame["b"] == [
            {
                "k": "main:2:1",
                "add": [
                    {
                        "id": ship.id,
                        "t": "srv-ship",
                        "v": 2,
                        "s": {"hp": 10, "captain": "", "x": 250.0, "y": 150.0},
                        "from": "main:1:1",
                    }
                ],
            }
        ]
        assert len(clients["both"].frames[-2]["b"]) == 2
        assert clients["neither"].frames[-2]["m"] == "pong"
        assert ship.id not in clients["old"].ref.objs
        assert clients["old"].ref.teardowns == [ship.id]
        assert clients["both"].ref.teardowns == []
        assert ship.id in clients["new"].ref.objs
        check(h)


async def test_subscription_change_applies_after_batches_over_the_wire(serve: Any) -> None:
    async with serve() as h:
        ship = h.world.create(Ship(x=150, y=150))
        h.step()
        c = await h.connect()
        await c.send({"m": "view", "rect": [150, 150, 150, 150], "margin": 0})
        await c.sync()
        h.step()
        await c.sync()
        # In one tick the ship walks to main:2:1 and the client pans there.
        h.world.move(ship, 250, 150)
        await c.send({"m": "view", "rect": [250, 150, 250, 150], "margin": 0})
        await c.sync()
        h.step()
        frame = await c.recv()
        assert frame["b"][0]["mod"][0]["to"] == "main:2:1"
        assert frame["sub"] == {"add": ["main:2:1"], "rem": ["main:1:1"]}
        assert c.ref.teardowns == []
        check(h)


@pytest.mark.parametrize("versions", ["v1", "v1 and v2"])
async def test_randomized_run_reference_clients_equal_server_truth(
    serve: Any, versions: str
) -> None:
    rng = random.Random(2024)
    # Each client sends some 150 messages in a few seconds: more than the default
    # rate limit allows, whose refusals would leave pings unanswered. Rate
    # limiting has tests of its own (test_bad_input.py).
    limits = Limits(max_keys=400, rate_limit_per_s=10_000, rate_limit_burst=10_000)
    async with serve(limits=limits) as h:
        world = h.world
        for _ in range(150):
            world.create(Ship(x=rng.uniform(0, 999), y=rng.uniform(0, 999)))
        for i in range(3):
            world.create(Post(text=f"p{i}"), key=f"room{i}")
        h.step()
        mixed = versions == "v1 and v2"
        clients = [await h.connect(version=2 if mixed and i % 2 else 1) for i in range(20)]
        for c in clients:
            await c.send({"m": "view", "rect": _rect(rng), "margin": rng.randint(0, 2)})
            await c.sync()
        for tick in range(60):
            ships = [o for o in world if isinstance(o, Ship)]
            for s in rng.sample(ships, min(len(ships), 60)):
                if rng.random() < 0.8:
                    world.move(
                        s,
                        min(999, max(0, s.x + rng.uniform(-30, 30))),
                        min(999, max(0, s.y + rng.uniform(-30, 30))),
                    )
                else:
                    world.move(s, rng.uniform(0, 999), rng.uniform(0, 999))
            for s in rng.sample(ships, 5):
                s.hp = rng.randint(0, 99)
            for s in rng.sample(ships, 2):
                world.delete(s)
            for _ in range(2):
                world.create(Ship(x=rng.uniform(0, 999), y=rng.uniform(0, 999)))
            for c in rng.sample(clients, 5):
                if rng.random() < 0.7:
                    await c.send({"m": "view", "rect": _rect(rng), "margin": rng.randint(0, 2)})
                else:
                    await c.send(
                        {
                            "m": "sub",
                            "add": [f"room{rng.randint(0, 2)}"],
                            "rem": [f"room{rng.randint(0, 2)}"] if tick % 3 else [],
                        }
                    )
            for c in clients:
                await c.sync()
            h.step()
            for c in clients:
                await c.sync()
            check(h)
            # Clients of the two versions that hold the same keys hold the same objects.
            by_keys: dict[frozenset[str], Any] = {}
            for c in clients:
                view = by_keys.setdefault(frozenset(c.ref.held), c.ref.view())
                assert c.ref.view() == view
        assert all(not c.ref.errors or c.ref.errors[0]["code"] == "bad_message" for c in clients)
        assert sum(len(c.ref.objs) for c in clients) > 100


def _rect(rng: random.Random) -> list[float]:
    x, y = rng.uniform(-100, 1000), rng.uniform(-100, 1000)
    return [x, y, x + rng.uniform(0, 300), y + rng.uniform(0, 250)]


async def test_healthz_and_metrics_parse_as_prometheus_text(serve: Any) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    async with serve() as h:
        c = await h.connect()
        await c.send("nope")
        await c.error()
        h.world.create(Ship(x=1, y=1))
        h.step(2)
        async with h.http.get(h.url + "/healthz") as r:
            assert r.status == 200
            assert await r.json() == {"ok": True, "tick": 2, "clients": 1}
        async with h.http.get(h.url + "/metrics") as r:
            text = await r.text()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["synkworld_tick"].samples[0].value == 2
        assert families["synkworld_clients"].samples[0].value == 1
        assert families["synkworld_tick_duration_seconds"].type == "histogram"
        count = [
            s
            for s in families["synkworld_tick_duration_seconds"].samples
            if s.name.endswith("_count")
        ]
        assert count[0].value == 2
        errors = {s.labels["code"]: s.value for s in families["synkworld_errors"].samples}
        assert errors == {"bad_json": 1}
        for name in (
            "synkworld_frames_dropped",
            "synkworld_resyncs",
            "synkworld_ticks_behind",
            "synkworld_frames_sent",
            "synkworld_bytes_sent",
        ):
            assert families[name].type == "counter"


async def test_graceful_shutdown_closes_clients_with_going_away() -> None:
    import aiohttp

    server = Server(make_world(10), freeze_gc=False)
    async with aiohttp.ClientSession() as http:
        async with server.running() as url:
            ws = await http.ws_connect(url + "/ws")
            await ws.receive()
            ticks_before = server.world.tick
        msg = await ws.receive(timeout=5)
        while msg.type is aiohttp.WSMsgType.TEXT:
            msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == 1001
        assert server.world.tick >= ticks_before
        with pytest.raises(aiohttp.ClientConnectorError):
            await http.ws_connect(url + "/ws")


async def test_metrics_carry_the_process_and_each_handlers_calls(serve: Any) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    server = Server(make_world(), autotick=False, freeze_gc=False)

    @server.handler("echo")
    def echo(call: Any, x: int) -> int:
        return x

    async with serve(server) as h:
        c = await h.connect()
        for i in range(3):
            await c.call("echo", {"x": i}, i)
        await c.call("echo", {"x": "no"}, 9)
        for i in range(5):
            await c.call(f"random-{i}", {}, 10 + i)  # never a label of its own
        async with h.http.get(h.url + "/metrics") as r:
            families = {f.name: f for f in text_string_to_metric_families(await r.text())}
    calls = {
        (s.labels["handler"], s.labels["outcome"]): s.value
        for s in families["synkworld_call_duration_seconds"].samples
        if s.name.endswith("_count")
    }
    assert calls == {("echo", "ok"): 3, ("echo", "bad_args"): 1, ("(unknown)", "no_handler"): 5}
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    assert families["synkworld_http_connections"].samples[0].value >= 1
