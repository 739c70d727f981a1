"""A reference client: applies server frames exactly as PROTOCOL.md says, and is strict about it.

It raises `ProtocolViolation` for anything a correct server never sends (an add
for an object it already holds, a mod for one it does not, a batch for a key it
does not hold), so that the tests catch server bugs, not only wrong end states.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import orjson

_instances = itertools.count(1)


class ProtocolViolation(AssertionError):
    """The server sent something PROTOCOL.md does not allow."""


@dataclass
class Held:
    """One object the client holds; `instance` is its identity (kept across moves, snapshots)."""

    id: str
    t: str
    v: int
    s: dict[str, Any]
    k: str
    instance: int = field(default_factory=lambda: next(_instances))


class ReferenceClient:
    """The client-side cache of PROTOCOL.md version 1."""

    def __init__(self, maps: dict[str, Any] | None = None) -> None:
        self.maps = maps or {}
        self.held: set[str] = set()
        self.objs: dict[str, Held] = {}
        self.tick = 0
        self.teardowns: list[str] = []
        self.replies: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.resyncs = 0

    # -- frames ---------------------------------------------------------------------

    def apply(self, frame: bytes | str | dict[str, Any]) -> dict[str, Any]:
        msg = frame if isinstance(frame, dict) else orjson.loads(frame)
        kind = msg["m"]
        if kind == "hello":
            self.maps = msg["maps"]
            self.tick = msg["tick"]
        elif kind == "tick":
            self._apply_tick(msg)
        elif kind == "resync":
            self._apply_resync(msg)
        elif kind == "reply":
            self.replies.append(msg)
        elif kind == "error":
            self.errors.append(msg)
        elif kind == "pong":
            pass
        else:
            raise ProtocolViolation(f"unknown server message {kind!r}")
        return msg

    def _pos_fields(self, key: str) -> tuple[str, str]:
        spec = self.maps[key.split(":", 1)[0]]
        return spec["pos"][0], spec["pos"][1]

    def _apply_tick(self, msg: dict[str, Any]) -> None:
        if msg["n"] <= self.tick:
            raise ProtocolViolation(f"tick {msg['n']} after tick {self.tick}")
        self.tick = msg["n"]
        before = set(self.held)
        sub = msg.get("sub", {})
        sub_add = set(sub.get("add", []))
        seen: dict[str, list[str]] = {}
        for batch in msg.get("b", []):
            key = batch["k"]
            if key not in before:
                raise ProtocolViolation(f"batch for {key!r}, which the client does not hold")
            for a in batch.get("add", []):
                self._once(seen, a["id"], "add" if "from" not in a else "add-from")
                if "from" in a and a["from"] in before:
                    continue
                if a["id"] in self.objs:
                    raise ProtocolViolation(f"add for {a['id']!r}, which the client holds")
                self.objs[a["id"]] = Held(a["id"], a["t"], a["v"], dict(a["s"]), key)
            for m in batch.get("mod", []):
                self._once(seen, m["id"], "mod" if "to" not in m else "mod-to")
                o = self.objs.get(m["id"])
                if o is None:
                    raise ProtocolViolation(f"mod for {m['id']!r}, which the client does not hold")
                if o.k != key:
                    raise ProtocolViolation(
                        f"mod for {m['id']!r} under {key!r}; held under {o.k!r}"
                    )
                if m["v"] <= o.v:
                    continue
                to = m.get("to")
                if to is not None and to not in before and to not in sub_add:
                    self._teardown(m["id"])
                    continue
                o.s.update(m["d"])
                o.v = m["v"]
                if to is not None:
                    o.k = to
            if "mv" in batch:
                ids, xs, ys = batch["mv"]
                if not len(ids) == len(xs) == len(ys) or not ids:
                    raise ProtocolViolation("mv arrays of unequal length or empty")
                px, py = self._pos_fields(key)
                for oid, x, y in zip(ids, xs, ys, strict=True):
                    self._once(seen, oid, "mv")
                    o = self.objs.get(oid)
                    if o is None or o.k != key:
                        raise ProtocolViolation(f"mv for {oid!r}, not held under {key!r}")
                    o.s[px] = x
                    o.s[py] = y
                    o.v += 1
            for r in batch.get("rem", []):
                self._once(seen, r["id"], "rem")
                o = self.objs.get(r["id"])
                if o is None or o.k != key:
                    raise ProtocolViolation(f"rem for {r['id']!r}, not held under {key!r}")
                self._teardown(r["id"])
        for key in sub.get("rem", []):
            if key not in self.held:
                raise ProtocolViolation(f"sub.rem of {key!r}, which the client does not hold")
            self.held.discard(key)
            for oid in [o.id for o in self.objs.values() if o.k == key]:
                self._teardown(oid)
        for key in sub.get("add", []):
            if key in self.held:
                raise ProtocolViolation(f"sub.add of {key!r}, which the client holds")
            self.held.add(key)
        for snap in msg.get("snap", []):
            if snap["k"] not in sub_add:
                raise ProtocolViolation(f"snapshot of {snap['k']!r}, which was not just added")
            self._apply_snapshot(snap)

    @staticmethod
    def _once(seen: dict[str, list[str]], oid: str, what: str) -> None:
        # An object appears once per frame, except the two halves of a move.
        kinds = seen.setdefault(oid, [])
        kinds.append(what)
        if len(kinds) > 1 and sorted(kinds) != ["add-from", "mod-to"]:
            raise ProtocolViolation(f"{oid!r} appears more than once in one frame: {kinds}")

    def _apply_snapshot(self, snap: dict[str, Any]) -> None:
        key = snap["k"]
        for e in snap["objs"]:
            o = self.objs.get(e["id"])
            if o is None:
                self.objs[e["id"]] = Held(e["id"], e["t"], e["v"], dict(e["s"]), key)
            else:
                o.t, o.v, o.s, o.k = e["t"], e["v"], dict(e["s"]), key

    def _apply_resync(self, msg: dict[str, Any]) -> None:
        self.resyncs += 1
        self.tick = msg["n"]
        keep: set[str] = set()
        self.held = {s["k"] for s in msg["snap"]}
        for snap in msg["snap"]:
            self._apply_snapshot(snap)
            keep.update(e["id"] for e in snap["objs"])
        for oid in [i for i in self.objs if i not in keep]:
            self._teardown(oid)

    def _teardown(self, oid: str) -> None:
        del self.objs[oid]
        self.teardowns.append(oid)

    # -- comparison ---------------------------------------------------------------------

    def view(self) -> dict[str, tuple[str, int, dict[str, Any], str]]:
        """What the client holds: id -> (type, version, state, key)."""
        return {o.id: (o.t, o.v, o.s, o.k) for o in self.objs.values()}


def world_truth(world: Any, keys: set[str]) -> dict[str, tuple[str, int, dict[str, Any], str]]:
    """What a client holding `keys` should hold, read from the server's world."""
    out = {}
    for key in keys:
        for o in world.objects_under(key):
            out[o.id] = (o.synk_type, o.version, o.wire_state(), key)
    return out
