"""Unit tests of client-message parsing and server-message encoding."""

from __future__ import annotations

import orjson
import pytest

from synkworld import BadJsonError, BadMessageError, ProtocolError, UnknownMessageError
from synkworld._protocol import (
    ERROR_CODES,
    CallMessage,
    PingMessage,
    SubMessage,
    ViewMessage,
    encode_error,
    encode_hello,
    encode_resync,
    encode_tick,
    parse_client_message,
)


def test_parses_the_four_client_messages() -> None:
    assert parse_client_message('{"m":"view","map":"main","rect":[0,1,2,3.5]}') == ViewMessage(
        "main", (0.0, 1.0, 2.0, 3.5), 1
    )
    assert parse_client_message(b'{"m":"sub","add":["a","a","b"]}') == SubMessage(("a", "b"), ())
    assert parse_client_message('{"m":"call","id":7,"name":"go","args":{"x":1}}') == CallMessage(
        7, "go", {"x": 1}
    )
    assert parse_client_message('{"m":"ping","t":12.5}') == PingMessage(12.5)


@pytest.mark.parametrize(
    ("frame", "error", "code"),
    [
        ("not json", BadJsonError, "bad_json"),
        ("[1,2]", BadJsonError, "bad_json"),
        ('"view"', BadJsonError, "bad_json"),
        ('{"x":1}', BadMessageError, "bad_message"),
        ('{"m":"fly"}', UnknownMessageError, "unknown_message"),
        ('{"m":"view","rect":[0,0,1]}', BadMessageError, "bad_message"),
        ('{"m":"view","rect":[0,0,"1",1]}', BadMessageError, "bad_message"),
        ('{"m":"view","rect":[0,0,1e300,1]}', BadMessageError, "bad_message"),
        ('{"m":"view","rect":[5,0,1,1]}', BadMessageError, "bad_message"),
        ('{"m":"view","rect":[0,0,1,1],"margin":-1}', BadMessageError, "bad_message"),
        ('{"m":"view","rect":[0,0,1,1],"margin":1.5}', BadMessageError, "bad_message"),
        ('{"m":"view","rect":[0,0,1,1],"zoom":2}', BadMessageError, "bad_message"),
        ('{"m":"sub","add":"room"}', BadMessageError, "bad_message"),
        ('{"m":"sub","add":[1]}', BadMessageError, "bad_message"),
        ('{"m":"sub","add":[""]}', BadMessageError, "bad_message"),
        ('{"m":"call","id":"1","name":"x"}', BadMessageError, "bad_message"),
        ('{"m":"call","id":1,"name":""}', BadMessageError, "bad_message"),
        ('{"m":"call","id":1,"name":"x","args":[]}', BadMessageError, "bad_message"),
        ('{"m":"ping","t":"now"}', BadMessageError, "bad_message"),
        ('{"m":"ping","t":true}', BadMessageError, "bad_message"),
    ],
)
def test_bad_frames_get_their_code(frame: str, error: type[ProtocolError], code: str) -> None:
    with pytest.raises(error) as e:
        parse_client_message(frame)
    assert e.value.code == code
    assert code in ERROR_CODES


def test_nan_and_infinity_are_not_json() -> None:
    for frame in ('{"m":"view","rect":[0,0,NaN,1]}', '{"m":"view","rect":[0,0,Infinity,1]}'):
        with pytest.raises(BadJsonError):
            parse_client_message(frame)


def test_call_errors_carry_the_call_id() -> None:
    with pytest.raises(BadMessageError) as e:
        parse_client_message('{"m":"call","id":3,"name":"x","args":5}')
    assert e.value.call_id == 3


def test_encoders() -> None:
    hello = orjson.loads(encode_hello("abc", 4, 20.0, {"main": {}}))
    assert hello == {
        "m": "hello",
        "proto": 1,
        "sid": "abc",
        "tick": 4,
        "rate": 20,
        "maps": {"main": {}},
    }
    assert encode_tick(3, [], [], [], []) is None
    frame = orjson.loads(encode_tick(3, [b'{"k":"a"}'], ["b"], [], [b'{"k":"b","objs":[]}']) or b"")
    assert frame == {
        "m": "tick",
        "n": 3,
        "b": [{"k": "a"}],
        "sub": {"add": ["b"]},
        "snap": [{"k": "b", "objs": []}],
    }
    assert orjson.loads(encode_resync(9, [])) == {"m": "resync", "n": 9, "snap": []}
    assert orjson.loads(encode_error("forbidden", "no", 2)) == {
        "m": "error",
        "id": 2,
        "code": "forbidden",
        "msg": "no",
    }
