"""The fuzz scenario's frames: twelve categories of what a careless or hostile client sends."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from bench.reliability.world import WorldSpec

Frame = tuple[str, bytes, bool]  # category, payload, sent as a text frame (else binary)


def _j(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:
        # orjson writes no integers beyond 64 bits; the fuzz wants them on the wire.
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class Fuzzer:
    """Makes fuzzed client frames from one seeded generator.

    Each category is a family of frames a careless or hostile client sends;
    "valid" frames (views, subs, pings, good calls) are mixed in so that
    sessions hold keys and get tick frames while the rest goes on.
    """

    def __init__(
        self, rng: random.Random, spec: WorldSpec, only: Sequence[str] | None = None
    ) -> None:
        self.rng = rng
        self.spec = spec
        self.categories: list[tuple[str, int, Callable[[], Frame]]] = [
            ("valid", 20, self.valid),
            ("binary", 7, self.binary),
            ("bad_utf8", 2, self.bad_utf8),
            ("bad_json", 10, self.bad_json),
            ("not_object", 5, self.not_object),
            ("unknown_m", 6, self.unknown_m),
            ("wrong_types", 12, self.wrong_types),
            ("view_numbers", 10, self.view_numbers),
            ("long_keys", 8, self.long_keys),
            ("too_many_keys", 6, self.too_many_keys),
            ("bad_call", 10, self.bad_call),
            ("oversized", 2, self.oversized),
        ]
        chosen = [c for c in self.categories if not only or c[0] in only]
        if not chosen:
            raise SystemExit(f"--only names none of {[c[0] for c in self.categories]}")
        self._names = [c[0] for c in chosen]
        self._weights = [c[1] for c in chosen]
        self._makers = {c[0]: c[2] for c in self.categories}

    def frame(self) -> Frame:
        """One fuzzed frame of a category drawn by weight."""
        name = self.rng.choices(self._names, self._weights)[0]
        return self._makers[name]()

    def _pick(self, options: Sequence[Any]) -> Any:
        return options[self.rng.randrange(len(options))]

    def _text(self, cat: str, payload: bytes | Any) -> Frame:
        return (cat, payload if isinstance(payload, bytes) else _j(payload), True)

    def ping(self) -> Frame:
        """A valid ping."""
        return self._text("valid", {"m": "ping", "t": self.rng.randrange(1 << 30)})

    def valid(self) -> Frame:
        """A message a correct client sends."""
        r, size = self.rng, self.spec.map_size
        kind = r.randrange(5)
        if kind == 0:
            x, y = r.uniform(0, size), r.uniform(0, size)
            w, h = r.uniform(10, 1500), r.uniform(10, 1200)
            return self._text(
                "valid", {"m": "view", "rect": [x, y, x + w, y + h], "margin": r.randrange(3)}
            )
        if kind == 1:
            key = self._pick(["chat:lobby", "chat:room-7", "layer.weather", "main:3:4", "ops"])
            field = self._pick(["add", "rem"])
            return self._text("valid", {"m": "sub", field: [key]})
        if kind == 2:
            return self.ping()
        if kind == 3:
            return self._text(
                "valid",
                {"m": "call", "id": r.randrange(1 << 31), "name": "echo", "args": {"value": 7}},
            )
        walker = f"w{r.randrange(max(1, self.spec.entities))}"
        args = {"id": walker, "dx": r.uniform(-5, 5), "dy": r.uniform(-5, 5)}
        return self._text(
            "valid", {"m": "call", "id": r.randrange(100), "name": "move", "args": args}
        )

    def binary(self) -> Frame:
        """Binary frames: random bytes, or a valid message sent as binary."""
        if self.rng.random() < 0.5:
            return ("binary", _j({"m": "ping", "t": 1}), False)
        return ("binary", self.rng.randbytes(self.rng.randrange(1, 300)), False)

    def bad_utf8(self) -> Frame:
        """Text frames that are not UTF-8 (the WebSocket layer must refuse them)."""
        bad = self._pick([b"\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80"])
        body = b'{"m":"ping","t":1,"x":"' + bad + b'"}'
        return ("bad_utf8", body, True)

    def bad_json(self) -> Frame:
        """Text that is not JSON."""
        r = self.rng
        good = _j({"m": "view", "map": "main", "rect": [1, 2, 300, 400], "margin": 1})
        options: list[bytes] = [
            good[: r.randrange(1, len(good))],
            b"",
            b"   ",
            b"{",
            b'{"m":"ping","t":NaN}',
            b'{"m":"ping","t":Infinity}',
            b'{"m":"view","rect":[-Infinity,0,1,1]}',
            b'{"m":"ping","t":1,}',
            b"{'m':'ping'}",
            b"[" * 3000 + b"]" * 3000,
            b'{"a":' * 1500 + b"1" + b"}" * 1500,
            b'{"m":"ping","t":1e999}',
            b'{"m":"ping","t":"\\ud800"}',
            b'{"m":"ping","t":1}{"m":"ping","t":2}',
            b'{"m":"ping",\x00"t":1}',
            bytes(r.randrange(32, 127) for _ in range(r.randrange(1, 200))),
        ]
        return ("bad_json", self._pick(options), True)

    def not_object(self) -> Frame:
        """Valid JSON that is not an object."""
        options = [b"[]", b'[{"m":"ping","t":1}]', b"1", b"-1.5", b'"ping"', b"null", b"true"]
        return ("not_object", self._pick(options), True)

    def unknown_m(self) -> Frame:
        """Objects whose `m` is no client message."""
        options: list[Any] = [
            {"m": "teleport"},
            {"m": ""},
            {"m": 5},
            {"m": None},
            {"m": ["view"]},
            {},
            {"x": 1},
            {"m": "VIEW", "rect": [0, 0, 1, 1]},
            {"m": "view\u0000"},
            {"m": "pong", "t": 1},
            {"m": "hello", "proto": 1},
            {"m": "tick", "n": 1, "b": []},
            {"m": "x" * 5000},
        ]
        return self._text("unknown_m", self._pick(options))

    def wrong_types(self) -> Frame:
        """Known kinds with fields of the wrong type, missing or extra."""
        options: list[Any] = [
            {"m": "view", "rect": "0,0,1,1"},
            {"m": "view", "rect": [0, 0, 1]},
            {"m": "view", "rect": [0, 0, 1, 1, 1]},
            {"m": "view", "rect": ["0", "0", "1", "1"]},
            {"m": "view", "rect": [True, 0, 1, 1]},
            {"m": "view", "rect": [None, 0, 1, 1]},
            {"m": "view", "rect": [[0], 0, 1, 1]},
            {"m": "view"},
            {"m": "view", "rect": [0, 0, 1, 1], "margin": "1"},
            {"m": "view", "rect": [0, 0, 1, 1], "margin": -1},
            {"m": "view", "rect": [0, 0, 1, 1], "margin": 1.5},
            {"m": "view", "rect": [0, 0, 1, 1], "margin": True},
            {"m": "view", "rect": [0, 0, 1, 1], "map": 5},
            {"m": "view", "rect": [0, 0, 1, 1], "map": ""},
            {"m": "view", "rect": [0, 0, 1, 1], "map": "atlantis"},
            {"m": "view", "rect": [0, 0, 1, 1], "zoom": 2},
            {"m": "sub", "add": "chat:lobby"},
            {"m": "sub", "add": [1, 2]},
            {"m": "sub", "add": [None]},
            {"m": "sub", "rem": {"k": 1}},
            {"m": "sub", "add": [""]},
            {"m": "sub", "add": ["a"], "rem": ["a"]},
            {"m": "sub", "add": [["chat:lobby"]]},
            {"m": "ping", "t": "now"},
            {"m": "ping", "t": [1]},
            {"m": "ping", "t": True},
            {"m": "ping", "t": None},
            {"m": "ping", "t": 1, "extra": 2},
            {"m": "call", "id": 1, "name": 5},
            {"m": "call", "id": 1, "name": "echo", "args": []},
            {"m": "call", "id": 1},
        ]
        return self._text("wrong_types", self._pick(options))

    def view_numbers(self) -> Frame:
        """`view` rectangles of huge, negative, tiny, NaN and out-of-range numbers."""
        r = self.rng
        pool: list[Any] = [
            1e300,
            -1e300,
            1e12,
            1e12 + 1,
            -1e12,
            5e11,
            2**63,
            2**64,
            -(2**63) - 1,
            10**30,
            1e-320,
            -0.0,
            0,
            -5000,
            1.7976931348623157e308,
            r.uniform(-1e6, 1e6),
            r.uniform(0, self.spec.map_size),
        ]
        if r.random() < 0.15:
            nan = self._pick([b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"1e400"])
            return ("view_numbers", b'{"m":"view","rect":[0,' + nan + b",100,100]}", True)
        rect = [self._pick(pool) for _ in range(4)]
        if r.random() < 0.4:
            rect = sorted(rect[:2]) + sorted(rect[2:])
            rect = [rect[0], rect[2], rect[1], rect[3]]
        margin = self._pick([0, 1, 3, 4, 100, 2**31, 2**63 - 1, 10**30, -(2**63)])
        msg: dict[str, Any] = {"m": "view", "rect": rect, "margin": margin}
        if r.random() < 0.2:
            msg["map"] = self._pick(["Main", "main ", "x" * 1000, "main:0:0"])
        return self._text("view_numbers", msg)

    def long_keys(self) -> Frame:
        """`sub` keys too long, not canonical, with control characters, of no map."""
        r = self.rng
        keys: list[str] = [
            "a" * 129,
            "a" * 128,
            "k" * 60_000,
            "main:" + "9" * 100 + ":1",
            "main:00:0",
            "main:-0:1",
            "main:+1:1",
            "main: 1:1",
            "main:1:1\n",
            " main:1:1",
            "main:1:1:1",
            "main:\u0663:\u0663",
            "nomap:1:1",
            "a\x00b",
            "tab\there",
            "ключ" * 32,
            "\U0001f600" * 40,
            "main:99999999:99999999",
            "main:-1:-1",
        ]
        field = "add" if r.random() < 0.8 else "rem"
        return self._text("long_keys", {"m": "sub", field: [self._pick(keys)]})

    def too_many_keys(self) -> Frame:
        """Too many keys, or too many fields."""
        r = self.rng
        n = r.randrange(1 << 20)
        kind = r.randrange(6)
        if kind == 0:
            return self._text(
                "too_many_keys", {"m": "sub", "add": [f"k{n}-{i}" for i in range(1025)]}
            )
        if kind == 1:
            return self._text(
                "too_many_keys", {"m": "sub", "add": [f"c{n}-{i}" for i in range(300)]}
            )
        if kind == 2:
            return self._text("too_many_keys", {"m": "sub", "add": ["chat:dup"] * 1000})
        if kind == 3:
            msg: dict[str, Any] = {"m": "ping", "t": 1}
            msg.update({f"f{i}": i for i in range(3000)})
            return self._text("too_many_keys", msg)
        if kind == 4:
            size = self.spec.map_size
            return self._text(
                "too_many_keys", {"m": "view", "rect": [0, 0, size, size], "margin": 3}
            )
        keys = [f"main:{i}:{j}" for i in range(20) for j in range(20)]
        return self._text("too_many_keys", {"m": "sub", "add": keys})

    def bad_call(self) -> Frame:
        """`call`s with bad ids, names and arguments, and handlers that fail."""
        r = self.rng
        good_id = r.randrange(1 << 31)
        options: list[Any] = [
            {"m": "call", "id": "1", "name": "echo", "args": {"value": 1}},
            {"m": "call", "id": 1.5, "name": "echo", "args": {"value": 1}},
            {"m": "call", "id": None, "name": "echo", "args": {"value": 1}},
            {"m": "call", "id": 2**70, "name": "echo", "args": {"value": 1}},
            {"m": "call", "id": -1, "name": "echo", "args": {"value": 1}},
            {"m": "call", "id": True, "name": "echo", "args": {"value": 1}},
            {"m": "call", "id": [], "name": "echo"},
            {"m": "call", "id": good_id, "name": ""},
            {"m": "call", "id": good_id, "name": "x" * 65},
            {"m": "call", "id": good_id, "name": "nope"},
            {"m": "call", "id": good_id, "name": "truth\u0000"},
            {"m": "call", "id": good_id, "name": "echo", "args": "value"},
            {"m": "call", "id": good_id, "name": "echo", "args": {"value": "x"}},
            {"m": "call", "id": good_id, "name": "echo", "args": {"value": 2**70}},
            {"m": "call", "id": good_id, "name": "echo", "args": {"value": 1.5}},
            {"m": "call", "id": good_id, "name": "echo", "args": {"value": True}},
            {"m": "call", "id": good_id, "name": "echo", "args": {}},
            {"m": "call", "id": good_id, "name": "echo", "args": {"value": 1, "more": 2}},
            {"m": "call", "id": good_id, "name": "echo", "args": {"value": 1, "text": 5}},
            {"m": "call", "id": good_id, "name": "move", "args": {"id": 5, "dx": 0, "dy": 0}},
            {
                "m": "call",
                "id": good_id,
                "name": "move",
                "args": {"id": "nobody", "dx": 0, "dy": 0},
            },
            {"m": "call", "id": good_id, "name": "move", "args": {"id": "w0", "dx": "1", "dy": 0}},
            {
                "m": "call",
                "id": good_id,
                "name": "move",
                "args": {"id": "w1", "dx": 1e308, "dy": 0},
            },
            {
                "m": "call",
                "id": good_id,
                "name": "move",
                "args": {"id": "w2", "dx": -1e13, "dy": 1},
            },
            {"m": "call", "id": good_id, "name": "fail"},
            {"m": "call", "id": good_id, "name": "fail", "args": {"x": 1}},
        ]
        return self._text("bad_call", self._pick(options))

    def oversized(self) -> Frame:
        """A frame over the 64 KiB limit (the server closes with 1009)."""
        pad = "p" * self.rng.randrange(65 * 1024, 300 * 1024)
        return self._text("oversized", {"m": "ping", "t": 1, "pad": pad})
