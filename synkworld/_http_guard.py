"""Bounds what HTTP connections may hold before they send a request.

A connection costs a file descriptor from the moment it is accepted. One that
never sends a request, or sends it a byte at a time, would hold that fd for as
long as its peer likes: a few hundred of them exhaust the process's fd limit,
and then new clients and /healthz are refused and asyncio logs every failed
accept. The guard wraps the HTTP protocol of each accepted connection:

- a connection must complete its first request's headers within
  `header_timeout_s`, or it is closed (later requests on a kept-alive
  connection are bounded by aiohttp's keep-alive timeout);
- at most `max_connections` connections at once (by default a little below the
  fd limit), and at most `max_connections_per_address` from one remote address
  (off by default: behind a reverse proxy every client has the proxy's
  address). When the server is full, the oldest connection still waiting for
  its first request makes room for the new one; when there is none, or the
  address is at its limit, the new connection gets a 503 and is closed.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = [
    "AcceptErrorFilter",
    "ConnectionGuard",
    "GuardStatistics",
    "GuardedSite",
    "Listener",
    "default_max_connections",
]

log = logging.getLogger("synkworld.transport")

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 25\r\n\r\ntoo many connections now\n"
)


def default_max_connections() -> int:
    """A little below the soft fd limit: room for the listening socket, stores, logs."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 100_000
    return max(1, soft - max(64, soft // 16))


@dataclass(frozen=True, slots=True)
class GuardStatistics:
    """The guard's counters since it started."""

    connections: int
    waiting_for_request: int
    timed_out: int
    refused: int
    evicted: int


class ConnectionGuard:
    """Wraps an HTTP protocol factory with a header deadline and connection limits."""

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        *,
        header_timeout_s: float,
        max_connections: int,
        max_connections_per_address: int | None,
    ) -> None:
        self._factory = factory
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        self.max_connections_per_address = max_connections_per_address
        self._open: set[_Guarded] = set()
        # Connections that have not completed a request yet, oldest first.
        self._waiting: OrderedDict[_Guarded, None] = OrderedDict()
        self._by_transport: dict[asyncio.BaseTransport, _Guarded] = {}
        self._per_address: dict[str, int] = {}
        self._timed_out = 0
        self._refused = 0
        self._evicted = 0

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self, self._factory)

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        """Tells the guard that a connection's request headers are complete."""
        guarded = self._by_transport.get(transport) if transport is not None else None
        if guarded is not None:
            guarded.disarm()

    def statistics(self) -> GuardStatistics:
        """The counters now."""
        return GuardStatistics(
            len(self._open), len(self._waiting), self._timed_out, self._refused, self._evicted
        )

    # -- called by the guarded protocols ----------------------------------------------

    def _admit(self, conn: _Guarded) -> bool:
        limit = self.max_connections_per_address
        if limit is not None and self._per_address.get(conn.address, 0) >= limit:
            log.debug("refused a connection from %s: %d open from there", conn.address, limit)
            self._refused += 1
            return False
        if len(self._open) >= self.max_connections:
            if not self._waiting:
                log.debug("refused a connection: %d open", len(self._open))
                self._refused += 1
                return False
            oldest = next(iter(self._waiting))
            self._evicted += 1
            oldest.close()
            # Its connection_lost comes later; its place is free now.
            self._gone(oldest)
        self._open.add(conn)
        self._waiting[conn] = None
        self._per_address[conn.address] = self._per_address.get(conn.address, 0) + 1
        return True

    def _track(self, conn: _Guarded, transport: asyncio.BaseTransport) -> None:
        self._by_transport[transport] = conn

    def _started(self, conn: _Guarded) -> None:
        self._waiting.pop(conn, None)

    def _timed_out_now(self, conn: _Guarded) -> None:
        self._timed_out += 1
        log.debug(
            "closed a connection from %s: no request within %gs",
            conn.address,
            self.header_timeout_s,
        )

    def _gone(self, conn: _Guarded) -> None:
        if conn not in self._open:
            return
        self._open.discard(conn)
        self._waiting.pop(conn, None)
        if conn.transport is not None:
            self._by_transport.pop(conn.transport, None)
        left = self._per_address.get(conn.address, 1) - 1
        if left:
            self._per_address[conn.address] = left
        else:
            self._per_address.pop(conn.address, None)


