"""Authentication, key authorization, call handlers and connection hooks."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from synkworld import BadArgsError, Call, ForbiddenError, RefusedError, Server, Session
from tests.server.support import Ship, make_world

pytestmark = pytest.mark.timeout(60)


def make_server() -> Server:
    server = Server(make_world(), autotick=False, freeze_gc=False)

    def authenticate(request: aiohttp.web.Request, token: str | None) -> Any:
        return {"user": token[5:]} if token and token.startswith("user-") else None

    def authorize(identity: Any, keys: list[str]) -> list[str]:
        return [
            k for k in keys if not k.startswith("private:") or k == f"private:{identity['user']}"
        ]

    server.authenticate = authenticate
    server.authorize_keys = authorize
    return server


async def test_refused_upgrade_gets_401(serve: Any) -> None:
    async with serve(make_server()) as h:
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await h.connect()
        assert e.value.status == 401
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await h.connect(params={"token": "guest"})
        c = await h.connect(params={"token": "user-ann"})
        await c.sync()
        c2 = await h.connect(headers={"Authorization": "Bearer user-bob"})
        await c2.sync()
        assert h.server.metrics.refused_total == 2


async def test_forbidden_keys_are_refused_and_nothing_changes(serve: Any) -> None:
    async with serve(make_server()) as h:
        c = await h.connect(params={"token": "user-ann"})
        await c.send({"m": "sub", "add": ["lobby", "private:ann"]})
        await c.sync()
        await c.send({"m": "sub", "add": ["private:bob", "other"]})
        err = await c.error()
        assert err["code"] == "forbidden"
        assert "private:bob" in err["msg"]
        h.step()
        frame = await c.recv()
        assert frame["sub"] == {"add": ["lobby", "private:ann"]}


async def test_handlers_see_identity_and_validated_args(serve: Any) -> None:
    server = make_server()
    seen: list[Any] = []

    @server.handler("spawn")
    def spawn(
        call: Call, x: float, y: float, hp: int = 10, note: str | None = None
    ) -> dict[str, Any]:
        seen.append((call.identity, call.name, x, y, hp, note))
        ship = call.world.create(Ship(x=x, y=y, hp=hp, captain=call.identity["user"]))
        return {"id": ship.id}

    @server.handler("steer")
    async def steer(call: Call, ship: str, x: float, y: float) -> None:
        target = call.world.get(ship)
        if target is None:
            raise BadArgsError(f"no ship {ship!r}")
        if target.captain != call.identity["user"]:  # type: ignore[attr-defined]
            raise ForbiddenError("that ship is not yours")
        call.world.move(target, x, y)

    @server.handler("crash")
    def crash(call: Call) -> None:
        raise ZeroDivisionError("oops")

    async with serve(server) as h:
        ann = await h.connect(params={"token": "user-ann"})
        bob = await h.connect(params={"token": "user-bob"})
        reply = await ann.call("spawn", {"x": 5, "y": 6}, call_id=1)
        assert reply["m"] == "reply"
        ship_id = reply["ok"]["id"]
        assert seen == [({"user": "ann"}, "spawn", 5.0, 6.0, 10, None)]
        assert (await ann.call("steer", {"ship": ship_id, "x": 50, "y": 50}, 2)) == {
            "m": "reply",
            "id": 2,
            "ok": None,
        }
        err = await bob.call("steer", {"ship": ship_id, "x": 0, "y": 0}, 3)
        assert (err["code"], err["id"]) == ("forbidden", 3)
        cases = [
            ("nope", {}, "no_handler"),
            ("spawn", {"x": 1}, "bad_args"),
            ("spawn", {"x": "1", "y": 2}, "bad_args"),
            ("spawn", {"x": 1, "y": 2, "speed": 3}, "bad_args"),
            ("spawn", {"x": 1, "y": 2, "hp": 1.5}, "bad_args"),
            ("steer", {"ship": "ghost", "x": 1, "y": 1}, "bad_args"),
            ("crash", {}, "handler_failed"),
        ]
        for i, (name, args, code) in enumerate(cases, start=10):
            err = await bob.call(name, args, i)
            assert (err["m"], err["code"], err["id"]) == ("error", code, i), err
        # The connection and the loop survive all of it.
        h.step()
        assert (await bob.call("spawn", {"x": 1, "y": 1}, 99))["m"] == "reply"
        assert h.world[ship_id].x == 50.0  # type: ignore[attr-defined]


async def test_connect_and_disconnect_hooks(serve: Any) -> None:
    server = Server(make_world(), autotick=False, freeze_gc=False)
    events: list[tuple[str, str]] = []

    def on_connect(session: Session) -> None:
        events.append(("connect", session.sid))

    async def on_disconnect(session: Session) -> None:
        events.append(("disconnect", session.sid))

    def broken(session: Session) -> None:
        raise RuntimeError("hook bug")

    server.on_connect = on_connect
    server.on_disconnect = on_disconnect
    async with serve(server) as h:
        c = await h.connect()
        sid = c.hello["sid"]
        await c.ws.close()
        for _ in range(100):
            if len(events) == 2:
                break
            await __import__("asyncio").sleep(0.01)
        assert events == [("connect", sid), ("disconnect", sid)]
        server.on_connect = broken  # a failing hook is logged; the client is still served
        c2 = await h.connect()
        await c2.sync()


@pytest.mark.parametrize(
    ("answer", "status"),
    [(None, 401), (False, 500), ("", 500), ({}, 500), (0, 500), ([], 500)],
)
async def test_authenticate_admits_only_an_identity(serve: Any, answer: Any, status: int) -> None:
    """Regression: a hook returning False, "" or {} admitted the client with it as identity."""
    server = Server(make_world(), autotick=False, freeze_gc=False)
    server.authenticate = lambda request, token: answer
    async with serve(server) as h:
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await h.connect()
        assert e.value.status == status
        assert not server.sessions


async def test_authenticate_refuses_by_raising_and_a_failing_hook_is_a_500(serve: Any) -> None:
    server = Server(make_world(), autotick=False, freeze_gc=False)

    async def authenticate(request: aiohttp.web.Request, token: str | None) -> Any:
        if token == "boom":
            raise KeyError("a bug in the hook")
        if token == "banned":
            raise RefusedError("banned", status=403)
        if token != "ok":
            raise RefusedError("who are you?")
        return {"user": "ok"}

    server.authenticate = authenticate
    async with serve(server) as h:
        for token, status in (("nope", 401), ("banned", 403), ("boom", 500)):
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await h.connect(params={"token": token})
            assert e.value.status == status, token
        c = await h.connect(params={"token": "ok"})
        await c.sync()
        assert server.metrics.refused_total == 2


# Every answer a hook can give is tested without a network in tests/test_client_protocol.py.
@pytest.mark.parametrize("fault", ["raises", "returns None", "async"])
async def test_a_faulty_authorize_keys_hook_answers_forbidden_and_the_connection_stays(
    serve: Any, fault: str
) -> None:
    """Regression: a hook that raised, returned None or was async closed the socket with 1006."""
    server = Server(make_world(), autotick=False, freeze_gc=False)

    def raising(identity: Any, keys: list[str]) -> list[str]:
        raise RuntimeError("a bug in the hook")

    async def allow_lobby(identity: Any, keys: list[str]) -> list[str]:
        await asyncio.sleep(0)
        return [k for k in keys if k == "lobby"]

    server.authorize_keys = {  # type: ignore[assignment]
        "raises": raising,
        "returns None": lambda identity, keys: None,
        "returns a str": lambda identity, keys: "lobby",
        "async": allow_lobby,
    }[fault]
    async with serve(server) as h:
        c = await h.connect()
        await c.send({"m": "sub", "add": ["lobby", "secret"]})
        err = await c.error()
        assert err["code"] == "forbidden"
        await c.sync()  # still connected
        if fault == "async":
            assert "secret" in err["msg"]
            await c.send({"m": "sub", "add": ["lobby"]})
            await c.sync()
            h.step()
            frame = await c.recv()
            assert frame["sub"] == {"add": ["lobby"]}
        else:
            assert "could not check" in err["msg"]


async def test_ids_and_values_the_world_refuses_are_bad_args_and_failures_log_once(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: an unknown id in a call was handler_failed with a traceback per call, which
    never counted against the client: a client could fill the log at the rate limit."""
    server = Server(make_world(), autotick=False, freeze_gc=False)

    @server.handler("get")
    def get(call: Call, ship: str) -> float:
        return call.world[ship].x  # type: ignore[attr-defined,no-any-return]

    @server.handler("teleport")
    def teleport(call: Call, x: float) -> None:
        call.world.create(Ship(x=x, y=0))

    @server.handler("crash")
    def crash(call: Call) -> None:
        raise ZeroDivisionError("oops")

    async with serve(server) as h:
        c = await h.connect()
        err = await c.call("get", {"ship": "ghost"}, 1)
        assert (err["code"], err["msg"]) == ("bad_args", "get: no object 'ghost' in the world")
        assert (await c.call("teleport", {"x": 1e300}, 2))["code"] == "bad_args"
        for i in range(10):
            assert (await c.call("crash", {}, 10 + i))["code"] == "handler_failed"
    assert caplog.text.count("handler 'crash' failed") == 1
