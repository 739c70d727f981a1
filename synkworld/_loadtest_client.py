"""One load-test WebSocket client: it connects, reads `hello`, sends `view`s and pings, counts.

A client speaks protocol v1 (JSON text frames, docs/protocol.md) or, with
``proto=2``, protocol v2 (binary frames, docs/protocol-v2.md): it offers the
subprotocol ``synkworld.v2`` and refuses a server that does not select it.
Most clients only count what they receive: a tick frame is recognised by its
first bytes (``{"m":"tick"`` in v1, the byte 01 in v2) and never decoded
(decoding every frame of hundreds of clients would make the load generator,
not the server, the bottleneck); anything else (pongs, errors, resyncs) is
decoded. A sampled client decodes every frame and applies it to a
`StrictMirror` (`StrictMirrorV2` for v2), which counts every frame a correct
server never sends. Used by `synkworld loadtest` and by the grid-world
benchmark's load generator (bench/gridworld_loadgen.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgpack
import orjson

from synkworld._errors import ProtocolViolationError
from synkworld._mirror import Mirror
from synkworld._mirror_v2 import MirrorV2
from synkworld._wire_v2 import FRAME_MESSAGE, FRAME_RESYNC, FRAME_TICK, SUBPROTOCOL_V2

__all__ = [
    "PROTOCOLS",
    "ConnectFailedError",
    "LoadClient",
    "Pong",
    "StrictMirror",
    "StrictMirrorV2",
    "WireCounter",
    "describe_failure",
    "mirror_state",
    "strict_mirror",
    "tick_number",
]

PROTOCOLS = (1, 2)  # the protocol versions a load-test client speaks

_TEXT = aiohttp.WSMsgType.TEXT
_BINARY = aiohttp.WSMsgType.BINARY
_DONE = (
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.ERROR,
)
# How synkworld (orjson, fields in insertion order) starts every tick frame. A
# server that orders its fields otherwise only costs the load generator a
# decode per frame: anything without this prefix is decoded and looked at.
_TICK_PREFIX = b'{"m":"tick"'
_EXAMPLES = 5
# What a malformed frame can raise from the appliers (msgpack's errors are ValueErrors).
_MALFORMED = (
    KeyError,
    TypeError,
    ValueError,
    IndexError,
    AttributeError,
    ProtocolViolationError,
    msgpack.UnpackException,
)


class ConnectFailedError(ConnectionError):
    """A client could not connect, or the server's first frame was not a `hello` of the
    protocol the client speaks (or, for v2, the server did not select ``synkworld.v2``)."""


def describe_failure(e: BaseException, timeout_s: float | None = None) -> str:
    """One line saying why a connection attempt failed, for a person to read."""
    if isinstance(e, ConnectFailedError):
        return str(e)
    if isinstance(e, aiohttp.WSServerHandshakeError):
        if e.status == 101:
            return f"the WebSocket upgrade failed: {e.message}"
        path_hint = " (is the path right? synkworld serves its WebSocket at /ws)"
        hint = {
            401: " (the server wants a token: --token)",
            403: " (the server refused this client)",
        }.get(e.status, path_hint if e.status < 500 else "")
        return f"the server answered HTTP {e.status} instead of a WebSocket upgrade{hint}"
    if isinstance(e, aiohttp.ClientConnectorError):
        reason = e.os_error.strerror if e.os_error.strerror else str(e.os_error)
        return f"cannot connect to {e.host}:{e.port}: {reason}"
    if isinstance(e, TimeoutError):
        return f"no answer within {timeout_s:g} s" if timeout_s is not None else "timed out"
    if isinstance(e, aiohttp.InvalidURL):
        return f"not a valid URL: {e}"
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class WireCounter(asyncio.Protocol):
    """Stands between a transport and its protocol and counts the bytes that arrive.

    What a client's socket receives, WebSocket framing included, and before
    permessage-deflate is undone: the bytes a client's link carries.
    """

    def __init__(self, inner: asyncio.BaseProtocol) -> None:
        self.inner = inner
        self.n = 0

    @classmethod
    def install(cls, transport: asyncio.BaseTransport) -> WireCounter:
        """Puts a counter in front of `transport`'s protocol and returns it."""
        counter = cls(transport.get_protocol())
        transport.set_protocol(counter)
        return counter

    def data_received(self, data: bytes) -> None:
        self.n += len(data)
        self.inner.data_received(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()  # type: ignore[attr-defined, no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class StrictMirror(Mirror):
    """`Mirror` that counts violations (with examples) instead of raising, and also counts
    a `mod` whose version is not above the one held: a server that keeps a client's
    versions right never sends one, though the protocol tells clients to drop it."""

    def __init__(self) -> None:
        # Counting, not raising: one violation must not end the run, and the
        # report says how many there were and what the first ones were.
        super().__init__(strict=False, keep_teardowns=False)

    def _apply_tick(self, msg: Mapping[str, Any]) -> None:
        objs = self.objs
        for batch in msg.get("b", ()):
            key = batch.get("k")
            if key not in self.held:
                continue  # the Mirror reports the batch itself
            for m in batch.get("mod", ()):
                o = objs.get(m.get("id"))
                v = m.get("v")
                if o is not None and o.k == key and isinstance(v, int) and v <= o.v:
                    self._violation(
                        f"version regression: mod v{v} of {o.id!r} in {key!r}, held at v{o.v}"
                    )
        super()._apply_tick(msg)


class StrictMirrorV2(MirrorV2):
    """`StrictMirror` for protocol v2: a lenient `MirrorV2` that also counts a mod whose
    version is not above the one held."""

    def __init__(self) -> None:
        super().__init__(strict=False, keep_teardowns=False)

    def _mod(
        self, key: str, table: dict[int, Any], slot: int, v: int, diff: Mapping[int, Any]
    ) -> None:
        o = table.get(slot)
        if o is not None and o.k == key and isinstance(v, int) and v <= o.v:
            self._violation(
                f"version regression: mod v{v} of {o.id!r} in {key!r} (slot {slot}), held at v{o.v}"
            )
        super()._mod(key, table, slot, v, diff)


def strict_mirror(proto: int = 1) -> Mirror:
    """A new `StrictMirror` for protocol `proto` (1 or 2)."""
    return StrictMirrorV2() if proto == 2 else StrictMirror()


def tick_number(frame: bytes) -> int:
    """The tick of a protocol v2 tick or resync frame (the varint after its first byte);
    -1 when the frame ends before it does (the mirror then counts the violation)."""
    n = shift = 0
    for b in frame[1:11]:
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n
        shift += 7
    return -1


def mirror_state(mirror: Mirror) -> bytes:
    """What a mirror holds (its keys and every object's type, version, state and key), as
    canonical JSON: equal holdings give equal bytes."""
    objs = {o.id: [o.t, o.v, o.s, o.k] for o in mirror.objs.values()}
    return orjson.dumps({"held": sorted(mirror.held), "objs": objs}, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True, slots=True)
class Pong:
    """A pong: the server's tick when it answered, the round trip, and (if asked for) what
    the client held once every frame before the pong was applied."""

    n: int
    rtt_s: float
    state: bytes | None


class LoadClient:
    """One WebSocket client of a load test; with a `mirror`, a sampled one."""

    __slots__ = (
        "_pending",
        "_pings",
        "bad_frames",
        "bytes",
        "close_code",
        "compress",
        "error_examples",
        "errors",
        "frames",
        "hello",
        "index",
        "mirror",
        "proto",
        "resyncs",
        "rtts",
        "sid",
        "ticks",
        "url",
        "wire",
        "ws",
    )

    def __init__(
        self,
        index: int,
        url: str,
        *,
        mirror: Mirror | None = None,
        compress: bool = False,
        proto: int = 1,
    ) -> None:
        if proto not in PROTOCOLS:
            raise ValueError(f"protocol {proto!r}: a load-test client speaks 1 or 2")
        self.index = index
        self.url = url
        self.mirror = mirror
        self.compress = compress
        self.proto = proto
        self.ws: aiohttp.ClientWebSocketResponse[bool] | None = None
        self.wire: WireCounter | None = None
        self.hello: dict[str, Any] = {}
        self.sid = ""
        self.frames = 0  # every frame of the protocol (text in v1, binary in v2), pongs too
        self.ticks = 0  # tick frames only
        self.bytes = 0
        self.resyncs = 0
        self.bad_frames = 0
        self.errors: Counter[str] = Counter()
        self.error_examples: list[str] = []
        # (monotonic arrival time, round trip in seconds) of every pong; its owner
        # may take them out (synkworld loadtest does, once a second).
        self.rtts: list[tuple[float, float]] = []
        self.close_code: int | None = None
        self._pings = 0
        self._pending: dict[int, tuple[float, asyncio.Future[Pong] | None, bool]] = {}

    @property
    def wire_bytes(self) -> int:
        """Bytes that arrived on this client's socket so far."""
        return self.wire.n if self.wire is not None else 0

    @property
    def connected(self) -> bool:
        """The WebSocket is open."""
        return self.ws is not None and not self.ws.closed

    async def connect(self, session: aiohttp.ClientSession, *, timeout_s: float) -> dict[str, Any]:
        """Opens the WebSocket and reads `hello`; raises `ConnectFailedError` saying why not."""
        try:
            ws = await asyncio.wait_for(
                session.ws_connect(
                    self.url,
                    decode_text=False,
                    max_msg_size=0,
                    heartbeat=None,
                    compress=15 if self.compress else 0,
                    protocols=(SUBPROTOCOL_V2,) if self.proto == 2 else (),
                ),
                timeout_s,
            )
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
            raise ConnectFailedError(describe_failure(e, timeout_s)) from e
        self.ws = ws
        # aiohttp has no public handle on an upgraded connection's transport.
        conn = ws._response.connection
        if conn is not None and conn.transport is not None:
            self.wire = WireCounter.install(conn.transport)
        try:
            msg = await ws.receive(timeout=timeout_s)
            hello = self._hello(msg) if self.proto == 1 else self._hello_v2(msg, ws.protocol)
        except (ConnectFailedError, TimeoutError, aiohttp.ClientError, OSError) as e:
            await self.close()
            self.ws = None
            raise ConnectFailedError(describe_failure(e, timeout_s)) from e
        self.hello = hello
        self.sid = str(hello.get("sid", ""))
        if self.mirror is not None:
            if self.proto == 2:
                self.mirror.apply_frame(msg.data)
            else:
                self.mirror.apply(hello)
        return hello

    @staticmethod
    def _hello(msg: Any) -> dict[str, Any]:
        if msg.type is not _TEXT:
            raise ConnectFailedError(f"expected a hello text frame, got {msg.type.name}")
        try:
            hello = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            raise ConnectFailedError("the first frame is not JSON") from None
        if not isinstance(hello, dict) or hello.get("m") != "hello":
            raise ConnectFailedError(f"the first frame is not a hello: {bytes(msg.data)[:80]!r}")
        if hello.get("proto") != 1:
            raise ConnectFailedError(f"the server speaks protocol {hello.get('proto')!r}, not 1")
        if not isinstance(hello.get("maps"), dict) or not isinstance(hello.get("tick"), int):
            raise ConnectFailedError("the hello lacks its maps or its tick")
        return hello

    @staticmethod
    def _hello_v2(msg: Any, selected: str | None) -> dict[str, Any]:
        if selected != SUBPROTOCOL_V2:
            # A v1-only server (a cluster's process, an older synkworld) selects nothing,
            # or synkworld.v1, and sends a text hello of protocol 1.
            said = f"selected {selected!r}" if selected else "selected no subprotocol"
            raise ConnectFailedError(
                f"the server does not speak protocol 2: it {said} when offered "
                f"{SUBPROTOCOL_V2!r} (try --proto 1)"
            )
        if msg.type is not _BINARY:
            raise ConnectFailedError(f"expected a binary hello frame, got {msg.type.name}")
        data: bytes = msg.data
        if not data or data[0] != FRAME_MESSAGE:
            raise ConnectFailedError(f"the first frame is not a v2 message: {data[:20]!r}")
        try:
            hello = msgpack.unpackb(data[1:], strict_map_key=False)
        except (ValueError, msgpack.UnpackException):
            raise ConnectFailedError("the first frame is not MessagePack") from None
        if not isinstance(hello, dict) or hello.get("m") != "hello":
            raise ConnectFailedError(f"the first frame is not a hello: {data[:80]!r}")
        if hello.get("proto") != 2:
            raise ConnectFailedError(f"the server speaks protocol {hello.get('proto')!r}, not 2")
        maps = hello.get("maps")
        if not isinstance(maps, dict) or not isinstance(hello.get("tick"), int):
            raise ConnectFailedError("the hello lacks its maps or its tick")
        if not all(isinstance(m, dict) and "num" in m and "prec" in m for m in maps.values()):
            raise ConnectFailedError("the hello's maps lack their numbers or precisions")
        if not isinstance(hello.get("types"), list):
            raise ConnectFailedError("the hello lacks its type table")
        return hello

    async def send(self, msg: Mapping[str, Any]) -> bool:
        """Sends one message; False if the connection is gone."""
        ws = self.ws
        if ws is None or ws.closed:
            return False
        try:
            await ws.send_str(orjson.dumps(msg).decode())
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def send_view(self, map_name: str, rect: list[float], margin: int) -> bool:
        """Sends a `view` of `rect` on `map_name`."""
        return await self.send({"m": "view", "map": map_name, "rect": rect, "margin": margin})

    async def ping(self, *, capture: bool = False) -> asyncio.Future[Pong]:
        """Sends a ping; the future it returns resolves at its pong (with the mirror's state
        if `capture`), or fails with ConnectionError.

        The pong comes after every frame the server queued for this client
        before it, so a captured state is the client's as of the pong's tick.
        """
        fut: asyncio.Future[Pong] = asyncio.get_running_loop().create_future()
        t = self._register(fut, capture)
        if not await self.send({"m": "ping", "t": t}):
            self._pending.pop(t, None)
            fut.set_exception(ConnectionError("the connection is closed"))
        return fut

    async def ping_for_rtt(self) -> None:
        """Sends a ping only to measure its round trip (in `rtts` once its pong is back)."""
        t = self._register(None, False)
        if not await self.send({"m": "ping", "t": t}):
            self._pending.pop(t, None)

    def _register(self, fut: asyncio.Future[Pong] | None, capture: bool) -> int:
        self._pings += 1
        # Stamped just before the send: the round trip is the network's and the
        # server's, not this event loop's wait before the ping went out.
        self._pending[self._pings] = (time.monotonic(), fut, capture)
        return self._pings

    async def sync(self, timeout_s: float) -> bool:
        """Pings and waits for the pong, which comes after every frame queued before it."""
        if not self.connected:
            return False
        try:
            await asyncio.wait_for(await self.ping(), timeout_s)
        except (TimeoutError, ConnectionError):
            return False
        return True

    async def read(self) -> None:
        """Reads until the connection ends: counts every frame, and a sampled client applies
        each one to its mirror."""
        ws = self.ws
        assert ws is not None
        if self.proto == 2:
            await self._read_v2(ws)
        else:
            await self._read_v1(ws)
        self.close_code = ws.close_code
        for _, fut, _ in self._pending.values():
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError("the connection closed"))
        self._pending.clear()

    async def _read_v1(self, ws: aiohttp.ClientWebSocketResponse[bool]) -> None:
        receive = ws.receive
        mirror = self.mirror
        if mirror is None:
            while True:
                msg = await receive()
                if msg.type is _TEXT:
                    data: bytes = msg.data
                    self.frames += 1
                    self.bytes += len(data)
                    if data.startswith(_TICK_PREFIX):
                        self.ticks += 1
                    else:
                        self._control(data)
                elif msg.type is _BINARY:
                    self.bad_frames += 1  # protocol v1 servers send text frames only
                elif msg.type in _DONE:
                    break
        else:
            loads = orjson.loads
            now = time.time
            while True:
                msg = await receive()
                if msg.type is _TEXT:
                    t = now()
                    data = msg.data
                    self.frames += 1
                    self.bytes += len(data)
                    try:
                        m = loads(data)
                    except orjson.JSONDecodeError:
                        m = None
                    if not isinstance(m, dict):
                        self.bad_frames += 1
                        mirror._violation(f"a frame that is not a JSON object: {data[:60]!r}")
                        continue
                    kind = m.get("m")
                    if kind == "tick":
                        self.ticks += 1
                        self.tick_arrived(data, m, t)
                    elif kind == "pong":
                        self._pong(m)
                        continue
                    elif kind in ("error", "resync"):
                        self._count(kind, m)
                    try:
                        mirror.apply(m)
                    except _MALFORMED as e:
                        mirror._violation(f"a malformed {kind!r} frame ({type(e).__name__}: {e})")
                elif msg.type is _BINARY:
                    self.bad_frames += 1
                    mirror._violation("a binary frame (protocol v1 servers send text frames)")
                elif msg.type in _DONE:
                    break

    async def _read_v2(self, ws: aiohttp.ClientWebSocketResponse[bool]) -> None:
        receive = ws.receive
        mirror = self.mirror
        if mirror is None:
            while True:
                msg = await receive()
                if msg.type is _BINARY:
                    data: bytes = msg.data
                    self.frames += 1
                    self.bytes += len(data)
                    if data and data[0] == FRAME_TICK:
                        self.ticks += 1
                    else:
                        self._control_v2(data)
                elif msg.type is _TEXT:
                    self.bad_frames += 1  # protocol v2 servers send binary frames only
                elif msg.type in _DONE:
                    break
            return
        now = time.time
        while True:
            msg = await receive()
            if msg.type is _BINARY:
                t = now()
                data = msg.data
                self.frames += 1
                self.bytes += len(data)
                kind = data[0] if data else -1
                if kind == FRAME_MESSAGE:
                    m = self._message_v2(data)
                    if m is None:
                        mirror._violation(f"a message frame that is not a map: {data[:60]!r}")
                    elif m.get("m") == "pong":
                        self._pong(m)
                    else:
                        if m.get("m") == "error":
                            self._count("error", m)
                        mirror.other(m)
                    continue
                if kind == FRAME_TICK:
                    self.ticks += 1
                    self.tick_arrived(data, {"m": "tick", "n": tick_number(data)}, t)
                elif kind == FRAME_RESYNC:
                    self._count("resync", {})
                try:
                    mirror.apply_frame(data)
                except _MALFORMED as e:
                    mirror._violation(f"a malformed frame of kind {kind} ({type(e).__name__}: {e})")
            elif msg.type is _TEXT:
                self.bad_frames += 1
                mirror._violation("a text frame (protocol v2 servers send binary frames)")
            elif msg.type in _DONE:
                break

    def _message_v2(self, data: bytes) -> dict[str, Any] | None:
        try:
            m = msgpack.unpackb(data[1:], strict_map_key=False)
        except (ValueError, msgpack.UnpackException):
            m = None
        if not isinstance(m, dict):
            self.bad_frames += 1
            return None
        return m

    def _control_v2(self, data: bytes) -> None:
        kind = data[0] if data else -1
        if kind == FRAME_RESYNC:
            self.resyncs += 1
        elif kind == FRAME_MESSAGE:
            m = self._message_v2(data)
            if m is None:
                return
            what = m.get("m")
            if what == "pong":
                self._pong(m)
            elif what == "error":
                self._count("error", m)
        else:
            self.bad_frames += 1

    def tick_arrived(self, data: bytes, msg: dict[str, Any], t: float) -> None:
        """A sampled client got a tick frame at wall-clock `t` (not applied yet): for subclasses."""

    def _control(self, data: bytes) -> None:
        try:
            m = orjson.loads(data)
        except orjson.JSONDecodeError:
            m = None
        if not isinstance(m, dict):
            self.bad_frames += 1
            return
        kind = m.get("m")
        if kind == "tick":
            self.ticks += 1
        elif kind == "pong":
            self._pong(m)
        elif kind in ("error", "resync"):
            self._count(kind, m)

    def _count(self, kind: str, m: dict[str, Any]) -> None:
        if kind == "resync":
            self.resyncs += 1
            return
        code = str(m.get("code"))
        self.errors[code] += 1
        if len(self.error_examples) < _EXAMPLES:
            self.error_examples.append(f"{code}: {m.get('msg')}")

    def _pong(self, m: dict[str, Any]) -> None:
        t = m.get("t")
        entry = self._pending.pop(t, None) if isinstance(t, int) else None
        if entry is None:
            return  # not one of ours
        sent, fut, capture = entry
        arrived = time.monotonic()
        self.rtts.append((arrived, arrived - sent))
        if fut is not None and not fut.done():
            n = m.get("n")
            state = mirror_state(self.mirror) if capture and self.mirror is not None else None
            fut.set_result(Pong(n if isinstance(n, int) else -1, arrived - sent, state))

    async def close(self, timeout_s: float = 2.0) -> None:
        """Closes the WebSocket (waits at most `timeout_s` for the closing handshake)."""
        ws = self.ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), timeout_s)
