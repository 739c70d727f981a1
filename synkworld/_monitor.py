"""The monitor: a live page of the server's figures at /monitor, and its JSON at /monitor/data.

Off unless `Server(monitor=...)` says otherwise; its routes then do not exist
(404). `monitor="a token"` admits requests that carry that token (the `token`
query parameter, which the page passes on, or `Authorization: Bearer`);
`monitor=True` admits whoever the server's `authenticate` hook admits, with the
hook's refusals (401, 403), and needs a hook. The page is one file with no
dependencies (`_web/monitor.html`) that polls the data every second: clients,
held keys, the tick's phases over the last minute (sampled here, once a second,
from every tick), frames dropped, resyncs, the store's write lag and the
hottest cells (`TickLoop.cells`).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Protocol

import orjson
from aiohttp import web

from synkworld._cell_counters import CellFigures
from synkworld._errors import ConfigError
from synkworld._metrics import ServerMetrics
from synkworld._persistence import Persistence
from synkworld._tick import TickLoop

__all__ = ["DATA_PATH", "PAGE_PATH", "Monitor", "MonitoredServer"]

log = logging.getLogger("synkworld.transport")

PAGE_PATH = "/monitor"
DATA_PATH = "/monitor/data"
_SAMPLE_EVERY_S = 1.0
_NO_STORE = {"Cache-Control": "no-store"}


class MonitoredServer(Protocol):
    """What the monitor reads from its server."""

    @property
    def loop(self) -> TickLoop: ...

    @property
    def metrics(self) -> ServerMetrics: ...

    @property
    def persistence(self) -> Persistence | None: ...

    @property
    def authenticate(self) -> Callable[..., Any] | None: ...


@dataclass(frozen=True, slots=True)
class _Page:
    body: bytes
    headers: dict[str, str]


@cache
def _page_file() -> _Page:
    """The page's bytes, and a content security policy that allows its own inline parts only."""
    body = (resources.files("synkworld") / "_web" / "monitor.html").read_bytes()
    text = body.decode()

    def hashes(tag: str) -> str:
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL)
        return " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
            for s in found
        )

    csp = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return _Page(
        body,
        {
            **_NO_STORE,
            "Content-Security-Policy": csp,
            # The token may be in the page's address: it must not leave in a Referer.
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )


class Monitor:
    """The /monitor routes of one server, their access rule, and the last minute of ticks."""

    def __init__(
        self,
        server: MonitoredServer,
        access: bool | str,
        *,
        identify: Callable[[web.Request], Awaitable[Any]],
        token_of: Callable[[web.Request], str | None],
        history_s: int = 60,
    ) -> None:
        if access is False:
            raise ConfigError("a Monitor is made only when the monitor is on")
        if isinstance(access, str) and not access.strip():
            raise ConfigError("the monitor's token must not be empty (True: the authenticate hook)")
        self.server = server
        self.token = access if isinstance(access, str) else None
        self._identify = identify
        self._token_of = token_of
        self.history_s = history_s
        self._history: deque[dict[str, float]] = deque(maxlen=history_s)
        # ticks, simulate, commit, bus, frames, the slowest tick: since the sample began
        self._acc = [0.0] * 6
        self._sample_started: float | None = None
        self._sampling = False

    # -- the routes ------------------------------------------------------------------

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Adds /monitor and /monitor/data to the server's routes; the sampling starts."""
        if self.token is None and self.server.authenticate is None:
            raise ConfigError(
                "monitor=True puts /monitor behind the server's authenticate hook, and it has "
                "none: set server.authenticate, or give the monitor a token of its own"
            )
        router.add_get(PAGE_PATH, self._page)
        router.add_get(DATA_PATH, self._data)
        if not self._sampling:
            # From here on, not at construction: a monitor replaced by `configure`
            # before the server runs never costs the tick anything.
            self._sampling = True
            self.server.loop.on_tick_done(self._tick_done)

    async def _page(self, request: web.Request) -> web.Response:
        await self._admit(request)
        page = _page_file()
        return web.Response(
            body=page.body, content_type="text/html", charset="utf-8", headers=page.headers
        )

    async def _data(self, request: web.Request) -> web.Response:
        await self._admit(request)
        return web.Response(
            body=orjson.dumps(self.data()), content_type="application/json", headers=_NO_STORE
        )

    async def _admit(self, request: web.Request) -> None:
        """Returns if the request may see the monitor; raises the HTTP refusal otherwise."""
        if self.token is not None:
            given = self._token_of(request)
            if given is None:
                raise web.HTTPUnauthorized(
                    text="the monitor needs its token",
                    headers={"WWW-Authenticate": 'Bearer realm="synkworld monitor"'},
                )
            if not secrets.compare_digest(given.encode(), self.token.encode()):
                raise web.HTTPForbidden(text="wrong monitor token")
            return
        if self.server.authenticate is None:
            # The hook was removed after the routes were added: never open by accident.
            log.error("monitor=True and no authenticate hook: /monitor is refused")
            raise web.HTTPForbidden(text="the monitor has no way to authenticate")
        await self._identify(request)  # raises the hook's 401 or 403

    # -- the figures -------------------------------------------------------------------

    def _tick_done(self, duration_s: float) -> None:
        # Every tick adds to the current second's sums; a second's mean is one point.
        loop = self.server.loop
        now = loop.clock()
        started = self._sample_started
        if started is None:
            self._sample_started = now  # the first point is of the ticks after this one
            return
        ph = loop.last_phases
        acc = self._acc
        acc[0] += 1
        acc[1] += ph.simulate_s
        acc[2] += ph.commit_s
        acc[3] += ph.bus_s
        acc[4] += ph.frames_s
        if duration_s > acc[5]:
            acc[5] = duration_s
        if now - started >= _SAMPLE_EVERY_S:
            n = acc[0]
            self._history.append(
                {
                    "t": now,
                    "ticks": n,
                    "simulate_ms": acc[1] / n * 1e3,
                    "commit_ms": acc[2] / n * 1e3,
                    "bus_ms": acc[3] / n * 1e3,
                    "frames_ms": acc[4] / n * 1e3,
                    "max_ms": acc[5] * 1e3,
                }
            )
            self._acc = [0.0] * 6
            self._sample_started = now

    def data(self) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready values."""
        loop = self.server.loop
        t = loop.statistics()
        ph = loop.last_phases
        cells = t.cells
        persistence = self.server.persistence
        store: dict[str, Any] | None = None
        if persistence is not None:
            w = persistence.statistics()
            store = {
                "pending_objects": w.pending_objects,
                "write_lag_s": w.oldest_pending_age_s or 0.0,
                "write_lag_ticks": w.write_lag_ticks,
                "writes_done": w.writes_done,
                "failed_attempts": w.failed_attempts,
                "last_error": w.last_error,
                "over_limit": w.over_limit,
            }
        return {
            "now": loop.clock(),
            "tick": t.tick,
            "tick_rate_hz": t.tick_rate_hz,
            "clients": t.sessions,
            "clients_lagging": sum(1 for s in loop.sessions.values() if s.lagging),
            "keys_held": cells.keys_held,
            "subscriptions": cells.subscriptions,
            "frames_dropped": t.frames_dropped,
            "resyncs": t.resyncs,
            "closed_slow": self.server.metrics.closed_slow_total,
            "ticks_behind": t.ticks_behind,
            "last_tick_ms": t.last_tick_duration_s * 1e3,
            "phases_ms": {
                "simulate": ph.simulate_s * 1e3,
                "commit": ph.commit_s * 1e3,
                "bus": ph.bus_s * 1e3,
                "frames": ph.frames_s * 1e3,
            },
            "history_s": self.history_s,
            "history": list(self._history),
            "store": store,
            "cells": {
                "window_s": cells.window_s,
                "by_bytes": [_cell(f) for f in cells.by_bytes],
                "by_subscribers": [_cell(f) for f in cells.by_subscribers],
            },
        }


def _cell(f: CellFigures) -> dict[str, Any]:
    return {"key": f.key, "bytes_per_s": f.bytes_per_s, "subscribers": f.subscribers}
