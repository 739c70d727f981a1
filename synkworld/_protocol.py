"""The wire protocol, version 1: message kinds, error and close codes, parsing and encoding.

docs/protocol.md is this module's prose twin; web/synkworld.js carries the same
constants and a test compares them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from synkworld._errors import BadJsonError, BadMessageError, ProtocolError, UnknownMessageError
from synkworld._grid import key_problem

__all__ = [
    "CLIENT_MESSAGES",
    "CLOSE_CODES",
    "ERROR_CODES",
    "MAX_CLIENT_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "SERVER_MESSAGES",
    "CallMessage",
    "ClientMessage",
    "PingMessage",
    "SubMessage",
    "ViewMessage",
    "encode_error",
    "encode_hello",
    "encode_pong",
    "encode_reply",
    "encode_resync",
    "encode_tick",
    "error_message",
    "parse_client_message",
    "pong_message",
    "reply_message",
]

PROTOCOL_VERSION: Final = 1
MAX_CLIENT_FRAME_BYTES: Final = 64 * 1024

CLIENT_MESSAGES: Final = ("view", "sub", "call", "ping")
SERVER_MESSAGES: Final = ("hello", "tick", "resync", "reply", "error", "pong")
ERROR_CODES: Final = (
    "bad_json",
    "bad_message",
    "unknown_message",
    "too_many_keys",
    "rate_limited",
    "forbidden",
    "no_handler",
    "bad_args",
    "handler_failed",
)
CLOSE_CODES: Final = {
    "normal": 1000,
    "going_away": 1001,
    "unsupported_data": 1003,
    "policy_violation": 1008,
    "message_too_big": 1009,
    "internal_error": 1011,
    "try_again_later": 1013,
}

MAX_KEY_LENGTH: Final = 128
MAX_KEYS_PER_MESSAGE: Final = 1024
MAX_HANDLER_NAME: Final = 64
_COORD_LIMIT: Final = 1e12


@dataclass(frozen=True, slots=True)
class ViewMessage:
    """``view``: replace the grid part of the subscription by the cells a rectangle covers."""

    map: str
    rect: tuple[float, float, float, float]
    margin: int


@dataclass(frozen=True, slots=True)
class SubMessage:
    """``sub``: add and remove keys explicitly."""

    add: tuple[str, ...]
    rem: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CallMessage:
    """``call``: run an application handler; answered by ``reply`` or ``error`` with the id."""

    id: int
    name: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PingMessage:
    """``ping``: answered by ``pong`` carrying ``t`` back."""

    t: int | float


ClientMessage = ViewMessage | SubMessage | CallMessage | PingMessage


def parse_client_message(data: str | bytes) -> ClientMessage:
    """Parses and validates one client frame; raises the ProtocolError its problem calls for."""
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise BadJsonError(f"the frame is not valid JSON: {e}") from None
    if not isinstance(msg, dict):
        raise BadJsonError(f"a message must be a JSON object, not {_json_type(msg)}")
    kind = msg.get("m")
    call_id = msg.get("id") if kind == "call" and _is_int(msg.get("id")) else None
    if not isinstance(kind, str):
        raise BadMessageError("the message has no string field 'm'")
    parser = _PARSERS.get(kind)
    if parser is None:
        raise UnknownMessageError(f"unknown message kind {kind!r}")
    try:
        return parser(msg)
    except ProtocolError as e:
        e.call_id = call_id
        raise


def _parse_view(msg: Mapping[str, Any]) -> ViewMessage:
    _only(msg, {"m", "map", "rect", "margin"})
    map_name = msg.get("map", "main")
    if not isinstance(map_name, str) or not map_name:
        raise BadMessageError("view: 'map' must be a non-empty string")
    rect = msg.get("rect")
    if not isinstance(rect, list) or len(rect) != 4 or not all(_is_number(v) for v in rect):
        raise BadMessageError("view: 'rect' must be [x0, y0, x1, y1], four numbers")
    x0, y0, x1, y1 = (float(v) for v in rect)
    if not all(abs(v) <= _COORD_LIMIT for v in (x0, y0, x1, y1)):
        raise BadMessageError(f"view: 'rect' coordinates must lie within ±{_COORD_LIMIT:g}")
    if x1 < x0 or y1 < y0:
        raise BadMessageError("view: 'rect' must have x0 <= x1 and y0 <= y1")
    margin = msg.get("margin", 1)
    if not _is_int(margin) or margin < 0:
        raise BadMessageError("view: 'margin' must be a non-negative integer")
    return ViewMessage(map_name, (x0, y0, x1, y1), int(margin))


def _parse_sub(msg: Mapping[str, Any]) -> SubMessage:
    _only(msg, {"m", "add", "rem"})
    add = _keys(msg, "add")
    rem = _keys(msg, "rem")
    if len(add) + len(rem) > MAX_KEYS_PER_MESSAGE:
        raise BadMessageError(f"sub: at most {MAX_KEYS_PER_MESSAGE} keys per message")
    return SubMessage(add, rem)


def _parse_call(msg: Mapping[str, Any]) -> CallMessage:
    _only(msg, {"m", "id", "name", "args"})
    call_id = msg.get("id")
    if not isinstance(call_id, int) or isinstance(call_id, bool):
        raise BadMessageError("call: 'id' must be an integer")
    name = msg.get("name")
    if not isinstance(name, str) or not name or len(name) > MAX_HANDLER_NAME:
        raise BadMessageError(f"call: 'name' must be a string of 1-{MAX_HANDLER_NAME} characters")
    args = msg.get("args", {})
    if not isinstance(args, dict):
        raise BadMessageError("call: 'args' must be an object")
    return CallMessage(call_id, name, args)


def _parse_ping(msg: Mapping[str, Any]) -> PingMessage:
    _only(msg, {"m", "t"})
    t = msg.get("t", 0)
    if not _is_number(t):
        raise BadMessageError("ping: 't' must be a finite number")
    return PingMessage(t)


_PARSERS: dict[str, Callable[[Mapping[str, Any]], ClientMessage]] = {
    "view": _parse_view,
    "sub": _parse_sub,
    "call": _parse_call,
    "ping": _parse_ping,
}


def _only(msg: Mapping[str, Any], allowed: set[str]) -> None:
    extra = [k for k in msg if k not in allowed]
    if extra:
        raise BadMessageError(f"{msg['m']}: unexpected field {extra[0]!r}")


def _keys(msg: Mapping[str, Any], field: str) -> tuple[str, ...]:
    value = msg.get(field, [])
    if not isinstance(value, list):
        raise BadMessageError(f"sub: '{field}' must be a list of keys")
    for k in value:
        if not isinstance(k, str) or not k or len(k) > MAX_KEY_LENGTH:
            raise BadMessageError(
                f"sub: every key in '{field}' must be a string of 1-{MAX_KEY_LENGTH} characters"
            )
        problem = key_problem(k)
        if problem is not None:
            raise BadMessageError(f"sub: {problem}")
    return tuple(dict.fromkeys(value))


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    return math.isfinite(v)


def _json_type(v: object) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number"}.get(
        type(v), "null" if v is None else "a boolean"
    )


# -- server messages ---------------------------------------------------------------


def encode_hello(sid: str, tick: int, rate_hz: float, maps: Mapping[str, Any]) -> bytes:
    """The first frame after the upgrade."""
    rate: int | float = int(rate_hz) if float(rate_hz).is_integer() else rate_hz
    return orjson.dumps(
        {
            "m": "hello",
            "proto": PROTOCOL_VERSION,
            "sid": sid,
            "tick": tick,
            "rate": rate,
            "maps": maps,
        }
    )


def encode_tick(
    tick: int,
    batches: Iterable[bytes],
    added: list[str],
    removed: list[str],
    snapshots: Iterable[bytes],
) -> bytes | None:
    """A tick frame from ready batch and snapshot bytes; None when it would carry nothing.

    A list given as `batches` is used up: its ends are rewritten.
    """
    parts = batches if isinstance(batches, list) else list(batches)
    rest: list[bytes] = []
    if added or removed:
        sub: dict[str, list[str]] = {}
        if added:
            sub["add"] = added
        if removed:
            sub["rem"] = removed
        rest += [b',"sub":', orjson.dumps(sub)]
    s = b",".join(snapshots)
    if s:
        rest += [b',"snap":[', s, b"]"]
    if not parts:
        if not rest:
            return None
        return b'{"m":"tick","n":%d%b}' % (tick, b"".join(rest))
    # The batches are most of the frame: they are copied once, by the join,
    # with the envelope glued to the first and the last.
    parts[0] = b'{"m":"tick","n":%d,"b":[%b' % (tick, parts[0])
    parts[-1] = b"%b]%b}" % (parts[-1], b"".join(rest))
    return b",".join(parts)


def encode_resync(tick: int, snapshots: Iterable[bytes]) -> bytes:
    """The frame that replaces everything a lagging client holds."""
    return b'{"m":"resync","n":%d,"snap":[%b]}' % (tick, b",".join(snapshots))


def reply_message(call_id: int, result: Any) -> dict[str, Any]:
    """The answer to a successful call, as a message of either protocol version."""
    return {"m": "reply", "id": call_id, "ok": result}


def error_message(code: str, message: str, call_id: int | None = None) -> dict[str, Any]:
    """An error answering a client message, as a message of either protocol version."""
    return {"m": "error", "id": call_id, "code": code, "msg": message}


def pong_message(t: int | float, tick: int) -> dict[str, Any]:
    """The answer to a ping, as a message of either protocol version."""
    return {"m": "pong", "t": t, "n": tick}


def encode_reply(call_id: int, result: Any) -> bytes:
    """The answer to a successful call."""
    return orjson.dumps(reply_message(call_id, result))


def encode_error(code: str, message: str, call_id: int | None = None) -> bytes:
    """An error answering a client message."""
    return orjson.dumps(error_message(code, message, call_id))


def encode_pong(t: int | float, tick: int) -> bytes:
    """The answer to a ping."""
    return orjson.dumps(pong_message(t, tick))
