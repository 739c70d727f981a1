"""The load generator's view of a client: its cache, its truth, where its bytes go.

A sampled client's cache is synkworld's own protocol applier (`synkworld.Mirror`,
lenient: it counts violations); `holding` and `compare_with_truth` compare it
with what the server says it should hold; `FrameBreakdown` says where a frame's
bytes go.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from synkworld import Mirror

__all__ = ["FrameBreakdown", "cache_digest", "compare_with_truth", "holding", "sampled_client"]


class _Sampled(Mirror):
    def other(self, msg: Mapping[str, Any]) -> None:
        # A load-test client sends nothing a server should refuse.
        if msg.get("m") == "error":
            self._violation(f"error frame: {msg.get('code')}: {msg.get('msg')}")
        else:
            super().other(msg)


def sampled_client() -> Mirror:
    """The cache of a sampled client: synkworld's applier, counting what a correct server
    never sends (an error frame too) instead of raising, keeping no list of teardowns."""
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
