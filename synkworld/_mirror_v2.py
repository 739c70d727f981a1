"""The protocol v2 applier: `Mirror`'s cache, kept from binary frames (docs/protocol-v2.md).

`MirrorV2` holds what a v2 client holds, in the same form as `Mirror` (state
by field name, positions as the numbers v1 would send), so that a v1 client
and a v2 client of one server can be compared object for object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

from synkworld._errors import ProtocolViolationError
from synkworld._mirror import Held, Mirror
from synkworld._wire_v2 import (
    BATCH_DENSE,
    BATCH_ENTRIES,
    BATCH_HEAD_SHIFT,
    BATCH_LEAVE,
    BATCH_REM,
    FRAME_MESSAGE,
    FRAME_RESYNC,
    FRAME_TICK,
    TICK_BATCHES,
    TICK_SNAPS,
    TICK_SUB_ADD,
    TICK_SUB_REM,
    TICK_TYPES,
)

__all__ = ["MirrorV2", "Reader"]


class Reader:
    """A cursor over one frame's bytes."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u8(self) -> int:
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        data = self.data
        pos = self.pos
        b = data[pos]
        pos += 1
        if b < 0x80:
            self.pos = pos
            return b
        n = b & 0x7F
        shift = 7
        while True:
            b = data[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                self.pos = pos
                return n
            shift += 7
            if shift > 63:
                raise ProtocolViolationError("a varint longer than 10 bytes")

    def zigzag(self) -> int:
        z = self.varint()
        return (z >> 1) ^ -(z & 1)

    def packed(self) -> Any:
        n = self.varint()
        start = self.pos
        self.pos = start + n
        if self.pos > len(self.data):
            raise ProtocolViolationError("a MessagePack part runs past the frame")
        return msgpack.unpackb(self.data[start : self.pos], strict_map_key=False)

    def done(self) -> bool:
        return self.pos == len(self.data)


class _HeldV2(Held):
    __slots__ = ("slot", "tn")

    def __init__(
        self, obj_id: str, t: str, v: int, s: dict[str, Any], k: str, slot: int, tn: int
    ) -> None:
        super().__init__(obj_id, t, v, s, k)
        self.slot = slot
        self.tn = tn  # its type's number


class MirrorV2(Mirror):
    """What one protocol v2 client holds, kept by applying binary frames."""

    def __init__(
        self,
        maps: Mapping[str, Any] | None = None,
        *,
        strict: bool = True,
        keep_teardowns: bool = True,
    ) -> None:
        super().__init__(maps, strict=strict, keep_teardowns=keep_teardowns)
        self.types: dict[int, list[Any]] = {}
        self._map_names: dict[int, str] = {}
        self._scales: dict[str, float] = {}
        # key -> slot -> object
        self.slots: dict[str, dict[int, _HeldV2]] = {}
        if maps:
            self._learn_maps(maps)

    def _learn_maps(self, maps: Mapping[str, Any]) -> None:
        self.maps = {
            name: {k: v for k, v in spec.items() if k != "num"} for name, spec in maps.items()
        }
        self._map_names = {spec["num"]: name for name, spec in maps.items() if "num" in spec}
        self._scales = {name: 10.0 ** spec["prec"] for name, spec in maps.items()}

    # -- frames -----------------------------------------------------------------------

    def apply_frame(self, frame: bytes | str) -> dict[str, Any]:
        """Decodes and applies one v2 server frame; returns what it was (``{"m": kind, ...}``)."""
        if isinstance(frame, str) or not frame:
            self._violation("a protocol v2 frame must be binary and not empty")
            return {"m": "?"}
        kind = frame[0]
        if kind == FRAME_MESSAGE:
            msg: dict[str, Any] = msgpack.unpackb(frame[1:], strict_map_key=False)
            if msg.get("m") == "hello":
                self._learn_maps(msg["maps"])
                self.types = {d[0]: d for d in msg.get("types", ())}
                self.tick = msg["tick"]
            else:
                self.other(msg)
            return msg
        r = Reader(frame)
        r.u8()
        if kind == FRAME_TICK:
            n = self._tick(r)
            return {"m": "tick", "n": n}
        if kind == FRAME_RESYNC:
            n = self._resync(r)
            return {"m": "resync", "n": n}
        self._violation(f"unknown frame kind {kind}")
        return {"m": "?"}

    # -- keys and states ----------------------------------------------------------------

    def _key(self, r: Reader) -> str:
        tag = r.varint()
        if tag == 0:
            n = r.varint()
            start = r.pos
            r.pos += n
            return r.data[start : r.pos].decode()
        cx = r.zigzag()
        cy = r.zigzag()
        return f"{self._map_names[tag - 1]}:{cx}:{cy}"

    def _state(self, key: str, type_number: int, values: list[Any]) -> tuple[str, dict[str, Any]]:
        _, type_key, names, pos = self.types[type_number]
        state = dict(zip(names, values, strict=True))
        if pos is not None:
            scale = self._scale(key)
            for i in pos:
                state[names[i]] = state[names[i]] / scale
        return type_key, state

    def _scale(self, key: str) -> float:
        return self._scales[key.split(":", 1)[0]]

    def _types(self, r: Reader) -> None:
        for d in r.packed():
            self.types[d[0]] = d

    # -- tick ---------------------------------------------------------------------------

    def _tick(self, r: Reader) -> int:
        n = r.varint()
        if n <= self.tick:
            self._violation(f"tick {n} after tick {self.tick}")
        self.tick = n
        parts = r.u8()
        if parts & TICK_TYPES:
            self._types(r)
        removed = [self._key(r) for _ in range(r.varint())] if parts & TICK_SUB_REM else []
        added = [self._key(r) for _ in range(r.varint())] if parts & TICK_SUB_ADD else []
        before = set(self.held)
        sub_add = set(added)
        if parts & TICK_BATCHES:
            for _ in range(r.varint()):
                self._batch(r, before, sub_add)
        for key in removed:
            if key not in self.held:
                self._violation(f"sub.rem of {key!r}, which the client does not hold")
                continue
            self.held.discard(key)
            self.slots.pop(key, None)
            for oid in [o.id for o in self.objs.values() if o.k == key]:
                self._teardown(oid)
        for key in added:
            if key in self.held:
                self._violation(f"sub.add of {key!r}, which the client holds")
            self.held.add(key)
        if parts & TICK_SNAPS:
            for _ in range(r.varint()):
                key = self._key(r)
                entries = r.packed()
                if key not in sub_add:
                    self._violation(f"snapshot of {key!r}, which was not just added")
                    continue
                self._snapshot(key, entries)
        if not r.done():
            self._violation(f"{len(r.data) - r.pos} bytes after the end of a tick frame")
        return n

    def _batch(self, r: Reader, before: set[str], sub_add: set[str]) -> None:
        key = self._key(r)
        parts = r.varint()
        apply = key in before
        if not apply:
            self._violation(f"batch for {key!r}, which the client does not hold")
        table = self.slots.setdefault(key, {})
        if parts & BATCH_REM:
            for _ in range(r.varint()):
                slot = r.varint()
                if not apply:
                    continue
                o = table.pop(slot, None)
                if o is None or o.k != key:
                    self._violation(f"rem of slot {slot} of {key!r}, which holds nothing")
                    continue
                self._teardown(o.id)
        if parts & BATCH_LEAVE:
            for _ in range(r.varint()):
                slot = r.varint()
                to = self._key(r)
                if not apply:
                    continue
                o = table.get(slot)
                if o is None:
                    continue  # its add in `to` came first and took it
                del table[slot]
                if o.k != key:
                    continue
                if to in before or to in sub_add:
                    o.k = to
                    o.slot = -1
                else:
                    self._teardown(o.id)
        named: set[int] = set()  # the slots the adds and mods name
        if parts & BATCH_ENTRIES:
            adds, mods = r.packed()
            if apply:
                for slot, oid, type_number, v, values in adds:
                    self._add(key, table, slot, oid, type_number, v, values, before)
                    named.add(slot)
                for slot, v, diff in mods:
                    self._mod(key, table, slot, v, diff)
                    named.add(slot)
        count = parts >> BATCH_HEAD_SHIFT
        if not count:
            return
        dense = bool(parts & BATCH_DENSE)
        if not apply:
            for _ in range(count * (2 if dense else 3)):
                r.varint()
            return
        if dense:
            slots = [s for s in sorted(table) if s not in named]
            if len(slots) != count:
                self._violation(
                    f"dense motion of {count} objects in {key!r}, which holds {len(slots)} others"
                )
                for _ in range(count * 2):
                    r.varint()
                return
        px, py = self._pos_fields(key)
        scale = self._scale(key)
        for i in range(count):
            slot = slots[i] if dense else r.varint()
            dx = r.zigzag()
            dy = r.zigzag()
            o = table.get(slot)
            if o is None:
                self._violation(f"motion of slot {slot} of {key!r}, which holds nothing")
                continue
            s = o.s
            s[px] = (round(s[px] * scale) + dx) / scale
            s[py] = (round(s[py] * scale) + dy) / scale
            o.v += 1

    def _add(
        self,
        key: str,
        table: dict[int, _HeldV2],
        slot: int,
        oid: str,
        type_number: int,
        v: int,
        values: list[Any],
        before: set[str],
    ) -> None:
        if slot in table and table[slot].id != oid:
            self._violation(f"add into slot {slot} of {key!r}, which {table[slot].id!r} holds")
        type_key, state = self._state(key, type_number, values)
        o = self.objs.get(oid)
        if o is None:
            self.objs[oid] = o = _HeldV2(oid, type_key, v, state, key, slot, type_number)
        else:
            assert isinstance(o, _HeldV2)
            if o.k == key and o.slot != -1:
                self._violation(f"add for {oid!r}, which the client holds under {key!r}")
            elif o.k not in before:
                self._violation(f"add for {oid!r}, held under {o.k!r}, not held")
            old = self.slots.get(o.k)
            if old is not None and old.get(o.slot) is o:
                del old[o.slot]
            o.t, o.v, o.s, o.k, o.slot, o.tn = type_key, v, state, key, slot, type_number
        table[slot] = o

    def _mod(
        self, key: str, table: dict[int, _HeldV2], slot: int, v: int, diff: Mapping[int, Any]
    ) -> None:
        o = table.get(slot)
        if o is None:
            self._violation(f"mod of slot {slot} of {key!r}, which holds nothing")
            return
        if v <= o.v:
            return
        _, _, names, pos = self.types[o.tn]
        s = o.s
        for i, value in diff.items():
            s[names[i]] = value
        if pos is not None:
            scale = self._scale(key)
            for i in pos:
                if i in diff:
                    s[names[i]] = diff[i] / scale
        o.v = v

    def _snapshot(self, key: str, entries: list[list[Any]]) -> None:
        table: dict[int, _HeldV2] = {}
        self.slots[key] = table
        objs = self.objs
        for slot, oid, type_number, v, values in entries:
            type_key, state = self._state(key, type_number, values)
            o = objs.get(oid)
            if o is None:
                o = objs[oid] = _HeldV2(oid, type_key, v, state, key, slot, type_number)
            else:
                assert isinstance(o, _HeldV2)
                o.t, o.v, o.s, o.k, o.slot, o.tn = type_key, v, state, key, slot, type_number
            table[slot] = o

    # -- resync -------------------------------------------------------------------------

    def _resync(self, r: Reader) -> int:
        self.resyncs += 1
        n = r.varint()
        self.tick = n
        if r.u8() & TICK_TYPES:
            self._types(r)
        snaps = []
        for _ in range(r.varint()):
            key = self._key(r)
            snaps.append((key, r.packed()))
        self.held = {k for k, _ in snaps}
        self.slots = {}
        keep: set[str] = set()
        for key, entries in snaps:
            self._snapshot(key, entries)
            keep.update(e[1] for e in entries)
        for oid in [i for i in self.objs if i not in keep]:
            self._teardown(oid)
        return n
