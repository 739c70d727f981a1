"""One client connection's protocol, without I/O: frames and the time in, outcomes out.

`ClientProtocol` owns everything that turns a client's frame into what
happens: the hello, the rate limit, parsing and validation, the dispatch of
`view`, `sub`, `call` and `ping`, the authorization step, the error budget,
and the decision to close with its code. It never touches a socket, a clock
or the application (the model is the websockets library's `protocol.py`):

- frames it answers itself (errors, pongs, the hello, replies) go to the
  session's outgoing queue, as control frames;
- work that needs the application comes back from `receive_text` as a
  request: `CheckKeys` (ask the authorization hook), `RunCall` (run a call
  handler). The transport carries it out, however long that takes, and
  answers with `keys_checked` or `call_answered` / `call_failed`; it reads
  the next frame only after that, so one client's messages take effect in
  the order it sent them;
- `close` is set when the connection must end, with the close code and reason.

Every rule here is tested without a network (tests/test_client_protocol.py).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from synkworld._errors import (
    BadJsonError,
    ForbiddenError,
    HandlerFailedError,
    ProtocolError,
    RateLimitedError,
)
from synkworld._limits import Limits
from synkworld._protocol import (
    CLOSE_CODES,
    CallMessage,
    PingMessage,
    SubMessage,
    ViewMessage,
    encode_hello,
    error_message,
    parse_client_message,
    pong_message,
    reply_message,
)
from synkworld._sessions import Session
from synkworld._wire_v2 import encode_hello_v2, encode_message, type_table

__all__ = ["CheckKeys", "ClientProtocol", "Close", "Request", "RunCall", "TokenBucket"]

log = logging.getLogger("synkworld.transport")


@dataclass(frozen=True, slots=True)
class CheckKeys:
    """Ask the authorization hook which of `keys` the client may hold, then `keys_checked`."""

    keys: tuple[str, ...]
    wanted: frozenset[str]
    """The subscription the message asks for, taken if every key is allowed."""


@dataclass(frozen=True, slots=True)
class RunCall:
    """Run the call handler `name` with `args`, then `call_answered` or `call_failed`."""

    call_id: int
    name: str
    args: dict[str, Any]


Request = CheckKeys | RunCall


@dataclass(frozen=True, slots=True)
class Close:
    """The connection is to be closed with this WebSocket close code."""

    code: int
    reason: str


class TokenBucket:
    """A rate limit: `rate_per_s` messages a second on average, bursts up to `burst`."""

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._at = now

    def take(self, now: float) -> bool:
        """Spends one token if there is one at time `now`."""
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class ClientProtocol:
    """The protocol state of one client; see the module's docstring."""

    def __init__(
        self,
        session: Session,
        *,
        limits: Limits,
        now: float,
        checks_keys: bool,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.session = session
        self.limits = limits
        # Without an authorization hook every key is allowed: no request for it.
        self.checks_keys = checks_keys
        self.close: Close | None = None
        self._bucket = TokenBucket(limits.rate_limit_per_s, limits.rate_limit_burst, now)
        self._errors: deque[float] = deque()
        self._on_error = on_error

    # -- the connection's start and end ------------------------------------------------

    def hello(self, tick: int, rate_hz: float, maps: Mapping[str, Any]) -> None:
        """Queues the first frame, `hello`."""
        session = self.session
        if session.wire_version == 2:
            # The maps are the grid's, which `maps` describes.
            table = type_table()
            session.push_control(encode_hello_v2(session.sid, tick, rate_hz, session.grid, table))
            session.types_known = len(table)
            return
        session.push_control(encode_hello(session.sid, tick, rate_hz, maps))

    def going_away(self) -> None:
        """The server shuts down: close with 1001."""
        self._close("going_away", "server shutting down")

    def too_far_behind(self) -> None:
        """The client stayed behind past the lag timeout: close with 1013."""
        self.session.clear()
        self._close("try_again_later", "too far behind; reconnect")

    # -- frames from the client -------------------------------------------------------------

    def receive_text(self, data: str | bytes, *, now: float, tick: int) -> Request | None:
        """Handles one text frame; returns the work it needs from the application, if any.

        `tick` is the world's last tick (for `pong`).
        """
        if self.close is not None:
            return None
        if not self._bucket.take(now):
            self._refuse(RateLimitedError("too many messages; slow down"), now)
            return None
        try:
            msg = parse_client_message(data)
            if isinstance(msg, ViewMessage):
                return self._keys(self.session.plan_view(msg.map, msg.rect, msg.margin))
            if isinstance(msg, SubMessage):
                return self._keys(self.session.plan_sub(msg.add, msg.rem))
            if isinstance(msg, CallMessage):
                return RunCall(msg.id, msg.name, msg.args)
            if isinstance(msg, PingMessage):
                self._answer(pong_message(msg.t, tick))
        except ProtocolError as e:
            self._refuse(e, now)
        return None

    def receive_binary(self, *, now: float) -> None:
        """Handles one binary frame: protocol v1 speaks text frames only."""
        if self.close is not None:
            return
        if not self._bucket.take(now):
            self._refuse(RateLimitedError("too many messages; slow down"), now)
            return
        self._refuse(BadJsonError("frames must be UTF-8 JSON text frames, not binary"), now)

    # -- answers from the application ------------------------------------------------------

    def keys_checked(
        self, request: CheckKeys, allowed: Collection[str] | BaseException, *, now: float
    ) -> None:
        """The authorization hook's answer to `request`: the keys it allows, or its failure.

        A hook that failed, or answered something other than a collection of
        keys, refuses the message (`forbidden`): the client must not get keys
        because the application broke.
        """
        if isinstance(allowed, BaseException) or (
            not isinstance(allowed, Collection) or isinstance(allowed, str | bytes)
        ):
            self._refuse(ForbiddenError("the server could not check these keys"), now)
            return
        refused = set(request.keys).difference(allowed)
        if refused:
            shown = ", ".join(repr(k) for k in sorted(refused)[:5])
            self._refuse(ForbiddenError(f"not allowed to subscribe to {shown}"), now)
            return
        # plan_view and plan_sub checked the keys and interned them already.
        self.session.wanted = set(request.wanted)

    def call_answered(self, request: RunCall, result: Any) -> None:
        """The call handler returned `result`: reply to the client."""
        self._answer(reply_message(request.call_id, result))

    def call_failed(self, request: RunCall, error: ProtocolError, *, now: float) -> None:
        """The call was refused or its handler failed: an error with the call's id."""
        error.call_id = request.call_id
        self._refuse(error, now)

    # -- internals ---------------------------------------------------------------------------

    def _keys(self, wanted: set[str]) -> Request | None:
        added = wanted - self.session.wanted
        if added and self.checks_keys:
            return CheckKeys(tuple(sorted(added)), frozenset(wanted))
        self.session.wanted = wanted
        return None

    def _answer(self, message: dict[str, Any]) -> None:
        """Queues a reply, error or pong in the session's protocol version."""
        encode = encode_message if self.session.wire_version == 2 else orjson.dumps
        self.session.push_control(encode(message))

    def _refuse(self, error: ProtocolError, now: float) -> None:
        if self._on_error is not None:
            self._on_error(error.code)
        self._answer(error_message(error.code, error.message, error.call_id))
        if isinstance(error, HandlerFailedError):
            return  # the application's fault, not the client's: it does not count against it
        window = self.limits.error_window_s
        errors = self._errors
        errors.append(now)
        while errors and errors[0] < now - window:
            errors.popleft()
        if len(errors) > self.limits.max_errors and self.close is None:
            log.info(
                "session %s: closed after %d errors in %gs", self.session.sid, len(errors), window
            )
            self._close("policy_violation", "too many bad messages")

    def _close(self, code_name: str, reason: str) -> None:
        if self.close is None:
            self.close = Close(CLOSE_CODES[code_name], reason)