# Rather than aiohttp's 128: when a thousand clients reconnect at once after a
# restart, handshakes past the backlog are dropped and retried only a second or
# more later.
DEFAULT_BACKLOG = 1024


class Listener:
    """A listening socket bound now, that accepts connections once a `GuardedSite` starts.

    A site can only be made once its runner is set up, which starts the
    application (the tick, the store, the cluster): binding first makes a port
    in use fail before any of that has started. Until the site starts, the
    socket is bound but not listening, so connections are refused, not queued.
    """

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self._factory: Callable[[], asyncio.Protocol] | None = None

    async def bind(self, host: str | None, port: int, *, backlog: int = DEFAULT_BACKLOG) -> None:
        """Binds host:port (an OSError if it cannot)."""
        self.server = await asyncio.get_running_loop().create_server(
            self._protocol, host, port, backlog=backlog, start_serving=False
        )

    def _protocol(self) -> asyncio.Protocol:
        # Nothing is accepted before start_serving, which sets the factory.
        assert self._factory is not None
        return self._factory()

    async def start_serving(self, factory: Callable[[], asyncio.Protocol]) -> asyncio.Server:
        assert self.server is not None, "bind() first"
        self._factory = factory
        await self.server.start_serving()
        return self.server

    def close(self) -> None:
        """Closes the socket (a no-op once a site took it: the site closes it)."""
        if self.server is not None and self._factory is None:
            self.server.close()


class GuardedSite(web.TCPSite):
    """A TCP site whose connections go through a `ConnectionGuard`."""

    __slots__ = ("_guard_options", "_listener", "guard")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        header_timeout_s: float,
        max_connections: int,
        max_connections_per_address: int | None,
        backlog: int = DEFAULT_BACKLOG,
        listener: Listener | None = None,
    ) -> None:
        super().__init__(runner, host, port, backlog=backlog)
        self._guard_options = (header_timeout_s, max_connections, max_connections_per_address)
        # A socket bound before the runner was set up (its backlog was given to bind).
        self._listener = listener
        self.guard: ConnectionGuard | None = None

    async def start(self) -> None:
        # TCPSite.start, with the runner's protocol factory behind the guard.
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        header_timeout_s, max_connections, per_address = self._guard_options
        self.guard = ConnectionGuard(
            server,
            header_timeout_s=header_timeout_s,
            max_connections=max_connections,
            max_connections_per_address=per_address,
        )
        if self._listener is not None:
            self._server = await self._listener.start_serving(self.guard)
        else:
            self._server = await asyncio.get_running_loop().create_server(
                self.guard,
                self._host,
                self._port,
                backlog=self._backlog,
                reuse_address=self._reuse_address,
                reuse_port=self._reuse_port,
            )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


class _Guarded(asyncio.Protocol):
    """One accepted connection: forwards to the HTTP protocol once admitted."""

    __slots__ = ("_deadline", "_factory", "_guard", "_inner", "address", "transport")

    def __init__(self, guard: ConnectionGuard, factory: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._factory = factory
        self._inner: asyncio.Protocol | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self.address = ""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        guard = self._guard
        if not guard._admit(self):
            transport.write(_BUSY)
            transport.close()
            return
        guard._track(self, transport)
        self._deadline = asyncio.get_running_loop().call_later(guard.header_timeout_s, self._expire)
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
            self._guard._started(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _expire(self) -> None:
        self._deadline = None
        self._guard._timed_out_now(self)
        self.close()

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._guard._gone(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)


class AcceptErrorFilter:
    """An event-loop exception handler that logs failed accepts once per interval.

    When the process runs out of fds, asyncio reports every failed
    `socket.accept()`; at the rate clients retry that is megabytes of log a
    second, which costs CPU the server needs to recover.
    """

    _MESSAGE = "socket.accept() out of system resource"

    def __init__(self, previous: Any, *, interval_s: float = 10.0) -> None:
        self._previous = previous
        self._interval_s = interval_s
        self._last: float | None = None
        self._suppressed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != self._MESSAGE:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if self._last is not None and now - self._last < self._interval_s:
            self._suppressed += 1
            return
        log.error(
            "cannot accept connections: %s (%d more such errors in the last %gs)",
            context.get("exception"),
            self._suppressed,
            self._interval_s,
        )
        self._last = now
        self._suppressed = 0
