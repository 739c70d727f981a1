"""Fixtures of the server tests; what they use is in tests/server/support.py."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from synkworld import Server
from tests.server.support import Harness, make_world


@pytest.fixture
def serve() -> Callable[..., contextlib.AbstractAsyncContextManager[Harness]]:
    @contextlib.asynccontextmanager
    async def run(server: Server | None = None, **kw: Any) -> AsyncIterator[Harness]:
        if server is None:
            kw.setdefault("autotick", False)
            server = Server(make_world(), freeze_gc=False, **kw)
        async with aiohttp.ClientSession() as http, server.running("127.0.0.1", 0) as url:
            h = Harness(server, url, http)
            try:
                yield h
            finally:
                for c in h.clients:
                    await c.ws.close()

    return run
