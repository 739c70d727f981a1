"""Protocol v2 over real WebSockets: negotiation, a move seen by holders of each side,
bad input, and v1 untouched beside it (docs/protocol-v2.md)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from tests.server.support import Post, Ship
from tests.server.test_e2e import check

pytestmark = pytest.mark.timeout(60)


async def test_a_client_that_offers_v2_gets_binary_frames_and_the_type_table(serve: Any) -> None:
    async with serve() as h:
        h.step(2)
        c = await h.connect(version=2)
        assert c.ws.protocol == "synkworld.v2"
        assert c.raw[0][0] == 3  # a MessagePack message
        hello = c.hello
        assert hello["proto"] == 2 and hello["tick"] == 2 and hello["rate"] == 20
        assert hello["maps"]["main"]["num"] == 0 and hello["maps"]["main"]["prec"] == 1
        ship = next(d for d in hello["types"] if d[1] == "srv-ship")
        assert ship[2] == ["x", "y", "hp", "captain"] and ship[3] == [0, 1]


@pytest.mark.parametrize("offer", [(), ("synkworld.v1",), ("chat", "synkworld.v1")])
async def test_a_client_that_does_not_offer_v2_gets_v1_exactly(serve: Any, offer: Any) -> None:
    async with serve() as h:
        c = await h.connect(protocols=offer)
        assert c.ws.protocol == ("synkworld.v1" if offer else None)
        assert c.hello["proto"] == 1 and "types" not in c.hello


async def test_a_move_seen_by_holders_of_one_side_the_other_both_and_neither(
    serve: Any,
) -> None:
    async with serve() as h:
        ship = h.world.create(Ship(x=150, y=150, captain="ann"))  # main:1:1, then to main:2:1
        h.step()
        views = {
            "old": [120, 120, 180, 180],
            "new": [220, 120, 280, 180],
            "both": [120, 120, 280, 180],
            "neither": [820, 820, 880, 880],
        }
        clients = {}
        for name, rect in views.items():
            clients[name] = c = await h.connect(version=2)
            await c.send({"m": "view", "rect": rect, "margin": 0})
            await c.sync()
        h.step()
        for c in clients.values():
            await c.sync()
        instance = clients["both"].ref.objs[ship.id].instance
        sizes = {name: len(c.raw) for name, c in clients.items()}
        h.world.move(ship, 250, 150)
        h.step()
        for c in clients.values():
            await c.sync()
        old_frame = clients["old"].raw[sizes["old"]]
        # tick frame, tick 3, batches; one batch: key main:1:1, head (a leave), slot 0,
        # to main:2:1. No state: the old cell's holders learn nothing after it left.
        assert old_frame == bytes.fromhex("01 03 08 01 010202 02 01 00 010402")
        assert ship.id not in clients["old"].ref.objs
        assert clients["old"].ref.teardowns == [ship.id]
        assert clients["both"].ref.teardowns == []
        assert clients["both"].ref.objs[ship.id].instance == instance
        assert clients["new"].ref.objs[ship.id].s == {
            "x": 250.0,
            "y": 150.0,
            "hp": 10,
            "captain": "ann",
        }
        assert clients["neither"].frames[-2]["m"] == "pong"
        check(h)


async def test_v1_and_v2_clients_of_one_server_hold_the_same_after_every_tick(
    serve: Any,
) -> None:
    async with serve() as h:
        world = h.world
        ships = [
            world.create(Ship(x=10.0 + 37 * i % 900, y=20.0 + 53 * i % 900)) for i in range(80)
        ]
        world.create(Post(text="hi"), key="room")
        h.step()
        pairs = []
        for rect in ([0, 0, 300, 300], [250, 250, 700, 600]):
            pair = [await h.connect(version=1), await h.connect(version=2)]
            for c in pair:
                await c.send({"m": "view", "rect": rect, "margin": 1})
                await c.send({"m": "sub", "add": ["room"]})
                await c.sync()
            pairs.append(pair)
        for tick in range(30):
            for i, s in enumerate(ships):
                s.x = min(999.0, max(0.0, s.x + (i % 7 - 3) * 4.0))
                if i % 11 == tick % 11:
                    s.hp -= 1
            h.step()
            for pair in pairs:
                for c in pair:
                    await c.sync()
                assert pair[0].ref.view() == pair[1].ref.view()
            check(h)


@pytest.mark.parametrize(
    ("frame", "code"),
    [("{nope", "bad_json"), ('{"m":"dance"}', "unknown_message"), (b"\x01\x02", "bad_json")],
)
async def test_bad_input_gets_an_error_message_and_the_connection_stays(
    serve: Any, frame: str | bytes, code: str
) -> None:
    async with serve() as h:
        c = await h.connect(version=2)
        await c.send(frame)
        error = await c.error()
        assert error["code"] == code and error["id"] is None and error["msg"]
        assert msgpack.unpackb(c.raw[-1][1:])["m"] == "error"
        await c.sync()  # still served
        reply = await c.call("nothing", {}, call_id=7)
        assert reply == {
            "m": "error",
            "id": 7,
            "code": "no_handler",
            "msg": reply["msg"],
        }


async def test_a_process_of_a_cluster_does_not_select_v2(serve: Any) -> None:
    from synkworld import GridMap, Server, World
    from synkworld.bus import MemoryHub

    server = Server(World(GridMap(cell_size=100, bounds=(0, 0, 1000, 1000))), autotick=False)
    server.join_cluster(MemoryHub().backend("p0"))
    async with serve(server) as h:
        c = await h.connect(protocols=("synkworld.v2", "synkworld.v1"))
        assert c.ws.protocol == "synkworld.v1"
        assert c.hello["proto"] == 1
