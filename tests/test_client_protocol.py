"""The per-client protocol without a network: frames and a fake clock in, outcomes out."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from synkworld import (
    BadArgsError,
    GridMap,
    HandlerFailedError,
    Limits,
    Session,
    World,
)
from synkworld._client_protocol import CheckKeys, ClientProtocol, Close, RunCall, TokenBucket
from synkworld.testing import FakeClock

GRID = World(GridMap(cell_size=100, bounds=(0, 0, 1000, 1000))).grid


class Harness:
    """A protocol over a session, a fake clock, and the frames it queued, decoded."""

    def __init__(self, *, checks_keys: bool = False, **limits: Any) -> None:
        self.clock = FakeClock()
        self.limits = Limits(**limits)
        self.session = Session("s1", GRID, limits=self.limits)
        self.codes: list[str] = []
        self.protocol = ClientProtocol(
            self.session,
            limits=self.limits,
            now=self.clock(),
            checks_keys=checks_keys,
            on_error=self.codes.append,
        )

    def send(self, msg: dict[str, Any] | str) -> CheckKeys | RunCall | None:
        data = msg if isinstance(msg, str) else orjson.dumps(msg).decode()
        return self.protocol.receive_text(data, now=self.clock(), tick=7)

    def out(self) -> list[dict[str, Any]]:
        frames = []
        while (frame := self.session.pop()) is not None:
            frames.append(orjson.loads(frame))
        return frames

    def error(self) -> dict[str, Any]:
        (frame,) = self.out()
        assert frame["m"] == "error"
        return frame


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("this is not json", "bad_json"),
        ("[1, 2, 3]", "bad_json"),
        ("42", "bad_json"),
        ('{"no_m": 1}', "bad_message"),
        ('{"m": "teleport"}', "unknown_message"),
        ('{"m": "view", "rect": "everywhere"}', "bad_message"),
        ('{"m": "view", "rect": [0, 0, 10]}', "bad_message"),
        ('{"m": "view", "rect": [0, 0, NaN, 10]}', "bad_json"),
        ('{"m": "view", "rect": [0, 0, 1e308, 10]}', "bad_message"),
        ('{"m": "view", "rect": [10, 10, 0, 0]}', "bad_message"),
        ('{"m": "view", "map": "moon", "rect": [0, 0, 1, 1]}', "bad_message"),
        ('{"m": "view", "rect": [0, 0, 1, 1], "margin": "wide"}', "bad_message"),
        ('{"m": "sub", "add": "room"}', "bad_message"),
        ('{"m": "sub", "add": [1, 2]}', "bad_message"),
        ('{"m": "sub", "add": ["a"], "rem": ["a"]}', "bad_message"),
        ('{"m": "sub", "add": ["nomap:1:1"]}', "bad_message"),
        ('{"m": "sub", "add": ["main:00:0"]}', "bad_message"),
        ('{"m": "sub", "add": ["main:0:0\\n"]}', "bad_message"),
        ('{"m": "call", "id": "x", "name": "f"}', "bad_message"),
        ('{"m": "ping", "t": "soon"}', "bad_message"),
        ('{"m": "ping", "t": 1, "extra": 2}', "bad_message"),
    ],
)
def test_a_bad_frame_gets_its_code_and_changes_nothing(frame: str, code: str) -> None:
    h = Harness()
    assert h.send(frame) is None
    err = h.error()
    assert (err["code"], err["id"]) == (code, None)
    assert err["msg"]
    assert h.protocol.close is None
    assert h.session.wanted == set()
    assert h.codes == [code]


def test_hello_ping_view_and_sub() -> None:
    h = Harness()
    h.protocol.hello(5, 20.0, GRID.describe())
    (hello,) = h.out()
    assert (hello["m"], hello["proto"], hello["sid"], hello["tick"], hello["rate"]) == (
        "hello",
        1,
        "s1",
        5,
        20,
    )
    h.send({"m": "ping", "t": 3.5})
    assert h.out() == [{"m": "pong", "t": 3.5, "n": 7}]
    assert h.send({"m": "view", "rect": [0, 0, 150, 50], "margin": 0}) is None
    assert h.session.wanted == {"main:0:0", "main:1:0"}
    h.send({"m": "sub", "add": ["lobby"], "rem": ["main:1:0"]})
    assert h.session.wanted == {"main:0:0", "lobby"}
    assert h.out() == []


def test_too_many_keys_changes_nothing() -> None:
    h = Harness(max_keys=3)
    h.send({"m": "sub", "add": ["a", "b"]})
    h.send({"m": "sub", "add": ["c", "d"]})
    assert h.error()["code"] == "too_many_keys"
    assert h.session.wanted == {"a", "b"}


def test_a_binary_frame_is_bad_json() -> None:
    h = Harness()
    h.protocol.receive_binary(now=h.clock())
    assert h.error()["code"] == "bad_json"
    assert h.protocol.close is None


def test_the_rate_limit_refills_with_time_and_refusals_count_toward_the_close() -> None:
    h = Harness(rate_limit_per_s=5, rate_limit_burst=10, max_errors=8)
    for i in range(10):
        h.send({"m": "ping", "t": i})
    assert [f["m"] for f in h.out()] == ["pong"] * 10
    h.send({"m": "ping", "t": 10})
    assert h.error()["code"] == "rate_limited"
    h.clock.advance(0.2)  # one token back
    h.send({"m": "ping", "t": 11})
    assert h.out() == [{"m": "pong", "t": 11, "n": 7}]
    for i in range(8):
        h.send({"m": "ping", "t": 20 + i})
    assert [f["code"] for f in h.out()] == ["rate_limited"] * 8
    assert h.protocol.close == Close(1008, "too many bad messages")
    assert h.send({"m": "ping", "t": 99}) is None  # closing: nothing more is read
    assert h.out() == []


def test_errors_close_only_when_over_the_budget_within_the_window() -> None:
    h = Harness(max_errors=3, error_window_s=10)
    for _ in range(3):
        h.send("garbage")
        h.clock.advance(4)
    assert h.protocol.close is None  # the first fell out of the window
    h.send("garbage")
    h.send("garbage")
    assert h.protocol.close is not None and h.protocol.close.code == 1008
    assert len(h.out()) == 5


def test_keys_the_hook_allows_are_taken_and_any_refusal_refuses_the_message() -> None:
    h = Harness(checks_keys=True)
    req = h.send({"m": "sub", "add": ["lobby", "private:ann"]})
    assert isinstance(req, CheckKeys)
    assert req.keys == ("lobby", "private:ann")
    assert h.session.wanted == set()  # nothing before the answer
    h.protocol.keys_checked(req, ["lobby", "private:ann"], now=h.clock())
    assert h.session.wanted == {"lobby", "private:ann"}
    # Only newly added keys are asked about.
    req = h.send({"m": "sub", "add": ["lobby", "private:bob"]})
    assert isinstance(req, CheckKeys) and req.keys == ("private:bob",)
    h.protocol.keys_checked(req, [], now=h.clock())
    err = h.error()
    assert err["code"] == "forbidden" and "private:bob" in err["msg"]
    assert h.session.wanted == {"lobby", "private:ann"}
    assert h.send({"m": "sub", "rem": ["lobby"]}) is None  # removing asks nothing


@pytest.mark.parametrize("answer", [RuntimeError("a bug"), None, "lobby", 42, True])
def test_a_failing_or_nonsensical_hook_answer_is_forbidden(answer: Any) -> None:
    h = Harness(checks_keys=True)
    req = h.send({"m": "sub", "add": ["lobby"]})
    assert isinstance(req, CheckKeys)
    h.protocol.keys_checked(req, answer, now=h.clock())
    err = h.error()
    assert err["code"] == "forbidden"
    assert "could not check" in err["msg"]
    assert h.session.wanted == set()
    assert h.protocol.close is None


def test_calls_are_requests_answered_by_reply_or_error_with_their_id() -> None:
    h = Harness(max_errors=2)
    req = h.send({"m": "call", "id": 4, "name": "sail", "args": {"dx": 1}})
    assert req == RunCall(4, "sail", {"dx": 1})
    h.protocol.call_answered(req, {"x": 1.0})
    assert h.out() == [{"m": "reply", "id": 4, "ok": {"x": 1.0}}]
    for i in range(5):
        h.protocol.call_failed(RunCall(i, "sail", {}), HandlerFailedError("sail failed"), now=0)
    assert [f["id"] for f in h.out()] == [0, 1, 2, 3, 4]
    assert h.protocol.close is None  # the application's failures do not count
    for i in range(3):
        h.protocol.call_failed(RunCall(10 + i, "sail", {}), BadArgsError("no"), now=0)
    assert [(f["code"], f["id"]) for f in h.out()] == [("bad_args", 10 + i) for i in range(3)]
    assert h.protocol.close is not None and h.protocol.close.code == 1008


def test_shutdown_and_lag_decide_their_close_codes() -> None:
    h = Harness()
    h.protocol.going_away()
    assert h.protocol.close == Close(1001, "server shutting down")
    h.protocol.too_far_behind()  # the first decision stands
    assert h.protocol.close.code == 1001
    lagging = Harness()
    lagging.session.offer(b"x" * 10, 0.0)
    lagging.protocol.too_far_behind()
    assert lagging.protocol.close == Close(1013, "too far behind; reconnect")
    assert lagging.session.queued_frames == 0 and lagging.session.closed


def test_the_token_bucket_takes_the_time_it_is_given() -> None:
    bucket = TokenBucket(2.0, 2.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]
    assert bucket.take(0.5)
    assert not bucket.take(0.5)
    assert bucket.take(10.0) and bucket.take(10.0) and not bucket.take(10.0)
