"""One WebSocket connection: reads and answers client messages, writes the session's queue."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from synkworld._errors import (
    BadJsonError,
    ForbiddenError,
    HandlerFailedError,
    ProtocolError,
    RateLimitedError,
)
from synkworld._handlers import Call
from synkworld._protocol import (
    CLOSE_CODES,
    CallMessage,
    PingMessage,
    SubMessage,
    ViewMessage,
    encode_error,
    encode_pong,
    encode_reply,
    parse_client_message,
)
from synkworld._sessions import Session

if TYPE_CHECKING:
    from synkworld._server import Server

__all__ = ["Connection", "TokenBucket"]

log = logging.getLogger("synkworld.transport")


class TokenBucket:
    """A rate limit: `rate_per_s` messages a second on average, bursts up to `burst`."""

    def __init__(self, rate_per_s: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.clock = clock
        self._tokens = burst
        self._at = clock()

    def take(self) -> bool:
        """Spends one token if there is one."""
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Connection:
    """Pumps one client's WebSocket: a reader answers messages, a writer drains the queue."""

    def __init__(
        self,
        server: Server,
        ws: web.WebSocketResponse,
        session: Session,
        identity: Any,
        transport: asyncio.Transport | None,
        *,
        direct_writes: bool,
    ) -> None:
        self.server = server
        self.ws = ws
        self.session = session
        self.identity = identity
        self.close_code: int | None = None
        self.close_reason = ""
        self._wake = asyncio.Event()
        self.finished = asyncio.Event()
        limits = server.limits
        self._bucket = TokenBucket(limits.rate_limit_per_s, limits.rate_limit_burst, time.monotonic)
        self._errors: deque[float] = deque()
        self._writing = False
        self._transport = transport
        self._close_timeout_s = limits.close_timeout_s
        self._abort_timer: asyncio.TimerHandle | None = None
        self._socket_buffer_max = limits.socket_buffer_max_bytes
        self._metrics = server.metrics
        session.on_queued = self._wake.set
        if direct_writes and transport is not None:
            session.direct_write = self._direct_write

    def close_soon(self, code: int, reason: str) -> None:
        """Closes the connection once what is queued now has been written.

        The closing handshake gets `Limits.close_timeout_s` (none when the peer
        is not reading now); then the transport is aborted. A peer that stopped
        reading would otherwise hold the close
        frame (and its socket, and megabytes of send buffer) for good: neither
        the drain nor the wait for its answering close ever ends, and closing
        cancels the heartbeat that would have dropped it.
        """
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            t = self._transport
            if t is not None and not self.finished.is_set():
                # A peer that is not reading now will not read the close frame
                # either: no handshake to wait for.
                stuck = self.session.lagging or t.get_write_buffer_size() > self._socket_buffer_max
                self._abort_timer = asyncio.get_running_loop().call_later(
                    0.0 if stuck else self._close_timeout_s, self._abort
                )
        self._wake.set()

    def _abort(self) -> None:
        t = self._transport
        if t is not None and not self.finished.is_set():
            log.info(
                "session %s: no closing handshake within %gs; connection aborted",
                self.session.sid,
                self._close_timeout_s,
            )
            t.abort()

    async def run(self) -> None:
        """Serves the connection until either side closes it."""
        try:
            async with asyncio.TaskGroup() as tg:
                writer = tg.create_task(self._write_loop())
                try:
                    await self._read_loop()
                finally:
                    if self.close_code is None:
                        writer.cancel()
                    else:
                        self._wake.set()
        finally:
            self.finished.set()
            if self._abort_timer is not None:
                self._abort_timer.cancel()

    # -- writing ------------------------------------------------------------------------

    def _direct_write(self, frame: bytes) -> bool:
        """Writes a text frame straight to the socket when nothing is waiting before it.

        Only when the writer task is idle (so frames cannot be reordered) and the
        transport's buffer is below its high-water mark (so a slow client still
        falls back to the bounded queue and goes lagging). Frames are not
        compressed, so a frame is one header and the payload in one write.
        """
        t = self._transport
        if (
            self._writing
            or t is None
            or t.is_closing()
            or self.close_code is not None
            or t.get_write_buffer_size() > self._socket_buffer_max
        ):
            return False
        t.write(_text_frame_header(len(frame)) + frame)
        metrics = self._metrics
        metrics.frames_written += 1
        metrics.bytes_written += len(frame)
        return True

    async def _write_loop(self) -> None:
        ws = self.ws
        session = self.session
        metrics = self.server.metrics
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._writing = True
                while (frame := session.pop()) is not None:
                    if ws.closed:
                        return
                    await ws.send_frame(frame, WSMsgType.TEXT)
                    metrics.frames_written += 1
                    metrics.bytes_written += len(frame)
                self._writing = False
                if self.close_code is not None:
                    await ws.close(code=self.close_code, message=self.close_reason.encode())
                    return
        except (ConnectionError, RuntimeError) as e:
            # The peer went away mid-write; the reader sees the close and ends the connection.
            log.debug("session %s: write failed: %s", session.sid, e)

    # -- reading ------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        ws = self.ws
        async for msg in ws:
            if self.close_code is not None:
                break
            if msg.type is WSMsgType.TEXT:
                await self._handle(msg.data)
            elif msg.type is WSMsgType.BINARY:
                self._refuse(BadJsonError("frames must be UTF-8 JSON text frames, not binary"))
            elif msg.type is WSMsgType.ERROR:
                log.debug("session %s: websocket error %s", self.session.sid, ws.exception())
                break

    async def _handle(self, data: str) -> None:
        if not self._bucket.take():
            self._refuse(RateLimitedError("too many messages; slow down"))
            return
        try:
            msg = parse_client_message(data)
            if isinstance(msg, ViewMessage):
                await self._apply_keys(self.session.plan_view(msg.map, msg.rect, msg.margin))
            elif isinstance(msg, SubMessage):
                await self._apply_keys(self.session.plan_sub(msg.add, msg.rem))
            elif isinstance(msg, CallMessage):
                await self._call(msg)
            elif isinstance(msg, PingMessage):
                self.session.push_control(encode_pong(msg.t, self.server.world.tick))
        except ProtocolError as e:
            self._refuse(e)

    async def _apply_keys(self, wanted: set[str]) -> None:
        added = wanted - self.session.wanted
        if added:
            refused = await self.server.refused_keys(self.identity, added)
            if refused:
                shown = ", ".join(repr(k) for k in sorted(refused)[:5])
                raise ForbiddenError(f"not allowed to subscribe to {shown}")
        # plan_view and plan_sub checked the keys and interned them already.
        self.session.wanted = wanted

    async def _call(self, msg: CallMessage) -> None:
        call = Call(msg.name, self.identity, self.session, self.server.world)
        try:
            result = await self.server.handlers.call(call, msg.args)
        except ProtocolError as e:
            e.call_id = msg.id
            raise
        self.session.push_control(encode_reply(msg.id, result))

    def _refuse(self, error: ProtocolError) -> None:
        server = self.server
        server.metrics.errors[error.code] += 1
        self.session.push_control(encode_error(error.code, error.message, error.call_id))
        if isinstance(error, HandlerFailedError):
            return  # the application's fault, not the client's: it does not count against it
        now = time.monotonic()
        window = server.limits.error_window_s
        errors = self._errors
        errors.append(now)
        while errors and errors[0] < now - window:
            errors.popleft()
        if len(errors) > server.limits.max_errors:
            log.info(
                "session %s: closed after %d errors in %gs", self.session.sid, len(errors), window
            )
            self.close_soon(CLOSE_CODES["policy_violation"], "too many bad messages")


def _text_frame_header(length: int) -> bytes:
    """The header of an unmasked, final, uncompressed WebSocket text frame (RFC 6455 5.2)."""
    if length < 126:
        return struct.pack("!BB", 0x81, length)
    if length < 65536:
        return struct.pack("!BBH", 0x81, 126, length)
    return struct.pack("!BBQ", 0x81, 127, length)
