"""The Origin check of /ws upgrades (cross-site WebSocket hijacking), over real sockets."""

from __future__ import annotations

import base64
import logging
import os
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from synkworld import ConfigError, Server
from synkworld._origins import OriginCheck, parse_origin
from tests.server.support import Harness, make_world

pytestmark = pytest.mark.timeout(60)


async def upgrade(h: Harness, origin: str | None, **headers: str) -> int:
    """The status of a WebSocket opening handshake from `origin` (101: connected, then closed)."""
    try:
        ws = await h.http.ws_connect(h.url + "/ws", origin=origin, headers=headers)
    except aiohttp.WSServerHandshakeError as e:
        return e.status
    await ws.close()
    return 101


async def refusal(h: Harness, origin: str) -> tuple[int, str]:
    """A refused opening handshake (RFC 6455 4.1), read as the plain HTTP response it gets."""
    hs = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
        "Origin": origin,
    }
    async with h.http.get(h.url + "/ws", headers=hs) as r:
        assert r.status != 101, origin
        return r.status, await r.text()


def own_origin(h: Harness) -> str:
    return h.url  # http://127.0.0.1:<port>, what a page this server served sends


async def test_by_default_clients_without_origin_and_pages_of_this_host_connect(
    serve: Any,
) -> None:
    async with serve() as h:
        assert await upgrade(h, None) == 101
        assert await upgrade(h, own_origin(h)) == 101
        # Host and port decide, as the browser wrote them: a page served over
        # TLS by a proxy in front of this port is the same server.
        port = h.url.rsplit(":", 1)[1]
        assert await upgrade(h, f"https://127.0.0.1:{port}") == 101
        c = await h.connect(origin=own_origin(h))  # aiohttp's client, with an Origin
        assert c.hello["m"] == "hello"


async def test_by_default_other_pages_are_refused_with_403_saying_how_to_allow_them(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "synkworld.transport")
    async with serve() as h:
        port = int(h.url.rsplit(":", 1)[1])
        for origin in (
            "http://evil.example",
            f"http://localhost:{port}",  # another host name is another origin
            f"http://127.0.0.1:{port + 1}",
            "http://127.0.0.1",
            "null",
            "chrome-extension://abcdefgh",
            "not an origin",
        ):
            status, body = await refusal(h, origin)
            assert status == 403, origin
            assert body.count("\n") == 1 and body.endswith("\n"), body
            assert f"origin {origin} may not open a WebSocket here" in body
            assert f"allowed_origins=[{origin!r}]" in body
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await h.http.ws_connect(h.url + "/ws", origin="http://evil.example")
        assert e.value.status == 403
        async with h.http.get(h.url + "/metrics") as r:
            families = {f.name: f for f in text_string_to_metric_families(await r.text())}
        assert families["synkworld_origins_refused"].samples[0].value == 8
    refusals = [r for r in caplog.records if r.getMessage().startswith("refused a WebSocket")]
    # Once per interval: someone else's page decides how often this happens.
    assert len(refusals) == 1
    assert refusals[0].levelno == logging.INFO
    assert "'http://evil.example'" in refusals[0].getMessage()


async def test_a_proxy_that_rewrites_host_is_trusted_for_the_host_it_forwards(serve: Any) -> None:
    async with serve() as h:
        behind = {"Host": "10.0.0.7:8080"}
        assert await upgrade(h, "https://game.example", **behind) == 403
        forwarded = {**behind, "X-Forwarded-Host": "game.example"}
        assert await upgrade(h, "https://game.example", **forwarded) == 101
        rfc7239 = {**behind, "Forwarded": 'for=1.2.3.4;host="game.example:8443";proto=https'}
        assert await upgrade(h, "https://game.example:8443", **rfc7239) == 101
        assert await upgrade(h, "https://game.example", **rfc7239) == 403


async def test_a_list_allows_exactly_those_origins(serve: Any) -> None:
    async with serve(allowed_origins=["https://game.example", "http://localhost:3000/"]) as h:
        assert await upgrade(h, "https://game.example") == 101
        assert await upgrade(h, "https://GAME.example:443") == 101
        assert await upgrade(h, "http://localhost:3000") == 101
        assert await upgrade(h, None) == 101
        for origin in (
            "http://game.example",  # another scheme
            "https://game.example:8443",  # another port
            "https://www.game.example",
            own_origin(h),  # the list replaces the same-host default
        ):
            assert await upgrade(h, origin) == 403, origin


async def test_star_allows_any_origin_and_configure_sets_the_list(serve: Any) -> None:
    async with serve(allowed_origins=["*"]) as h:
        assert await upgrade(h, "http://evil.example") == 101
        assert await upgrade(h, "null") == 101
    server = Server(make_world(), autotick=False, freeze_gc=False)
    server.configure(allowed_origins=["https://game.example"])
    async with serve(server) as h:
        assert await upgrade(h, "https://game.example") == 101
        assert await upgrade(h, own_origin(h)) == 403


async def test_a_refused_origin_never_reaches_the_authentication_hook(serve: Any) -> None:
    asked: list[str | None] = []
    server = Server(make_world(), autotick=False, freeze_gc=False)

    def authenticate(request: Any, token: str | None) -> str:
        asked.append(request.headers.get("Origin"))
        return "someone"

    server.authenticate = authenticate
    async with serve(server) as h:
        assert await upgrade(h, "http://evil.example") == 403
        assert await upgrade(h, own_origin(h)) == 101
    assert asked == [own_origin(h)]


@pytest.mark.parametrize(
    "entry",
    [
        "game.example",
        "https://game.example/play",
        "https://game.example?x=1",
        "ftp://a.example",
        "https://user@game.example",
        "",
    ],
)
def test_entries_that_are_not_origins_are_refused_at_construction(entry: str) -> None:
    with pytest.raises(ConfigError, match="not an origin"):
        Server(make_world(), allowed_origins=[entry])


def test_a_lone_string_is_not_a_list_of_origins() -> None:
    with pytest.raises(ConfigError, match="not a string"):
        Server(make_world(), allowed_origins="https://game.example")


def test_origins_compare_by_scheme_host_and_port() -> None:
    assert parse_origin("https://Game.Example") == ("https", "game.example", 443)
    assert parse_origin("http://[::1]:8080") == ("http", "::1", 8080)
    assert parse_origin("https://bücher.example") == ("https", "xn--bcher-kva.example", 443)
    assert parse_origin("http://a.example:99999") is None
    assert parse_origin("null") is None
    check = OriginCheck()
    assert check.allows("http://[::1]:8080", ["[::1]:8080"])
    assert check.allows("https://game.example", ["game.example"])
    assert not check.allows("https://game.example", ["game.example:8443"])
    assert not check.allows("http://game.example:8080", ["game.example"])
    assert not check.allows("http://game.example", [])
