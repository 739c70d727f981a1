"""One WebSocket connection: a pump between aiohttp and the client's `ClientProtocol`.

The reader feeds every frame to the protocol and carries out the requests it
returns (a key check, a call) before it reads the next frame; the writer drains
the session's queue. What a frame means, and when to close, is the protocol's.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from synkworld._client_protocol import CheckKeys, ClientProtocol, RunCall
from synkworld._errors import ProtocolError
from synkworld._metrics import ServerMetrics
from synkworld._sessions import Session

__all__ = ["Connection", "Dispatch"]

log = logging.getLogger("synkworld.transport")


@dataclass(frozen=True, slots=True)
class Dispatch:
    """What a connection needs from the application: its key checks and its calls."""

    check_keys: Callable[[Any, tuple[str, ...]], Awaitable[Collection[str]]]
    """(identity, keys) -> the keys the authorization hook allows."""
    run_call: Callable[[Session, RunCall], Awaitable[Any]]
    """Runs a call handler; raises the `ProtocolError` its failure calls for."""
    clock: Callable[[], float]
    tick: Callable[[], int]
    """The world's last tick, for `pong`."""


class Connection:
    """Pumps one client's WebSocket: a reader feeds the protocol, a writer drains the queue."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        protocol: ClientProtocol,
        dispatch: Dispatch,
        metrics: ServerMetrics,
        transport: asyncio.Transport | None,
        *,
        direct_writes: bool,
    ) -> None:
        self.ws = ws
        self.protocol = protocol
        self.session = protocol.session
        self._dispatch = dispatch
        self._metrics = metrics
        self._wake = asyncio.Event()
        self.finished = asyncio.Event()
        self._writing = False
        self._closing = False
        self._transport = transport
        limits = protocol.limits
        self._close_timeout_s = limits.close_timeout_s
        self._socket_buffer_max = limits.socket_buffer_max_bytes
        self._abort_timer: asyncio.TimerHandle | None = None
        # Protocol v1 frames are text, v2's binary.
        self._opcode = 0x82 if self.session.wire_version == 2 else 0x81
        self.session.on_queued = self._wake.set
        if direct_writes and transport is not None:
            self.session.direct_write = self._direct_write

    @property
    def close_code(self) -> int | None:
        """The close code the protocol decided on, once it did."""
        close = self.protocol.close
        return close.code if close is not None else None

    def going_away(self) -> None:
        """Closes with 1001 (the server shuts down)."""
        self.protocol.going_away()
        self._start_close()

    def too_far_behind(self) -> None:
        """Closes with 1013 (the client stayed behind past the lag timeout)."""
        self.protocol.too_far_behind()
        self._start_close()

    def _start_close(self) -> None:
        """Closes once what is queued now has been written.

        The closing handshake gets `Limits.close_timeout_s` (none when the peer
        is not reading now); then the transport is aborted. A peer that stopped
        reading would otherwise hold the close frame (and its socket, and
        megabytes of send buffer) for good: neither the drain nor the wait for
        its answering close ever ends, and closing cancels the heartbeat that
        would have dropped it.
        """
        if self._closing:
            return
        self._closing = True
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
                    if self.protocol.close is None:
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

        Why beneath aiohttp's writer: no task wakes up per client per tick. At
        the load test's defaults (10k objects, 500 clients) it costs 12.2 ms of
        CPU per tick against 14.6 through aiohttp's `send_frame` (medians of
        three pairs, `bench.gridworld` and `--no-direct-writes`), and frames
        arrive 5 ms sooner. tests/test_ws_framing.py pins the header to RFC 6455
        and to what aiohttp writes.
        """
        t = self._transport
        if (
            self._writing
            or t is None
            or t.is_closing()
            or self._closing
            or t.get_write_buffer_size() > self._socket_buffer_max
        ):
            return False
        t.write(_frame_header(len(frame), self._opcode) + frame)
        metrics = self._metrics
        metrics.frames_written += 1
        metrics.bytes_written += len(frame)
        return True

    async def _write_loop(self) -> None:
        ws = self.ws
        session = self.session
        metrics = self._metrics
        kind = WSMsgType.BINARY if session.wire_version == 2 else WSMsgType.TEXT
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._writing = True
                while (frame := session.pop()) is not None:
                    if ws.closed:
                        return
                    await ws.send_frame(frame, kind)
                    metrics.frames_written += 1
                    metrics.bytes_written += len(frame)
                self._writing = False
                close = self.protocol.close
                if close is not None:
                    await ws.close(code=close.code, message=close.reason.encode())
                    return
        except (ConnectionError, RuntimeError) as e:
            # The peer went away mid-write; the reader sees the close and ends the connection.
            log.debug("session %s: write failed: %s", session.sid, e)

    # -- reading ------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        ws = self.ws
        protocol = self.protocol
        clock = self._dispatch.clock
        tick = self._dispatch.tick
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                request = protocol.receive_text(msg.data, now=clock(), tick=tick())
                if request is not None:
                    await self._carry_out(request)
            elif msg.type is WSMsgType.BINARY:
                protocol.receive_binary(now=clock())
            elif msg.type is WSMsgType.ERROR:
                log.debug("session %s: websocket error %s", self.session.sid, ws.exception())
                break
            if protocol.close is not None:
                self._start_close()
                break

    async def _carry_out(self, request: CheckKeys | RunCall) -> None:
        protocol = self.protocol
        clock = self._dispatch.clock
        if isinstance(request, CheckKeys):
            allowed: Collection[str] | BaseException
            try:
                allowed = await self._dispatch.check_keys(self.session.identity, request.keys)
            except Exception as e:
                allowed = e  # logged where the hook was called
            protocol.keys_checked(request, allowed, now=clock())
            return
        try:
            result = await self._dispatch.run_call(self.session, request)
        except ProtocolError as e:
            protocol.call_failed(request, e, now=clock())
        else:
            protocol.call_answered(request, result)


def _frame_header(length: int, first: int) -> bytes:
    """The header of an unmasked, final, uncompressed WebSocket frame (RFC 6455 5.2);
    `first` is FIN and the opcode: 0x81 text, 0x82 binary."""
    if length < 126:
        return struct.pack("!BB", first, length)
    if length < 65536:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def _text_frame_header(length: int) -> bytes:
    """The header of an unmasked, final, uncompressed WebSocket text frame."""
    return _frame_header(length, 0x81)
