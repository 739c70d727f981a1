"""The protocol applier: a client's cache of keys and objects, kept by applying server frames.

`Mirror` applies protocol v1 frames (`hello`, `tick`, `resync`) exactly as
docs/protocol.md says: the batches against the keys held before the frame,
then `sub.rem`, `sub.add`, the snapshots. It is strict about what a correct
server never sends (an add for an object it holds, a mod for one it does not,
a batch for a key it does not hold, an object twice in a frame): a strict
mirror raises `ProtocolViolationError`, a lenient one counts the violation
and goes on. It is what the tests' reference client is
(`synkworld.testing.ReferenceClient`), what the load test's sampled clients
keep, and what a process keeps of cells other processes own.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import orjson

from synkworld._errors import ProtocolViolationError

__all__ = ["Held", "Mirror"]

_instances = itertools.count(1)

View = dict[str, tuple[str, int, dict[str, Any], str]]


class Held:
    """One object the mirror holds; `instance` is its identity, kept across moves and snapshots."""

    __slots__ = ("id", "instance", "k", "s", "t", "v")

    def __init__(self, obj_id: str, t: str, v: int, s: dict[str, Any], k: str) -> None:
        self.id = obj_id
        self.t = t
        self.v = v
        self.s = s
        self.k = k
        self.instance = next(_instances)

    def __repr__(self) -> str:
        return f"Held({self.id!r}, {self.t!r}, v{self.v}, {self.k!r}, {self.s!r})"


class Mirror:
    """What one client holds: its keys and its objects, kept by applying frames."""

    def __init__(
        self,
        maps: Mapping[str, Any] | None = None,
        *,
        strict: bool = True,
        keep_teardowns: bool = True,
    ) -> None:
        self.maps: dict[str, Any] = dict(maps or {})
        self.strict = strict
        self.held: set[str] = set()
        self.objs: dict[str, Held] = {}
        self.tick = 0
        self.resyncs = 0
        self.violations = 0
        self.violation_examples: list[str] = []
        # The ids of the objects torn down, in order (a client's "remove" events).
        self.teardowns: list[str] | None = [] if keep_teardowns else None
        self.teardown_count = 0

    # -- frames -----------------------------------------------------------------------

    def apply_frame(self, frame: bytes | str) -> dict[str, Any]:
        """Decodes and applies one server frame; returns the message."""
        msg: dict[str, Any] = orjson.loads(frame)
        self.apply(msg)
        return msg

    def apply(self, msg: Mapping[str, Any]) -> None:
        """Applies one decoded server message (kinds other than hello, tick, resync: `other`)."""
        kind = msg.get("m")
        if kind == "tick":
            self._apply_tick(msg)
        elif kind == "resync":
            self._apply_resync(msg)
        elif kind == "hello":
            self.maps = dict(msg["maps"])
            self.tick = msg["tick"]
        else:
            self.other(msg)

    def other(self, msg: Mapping[str, Any]) -> None:
        """A reply, error, pong or unknown message; a subclass keeps what it needs."""
        if msg.get("m") not in ("reply", "error", "pong"):
            self._violation(f"unknown server message {msg.get('m')!r}")

    def view(self) -> View:
        """What the client holds: id -> (type, version, state, key)."""
        return {o.id: (o.t, o.v, o.s, o.k) for o in self.objs.values()}

    # -- the rules ----------------------------------------------------------------------

    def _violation(self, what: str) -> None:
        if self.strict:
            raise ProtocolViolationError(what)
        self.violations += 1
        if len(self.violation_examples) < 5:
            self.violation_examples.append(what)

    def _pos_fields(self, key: str) -> tuple[str, str]:
        spec = self.maps[key.split(":", 1)[0]]
        return spec["pos"][0], spec["pos"][1]

    def _apply_tick(self, msg: Mapping[str, Any]) -> None:
        n = msg["n"]
        if n <= self.tick:
            self._violation(f"tick {n} after tick {self.tick}")
        self.tick = n
        objs = self.objs
        before = self.held
        sub = msg.get("sub") or {}
        sub_add = set(sub.get("add", ()))
        seen: dict[str, list[str]] = {}
        for batch in msg.get("b", ()):
            key = batch["k"]
            if key not in before:
                self._violation(f"batch for {key!r}, which the client does not hold")
                continue
            for a in batch.get("add", ()):
                frm = a.get("from")
                self._once(seen, a["id"], "add" if frm is None else "add-from")
                if frm is not None and frm in before:
                    continue  # the move arrives as the old cell's mod
                if a["id"] in objs:
                    self._violation(f"add for {a['id']!r}, which the client holds")
                    continue
                objs[a["id"]] = Held(a["id"], a["t"], a["v"], dict(a["s"]), key)
            for m in batch.get("mod", ()):
                to = m.get("to")
                self._once(seen, m["id"], "mod" if to is None else "mod-to")
                o = objs.get(m["id"])
                if o is None:
                    self._violation(f"mod for {m['id']!r}, which the client does not hold")
                    continue
                if o.k != key:
                    self._violation(f"mod for {m['id']!r} under {key!r}; held under {o.k!r}")
                    continue
                if m["v"] <= o.v:
                    continue
                if to is not None and to not in before and to not in sub_add:
                    self._teardown(m["id"])
                    continue
                o.s.update(m["d"])
                o.v = m["v"]
                if to is not None:
                    o.k = to
            mv = batch.get("mv")
            if mv is not None:
                ids, xs, ys = mv
                if not len(ids) == len(xs) == len(ys) or not ids:
                    self._violation("mv arrays of unequal length or empty")
                    continue
                px, py = self._pos_fields(key)
                for oid, x, y in zip(ids, xs, ys, strict=True):
                    self._once(seen, oid, "mv")
                    o = objs.get(oid)
                    if o is None or o.k != key:
                        self._violation(f"mv for {oid!r}, not held under {key!r}")
                        continue
                    s = o.s
                    s[px] = x
                    s[py] = y
                    o.v += 1
            for r in batch.get("rem", ()):
                self._once(seen, r["id"], "rem")
                o = objs.get(r["id"])
                if o is None or o.k != key:
                    self._violation(f"rem for {r['id']!r}, not held under {key!r}")
                    continue
                self._teardown(r["id"])
        for key in sub.get("rem", ()):
            if key not in self.held:
                self._violation(f"sub.rem of {key!r}, which the client does not hold")
                continue
            self.held.discard(key)
            for oid in [o.id for o in objs.values() if o.k == key]:
                self._teardown(oid)
        for key in sub.get("add", ()):
            if key in self.held:
                self._violation(f"sub.add of {key!r}, which the client holds")
            self.held.add(key)
        for snap in msg.get("snap", ()):
            if snap["k"] not in sub_add:
                self._violation(f"snapshot of {snap['k']!r}, which was not just added")
                continue
            self._apply_snapshot(snap)

    def _once(self, seen: dict[str, list[str]], oid: str, what: str) -> None:
        # An object appears once per frame, except the two halves of a move.
        kinds = seen.get(oid)
        if kinds is None:
            seen[oid] = [what]
            return
        kinds.append(what)
        if sorted(kinds) != ["add-from", "mod-to"]:
            self._violation(f"{oid!r} appears more than once in one frame: {kinds}")

    def _apply_snapshot(self, snap: Mapping[str, Any]) -> None:
        key = snap["k"]
        objs = self.objs
        for e in snap["objs"]:
            o = objs.get(e["id"])
            if o is None:
                objs[e["id"]] = Held(e["id"], e["t"], e["v"], dict(e["s"]), key)
            else:
                o.t, o.v, o.s, o.k = e["t"], e["v"], dict(e["s"]), key

    def _apply_resync(self, msg: Mapping[str, Any]) -> None:
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
        self.teardown_count += 1
        if self.teardowns is not None:
            self.teardowns.append(oid)
