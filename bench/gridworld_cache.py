"""The load generator's client cache: applies server frames as PROTOCOL.md says.

A compact copy of what tests/reference_client.py does (bench code does not
import tests): it applies `tick` and `resync` frames to a dictionary of held
objects, counts what a correct server never sends instead of raising, and says
where a frame's bytes go (`FrameBreakdown`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["ClientCache", "FrameBreakdown", "cache_digest", "compare_with_truth"]

# id -> [type, version, state, key]; a list so that versions update in place.
Entry = list[Any]


class ClientCache:
    """What one client holds: its keys and its objects, kept by applying frames."""

    __slots__ = ("held", "maps", "objs", "resyncs", "tick", "violation_examples", "violations")

    def __init__(self) -> None:
        self.maps: dict[str, Any] = {}
        self.held: set[str] = set()
        self.objs: dict[str, Entry] = {}
        self.tick = 0
        self.violations = 0
        self.resyncs = 0
        self.violation_examples: list[str] = []

    def _violation(self, what: str) -> None:
        self.violations += 1
        if len(self.violation_examples) < 5:
            self.violation_examples.append(what)

    def apply(self, msg: dict[str, Any]) -> None:
        """Applies one decoded server message."""
        kind = msg.get("m")
        if kind == "tick":
            self._tick(msg)
        elif kind == "resync":
            self._resync(msg)
        elif kind == "hello":
            self.maps = msg["maps"]
            self.tick = msg["tick"]
        elif kind == "error":
            self._violation(f"error frame: {msg.get('code')}: {msg.get('msg')}")

    def _pos(self, key: str) -> tuple[str, str]:
        spec = self.maps[key.split(":", 1)[0]]
        return spec["pos"][0], spec["pos"][1]

    def _tick(self, msg: dict[str, Any]) -> None:
        n = msg["n"]
        if n <= self.tick:
            self._violation(f"tick {n} after tick {self.tick}")
        self.tick = n
        objs = self.objs
        before = self.held
        sub = msg.get("sub")
        sub_add: set[str] = set(sub.get("add", ())) if sub else set()
        for batch in msg.get("b", ()):
            key = batch["k"]
            if key not in before:
                self._violation(f"batch for {key!r}, not held")
                continue
            for a in batch.get("add", ()):
                frm = a.get("from")
                if frm is not None and frm in before:
                    continue  # the move arrives as the old cell's mod
                if a["id"] in objs:
                    self._violation(f"add for held {a['id']!r}")
                objs[a["id"]] = [a["t"], a["v"], a["s"], key]
            for m in batch.get("mod", ()):
                o = objs.get(m["id"])
                if o is None or o[3] != key:
                    self._violation(f"mod for {m['id']!r}, not held under {key!r}")
                    continue
                if m["v"] <= o[1]:
                    continue
                to = m.get("to")
                if to is not None and to not in before and to not in sub_add:
                    del objs[m["id"]]
                    continue
                o[2].update(m["d"])
                o[1] = m["v"]
                if to is not None:
                    o[3] = to
            mv = batch.get("mv")
            if mv is not None:
                px, py = self._pos(key)
                for oid, x, y in zip(mv[0], mv[1], mv[2], strict=True):
                    o = objs.get(oid)
                    if o is None or o[3] != key:
                        self._violation(f"mv for {oid!r}, not held under {key!r}")
                        continue
                    s = o[2]
                    s[px] = x
                    s[py] = y
                    o[1] += 1
            for r in batch.get("rem", ()):
                o = objs.get(r["id"])
                if o is None or o[3] != key:
                    self._violation(f"rem for {r['id']!r}, not held under {key!r}")
                    continue
                del objs[r["id"]]
        if sub:
            rem = set(sub.get("rem", ()))
            if rem:
                if not rem <= before:
                    self._violation(f"sub.rem of keys not held: {sorted(rem - before)[:3]}")
                self.held = before = before - rem
                for oid in [oid for oid, o in objs.items() if o[3] in rem]:
                    del objs[oid]
            if sub_add:
                if sub_add & before:
                    self._violation(f"sub.add of held keys: {sorted(sub_add & before)[:3]}")
                self.held = before | sub_add
        for snap in msg.get("snap", ()):
            if snap["k"] not in sub_add:
                self._violation(f"snapshot of {snap['k']!r}, not just added")
            self._snapshot(snap)

    def _snapshot(self, snap: dict[str, Any]) -> None:
        key = snap["k"]
        objs = self.objs
        for e in snap["objs"]:
            objs[e["id"]] = [e["t"], e["v"], e["s"], key]

    def _resync(self, msg: dict[str, Any]) -> None:
        self.resyncs += 1
        self.tick = msg["n"]
        self.held = {s["k"] for s in msg["snap"]}
        keep: set[str] = set()
        for snap in msg["snap"]:
            self._snapshot(snap)
            keep.update(e["id"] for e in snap["objs"])
        for oid in [oid for oid in self.objs if oid not in keep]:
            del self.objs[oid]

    def view(self) -> dict[str, Any]:
        """What the client holds, in the form the server's truth route answers."""
        return {"held": sorted(self.held), "objs": self.objs}


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
