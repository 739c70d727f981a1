"""The load generator's view of a client: its cache, its truth, where its bytes go.

A sampled client's cache is synkworld's own protocol applier (`synkworld.Mirror`
for protocol v1, `MirrorV2` for v2; lenient: it counts violations); `holding`
and `compare_with_truth` compare it with what the server says it should hold;
`FrameBreakdown` (v1's JSON frames) and `FrameBreakdownV2` (v2's binary frames)
say where a frame's bytes go.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import msgpack
import orjson

from synkworld import Mirror
from synkworld._mirror_v2 import MirrorV2, Reader
from synkworld._wire_v2 import (
    BATCH_DENSE,
    BATCH_ENTRIES,
    BATCH_HEAD_SHIFT,
    BATCH_LEAVE,
    BATCH_REM,
    FRAME_TICK,
    TICK_BATCHES,
    TICK_SNAPS,
    TICK_SUB_ADD,
    TICK_SUB_REM,
    TICK_TYPES,
)

__all__ = [
    "FrameBreakdown",
    "FrameBreakdownV2",
    "cache_digest",
    "compare_with_truth",
    "holding",
    "new_breakdown",
    "sampled_client",
]


def _no_errors(mirror: Mirror, msg: Mapping[str, Any]) -> bool:
    # A load-test client sends nothing a server should refuse.
    if msg.get("m") == "error":
        mirror._violation(f"error frame: {msg.get('code')}: {msg.get('msg')}")
        return False
    return True


class _Sampled(Mirror):
    def other(self, msg: Mapping[str, Any]) -> None:
        if _no_errors(self, msg):
            super().other(msg)


class _SampledV2(MirrorV2):
    def other(self, msg: Mapping[str, Any]) -> None:
        if _no_errors(self, msg):
            super().other(msg)


def sampled_client(proto: int = 1) -> Mirror:
    """The cache of a sampled client of protocol `proto`: synkworld's applier, counting what
    a correct server never sends (an error frame too) instead of raising, keeping no list
    of teardowns."""
    if proto == 2:
        return _SampledV2(strict=False, keep_teardowns=False)
    return _Sampled(strict=False, keep_teardowns=False)


def holding(mirror: Mirror) -> dict[str, Any]:
    """What a client holds, in the form the server's truth route answers."""
    objs = {o.id: [o.t, o.v, o.s, o.k] for o in mirror.objs.values()}
    return {"held": sorted(mirror.held), "objs": objs}


def _canonical(view: dict[str, Any]) -> bytes:
    return orjson.dumps(view, option=orjson.OPT_SORT_KEYS)


def cache_digest(view: dict[str, Any]) -> str:
    """A short digest of a client's holding (keys and objects), for comparing runs."""
    return hashlib.sha256(_canonical(view)).hexdigest()[:16]


def compare_with_truth(view: dict[str, Any], truth: dict[str, Any]) -> tuple[int, list[str]]:
    """How many keys and objects differ between a client's holding and the server's truth,
    with a few examples (0 and [] when they are equal)."""
    examples: list[str] = []
    mine_keys, their_keys = set(view["held"]), set(truth["held"])
    bad = len(mine_keys ^ their_keys)
    if bad:
        examples.append(
            f"keys: client-only {sorted(mine_keys - their_keys)[:3]}, "
            f"server-only {sorted(their_keys - mine_keys)[:3]}"
        )
    # Both sides went through JSON, so equal values compare equal exactly.
    mine: dict[str, Any] = view["objs"]
    theirs: dict[str, Any] = truth["objs"]
    only_mine = sorted(mine.keys() - theirs.keys())
    only_theirs = sorted(theirs.keys() - mine.keys())
    wrong = sorted(oid for oid in mine.keys() & theirs.keys() if list(mine[oid]) != theirs[oid])
    examples += [f"{oid}: held by the client only" for oid in only_mine[:3]]
    examples += [f"{oid}: missing on the client" for oid in only_theirs[:3]]
    examples += [f"{oid}: client {mine[oid]} != server {theirs[oid]}" for oid in wrong[:3]]
    return bad + len(only_mine) + len(only_theirs) + len(wrong), examples


