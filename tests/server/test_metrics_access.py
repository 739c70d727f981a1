"""/metrics on a port of its own or behind a token, and scrapes kept out of the INFO access log."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from synkworld import ConfigError, Server
from tests.server.support import make_world

pytestmark = pytest.mark.timeout(60)


async def status(http: aiohttp.ClientSession, url: str, **kw: Any) -> int:
    async with http.get(url, **kw) as r:
        await r.read()
        return r.status


async def test_a_token_guards_metrics_and_nothing_else(serve: Any) -> None:
    async with serve(metrics_token="s3cret") as h:
        url = h.url + "/metrics"
        async with h.http.get(url) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
            assert "Authorization: Bearer" in await r.text()
        assert await status(h.http, url, headers={"Authorization": "Bearer wrong"}) == 401
        assert await status(h.http, url + "?token=s3cre") == 401
        async with h.http.get(url, headers={"Authorization": "Bearer s3cret"}) as r:
            assert r.status == 200
            assert "synkworld_tick " in await r.text()
        assert await status(h.http, url + "?token=s3cret") == 200
        assert await status(h.http, h.url + "/healthz") == 200
        assert (await h.connect()).hello["m"] == "hello"


async def test_a_metrics_port_serves_only_metrics_and_stops_with_the_server() -> None:
    server = Server(make_world(3), autotick=False, freeze_gc=False, metrics_port=0)
    async with aiohttp.ClientSession() as http:
        async with server.running("127.0.0.1", 0) as url:
            metrics_url = server.metrics_url
            assert metrics_url is not None and metrics_url.endswith("/metrics")
            assert metrics_url.startswith("http://127.0.0.1:")
            assert not metrics_url.startswith(url + "/")
            async with http.get(metrics_url) as r:
                assert r.status == 200
                assert "synkworld_objects 3.0" in await r.text()
            base = metrics_url.removesuffix("/metrics")
            for path in ("/healthz", "/ws", "/synkworld/client.js"):
                assert await status(http, base + path) == 404, path
            # Off the clients' port, where it would be public.
            assert await status(http, url + "/metrics") == 404
            assert await status(http, url + "/healthz") == 200
        with pytest.raises(aiohttp.ClientConnectorError):
            await status(http, metrics_url)


async def test_a_metrics_port_with_a_token_and_embedded() -> None:
    server = Server(make_world(), autotick=False, freeze_gc=False)
    server.configure(metrics_port=0, metrics_token="s3cret")
    app = web.Application()
    server.setup(app)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        # The application binds its own sites; the metrics port stays on loopback.
        assert server.metrics_url is not None
        assert server.metrics_url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as http:
            assert await status(http, server.metrics_url) == 401
            assert await status(http, server.metrics_url + "?token=s3cret") == 200
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"metrics_port": 70000}, "metrics_port must be a port"),
        ({"metrics_port": -1}, "metrics_port must be a port"),
        ({"metrics_token": ""}, "metrics_token is empty"),
        ({"metrics_token": "  "}, "metrics_token is empty"),
    ],
)
def test_metrics_options_are_checked(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Server(make_world(), **options)
    server = Server(make_world())
    with pytest.raises(ConfigError, match=match):
        server.configure(**options)


async def _access_records(
    caplog: pytest.LogCaptureFixture, n: int, timeout_s: float = 5.0
) -> list[logging.LogRecord]:
    # aiohttp writes the access line after the response: the client may see it first.
    for _ in range(int(timeout_s / 0.02)):
        records = [r for r in caplog.records if r.name == "aiohttp.access"]
        if len(records) >= n:
            return records
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {n} access log lines: {caplog.records}")


async def test_scrapes_are_logged_at_debug_other_requests_at_info(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "aiohttp.access")
    async with serve(metrics_token="s3cret") as h:
        for path in ("/healthz", "/metrics?token=s3cret", "/synkworld/client.js", "/nothing"):
            await status(h.http, h.url + path)
        c = await h.connect(params={"token": "a-client-token"})
        await c.ws.close()
        records = await _access_records(caplog, 5)
    levels = {r.getMessage().split('"')[1]: r.levelno for r in records}
    assert levels == {
        "GET /healthz HTTP/1.1": logging.DEBUG,
        "GET /metrics?token=- HTTP/1.1": logging.DEBUG,
        "GET /synkworld/client.js HTTP/1.1": logging.INFO,
        "GET /nothing HTTP/1.1": logging.INFO,
        "GET /ws?token=- HTTP/1.1": logging.INFO,
    }
    assert "s3cret" not in caplog.text and "a-client-token" not in caplog.text


async def test_at_info_scrapes_leave_no_line(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "aiohttp.access")
    async with serve() as h:
        for path in ("/healthz", "/metrics", "/healthz", "/synkworld/client.js"):
            await status(h.http, h.url + path)
        records = await _access_records(caplog, 1)
        await asyncio.sleep(0.1)
    assert [r.getMessage().split('"')[1] for r in records] == ["GET /synkworld/client.js HTTP/1.1"]