@dataclass
class FrameBreakdown:
    """Where the bytes of sampled tick frames go, summed over the frames seen."""

    frames: int = 0
    total: int = 0
    envelope: int = 0  # {"m":"tick","n":…,"b":[…]} and the separators between batches
    batch_overhead: int = 0  # {"k":"main:12:3","mv":[…]} around the ids and numbers: per cell
    batches: int = 0
    mv_entities: int = 0
    mv_ids: int = 0  # the id strings of mv arrays, quotes and commas included
    mv_numbers: int = 0  # the x and y arrays of mv
    mod_add_rem: int = 0  # per-object entries: crossings, hp changes, creations, deletions
    mod_add_rem_entities: int = 0
    sub_snap: int = 0  # subscription changes and their snapshots

    def add(self, raw: bytes, msg: dict[str, Any]) -> None:
        """Counts one tick frame: its raw bytes and its decoded message."""
        dumps = orjson.dumps
        self.frames += 1
        size = len(raw)
        self.total += size
        inside = 0
        for batch in msg.get("b", ()):
            b_size = len(dumps(batch))
            inside += b_size
            self.batches += 1
            content = 0
            mv = batch.get("mv")
            if mv is not None:
                ids = len(dumps(mv[0]))
                nums = len(dumps(mv[1])) + len(dumps(mv[2]))
                self.mv_ids += ids
                self.mv_numbers += nums
                self.mv_entities += len(mv[0])
                content += ids + nums
            for part in ("add", "mod", "rem"):
                entries = batch.get(part)
                if entries:
                    n = len(dumps(entries))
                    self.mod_add_rem += n
                    self.mod_add_rem_entities += len(entries)
                    content += n
            self.batch_overhead += b_size - content
        sub_snap = 0
        if "sub" in msg:
            sub_snap += len(dumps(msg["sub"])) + len(b',"sub":')
        if "snap" in msg:
            sub_snap += len(dumps(msg["snap"])) + len(b',"snap":')
        self.sub_snap += sub_snap
        self.envelope += size - inside - sub_snap

    def summary(self) -> dict[str, Any]:
        """Totals and per-frame, per-entity figures."""
        f = max(self.frames, 1)
        ents = self.mv_entities + self.mod_add_rem_entities
        parts = {
            "envelope": self.envelope,
            "per_cell_overhead": self.batch_overhead,
            "mv_ids": self.mv_ids,
            "mv_numbers": self.mv_numbers,
            "mod_add_rem_entries": self.mod_add_rem,
            "sub_and_snapshots": self.sub_snap,
        }
        total = max(self.total, 1)
        return {
            "proto": 1,
            "frames_sampled": self.frames,
            "mean_frame_bytes": round(self.total / f, 1),
            "mean_batches_per_frame": round(self.batches / f, 2),
            "mean_entities_per_frame": round(ents / f, 2),
            "bytes_per_entity_update": round(self.total / max(ents, 1), 2),
            "per_cell_overhead_bytes_per_batch": round(
                self.batch_overhead / max(self.batches, 1), 2
            ),
            "mv_bytes_per_entity": round(
                (self.mv_ids + self.mv_numbers) / max(self.mv_entities, 1), 2
            ),
            "bytes_per_frame": {k: round(v / f, 1) for k, v in parts.items()},
            "share": {k: round(v / total, 4) for k, v in parts.items()},
        }

    def merge(self, other: dict[str, int]) -> None:
        """Adds the raw counters of another breakdown (from `raw()`)."""
        for k, v in other.items():
            setattr(self, k, getattr(self, k) + v)

    def raw(self) -> dict[str, int]:
        """The raw counters, to send across processes as JSON."""
        return {
            k: getattr(self, k)
            for k in (
                "frames",
                "total",
                "envelope",
                "batch_overhead",
                "batches",
                "mv_entities",
                "mv_ids",
                "mv_numbers",
                "mod_add_rem",
                "mod_add_rem_entities",
                "sub_snap",
            )
        }


def _skip_key(r: Reader) -> None:
    if r.varint() == 0:  # a channel key: its length, then its bytes
        n = r.varint()  # (not `r.pos += r.varint()`: that adds to the position before it)
        r.pos += n
    else:  # a grid key: zigzag cx, zigzag cy
        r.varint()
        r.varint()


@dataclass
class FrameBreakdownV2:
    """Where the bytes of sampled protocol v2 tick frames go (docs/protocol-v2.md), summed.

    Every byte of a frame is in exactly one part: the frame's header (its kind, tick
    and parts bytes, the type definitions and the batch count), the per-cell
    overhead of each batch (its key, its head varint with the motion count and the
    part bits, the rem and leave counts and the MessagePack length), the motion
    entries (slot, dx, dy; dx, dy in a dense batch), the MessagePack entries
    (adds and mods), the leaves and rems, and the subscription change with its
    snapshots. A frame that does not read to its last byte raises ValueError.
    """

    frames: int = 0
    total: int = 0
    header: int = 0
    batches: int = 0
    batch_overhead: int = 0
    motion: int = 0
    motion_entities: int = 0
    dense_batches: int = 0  # batches whose motion entries go without their slots
    entries: int = 0  # the MessagePack [adds, mods] of the batches
    adds: int = 0
    mods: int = 0
    leave_rem: int = 0
    leaves: int = 0
    rems: int = 0
    sub_snap: int = 0
    snapshots: int = 0
    snapshot_objects: int = 0

    def add(self, raw: bytes, msg: Any = None) -> None:
        """Counts one tick frame from its bytes (`msg`, the decoded v1 message, is unused)."""
        if not raw or raw[0] != FRAME_TICK:
            return
        r = Reader(raw)
        r.u8()
        r.varint()
        parts = r.u8()
        if parts & TICK_TYPES:
            n = r.varint()
            r.pos += n
        header = r.pos
        sub_snap = 0
        for bit in (TICK_SUB_REM, TICK_SUB_ADD):
            if parts & bit:
                start = r.pos
                for _ in range(r.varint()):
                    _skip_key(r)
                sub_snap += r.pos - start
        if parts & TICK_BATCHES:
            start = r.pos
            count = r.varint()
            header += r.pos - start
            for _ in range(count):
                self._batch(r)
        if parts & TICK_SNAPS:
            start = r.pos
            for _ in range(r.varint()):
                _skip_key(r)
                n = r.varint()
                self.snapshot_objects += len(msgpack.unpackb(raw[r.pos : r.pos + n]))
                r.pos += n
                self.snapshots += 1
            sub_snap += r.pos - start
        if r.pos != len(raw):
            raise ValueError(f"a v2 tick frame of {len(raw)} bytes read to {r.pos}")
        self.frames += 1
        self.total += len(raw)
        self.header += header
        self.sub_snap += sub_snap

    def _batch(self, r: Reader) -> None:
        self.batches += 1
        start = r.pos
        _skip_key(r)
        parts = r.varint()  # the head: motion count << 4 | the part bits
        overhead = r.pos - start
        if parts & BATCH_REM:
            start = r.pos
            count = r.varint()
            overhead += r.pos - start
            start = r.pos
            for _ in range(count):
                r.varint()
            self.leave_rem += r.pos - start
            self.rems += count
        if parts & BATCH_LEAVE:
            start = r.pos
            count = r.varint()
            overhead += r.pos - start
            start = r.pos
            for _ in range(count):
                r.varint()
                _skip_key(r)
            self.leave_rem += r.pos - start
            self.leaves += count
        if parts & BATCH_ENTRIES:
            start = r.pos
            n = r.varint()
            overhead += r.pos - start
            adds, mods = msgpack.unpackb(r.data[r.pos : r.pos + n], strict_map_key=False)
            r.pos += n
            self.entries += n
            self.adds += len(adds)
            self.mods += len(mods)
        count = parts >> BATCH_HEAD_SHIFT
        if count:
            dense = bool(parts & BATCH_DENSE)
            start = r.pos
            for _ in range((2 if dense else 3) * count):
                r.varint()
            self.motion += r.pos - start
            self.motion_entities += count
            self.dense_batches += dense
        self.batch_overhead += overhead

    def summary(self) -> dict[str, Any]:
        """Totals and per-frame, per-entity figures (the parts named for protocol v2)."""
        f = max(self.frames, 1)
        ents = self.motion_entities + self.adds + self.mods + self.leaves + self.rems
        parts = {
            "header": self.header,
            "per_cell_overhead": self.batch_overhead,
            "motion_entries": self.motion,
            "msgpack_entries": self.entries,
            "leaves_and_rems": self.leave_rem,
            "sub_and_snapshots": self.sub_snap,
        }
        total = max(self.total, 1)
        return {
            "proto": 2,
            "frames_sampled": self.frames,
            "mean_frame_bytes": round(self.total / f, 1),
            "mean_batches_per_frame": round(self.batches / f, 2),
            "dense_batch_share": round(self.dense_batches / max(self.batches, 1), 4),
            "mean_entities_per_frame": round(ents / f, 2),
            "bytes_per_entity_update": round(self.total / max(ents, 1), 2),
            "per_cell_overhead_bytes_per_batch": round(
                self.batch_overhead / max(self.batches, 1), 2
            ),
            "motion_bytes_per_entity": round(self.motion / max(self.motion_entities, 1), 2),
            "msgpack_bytes_per_entry": round(self.entries / max(self.adds + self.mods, 1), 2),
            "entries_per_frame": {
                "motion": round(self.motion_entities / f, 2),
                "adds": round(self.adds / f, 2),
                "mods": round(self.mods / f, 2),
                "leaves": round(self.leaves / f, 2),
                "rems": round(self.rems / f, 2),
                "snapshots": round(self.snapshots / f, 3),
                "snapshot_objects": round(self.snapshot_objects / f, 2),
            },
            "bytes_per_frame": {k: round(v / f, 1) for k, v in parts.items()},
            "share": {k: round(v / total, 4) for k, v in parts.items()},
        }

    def merge(self, other: dict[str, int]) -> None:
        """Adds the raw counters of another breakdown (from `raw()`)."""
        for k, v in other.items():
            setattr(self, k, getattr(self, k) + v)

    def raw(self) -> dict[str, int]:
        """The raw counters, to send across processes as JSON."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def new_breakdown(proto: int) -> FrameBreakdown | FrameBreakdownV2:
    """An empty breakdown for the frames of protocol `proto`."""
    return FrameBreakdownV2() if proto == 2 else FrameBreakdown()
