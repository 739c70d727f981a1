"""The naive baseline the load test compares synkworld with: frames filtered and encoded per client.

What an engine without shared batch bytes does: its tick keeps every key's
batch as a message, not encoded (`NaiveWorld`); for every client it takes the
messages of the keys it holds, builds one frame message and encodes it
(`NaiveFrames`). Its frames carry the same content as synkworld's
(tests/test_bench.py checks it); only the encoding is per client.

Protocol v2's equivalent (`NaiveFramesV2`): the world records a tick's v2
outcomes as it always does (`BatchBuilderV2`: per key, not encoded); for every
v2 client the builder encodes the batches of the keys that client holds into
a dict of its own, and the snapshots are encoded afresh for each client, so
that no batch or snapshot bytes are shared between clients. Per client, the
tick's motion is first cut down to the client's keys (a few numpy slices), so
that the builder's encoding runs over those keys only, as v1's per-client
frame does.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import orjson

from synkworld import Session, TickBatches, TickDelivery, TickLoop, World
from synkworld._batch import BatchBuilder, Motion
from synkworld._batch_v2 import BatchBuilderV2, V2Batches, _Motion
from synkworld._frames import FrameEncoder, MixedFrames, SharedFramesV2, snapshots_for

__all__ = ["NaiveFrames", "NaiveFramesV2", "NaiveTickLoop", "NaiveWorld"]


class _Messages(BatchBuilder):
    """Keeps a tick's batches as messages: the `mv` arrays as lists, nothing encoded."""

    def motion(self, m: Motion) -> None:
        self.mv_many(m.as_lists(np.ones(len(m.keys), dtype=bool)))

    def encode(self) -> TickBatches:
        # The values are messages, not bytes: only `NaiveFrames` reads them.
        return TickBatches(self.tick, self._messages())  # type: ignore[arg-type]


class NaiveWorld(World):
    """A world whose ticks keep their batches as messages."""

    def _batch_builder(self, tick: int) -> BatchBuilder:
        return _Messages(tick)


class NaiveFrames:
    """A `FrameEncoder` that builds and encodes every client's frame itself."""

    def __init__(self, batches: Mapping[str, Any], world: World) -> None:
        started = time.perf_counter()
        # A NaiveWorld's batches are messages already; anything else is decoded once.
        self._messages = {
            k: orjson.loads(b) if isinstance(b, bytes) else b for k, b in batches.items()
        }
        self.decode_s = time.perf_counter() - started
        self._world = world

    def tick_frame(self, tick: int, session: Session) -> bytes | None:
        get = self._messages.get
        msg: dict[str, Any] = {"m": "tick", "n": tick}
        b = [m for m in map(get, session.held) if m is not None]
        if b:
            msg["b"] = b
        added, removed, _ = snapshots_for(session, self._world)
        if added or removed:
            msg["sub"] = {k: v for k, v in (("add", added), ("rem", removed)) if v}
        if added:
            msg["snap"] = [self._world.snapshot_message(k) for k in added]
        return orjson.dumps(msg) if len(msg) > 2 else None

    def resync_frame(self, tick: int, session: Session) -> bytes | None:
        session.take_subscription_change()
        snaps = [self._world.snapshot_message(k) for k in sorted(session.held)]
        return orjson.dumps({"m": "resync", "n": tick, "snap": snaps})


class _FreshSnapshotsV2:
    """A world's v2 snapshots, encoded afresh at every call (not the world's cached bytes)."""

    def __init__(self, world: World) -> None:
        self._world = world

    def snapshot(self, key: str) -> bytes:
        world = self._world
        world._snapshots_v2.pop(key, None)  # the world keeps one encoding per key: not here
        return world.snapshot_v2(key)


class _PerClientBatchesV2:
    """One tick's v2 outcomes, encoded anew for every client: only that client's keys."""

    def __init__(self, batches: V2Batches) -> None:
        builder: BatchBuilderV2 = batches._builder
        self._builder = builder
        # Where each key's motion group is: a lookup, made once per tick (as v1's
        # naive world keeps its messages by key), so that a client's encoding
        # does not walk every key of the tick.
        self._groups = [{k: g for g, k in enumerate(m.keys)} for m in builder._motion]

    def encode(self, held: Collection[str]) -> dict[str, bytes]:
        """The batch bytes of the keys in `held`, encoded for this call only."""
        b = self._builder
        # The same builder (its key codes and lookups), holding only this client's keys.
        mine = copy.copy(b)
        parts = b._parts
        mine._parts = {k: p for k in held if (p := parts.get(k)) is not None}
        mine._motion = []
        for m, groups in zip(b._motion, self._groups, strict=True):
            chosen = sorted(g for k in held if (g := groups.get(k)) is not None)
            if chosen:
                mine._motion.append(_restricted(m, chosen))
        out: dict[str, bytes] = {}
        mine.encode_into(out, held)
        return out


def _restricted(m: _Motion, groups: list[int]) -> _Motion:
    """A tick's motion cut down to some of its groups (keys): every per-group field (as long
    as `keys`) and every per-entry field (as long as the entries) sliced alike."""
    n_groups = len(m.keys)
    chosen = np.zeros(n_groups, dtype=bool)
    chosen[groups] = True
    entries = np.repeat(chosen, m.counts)
    n_entries = len(entries)
    # As many groups as entries: alike when each group has one entry; otherwise (a group
    # left empty by jumps sent as mods) the entries are the fields named so.
    ambiguous = n_groups == n_entries and not bool((m.counts == 1).all())
    cut: dict[str, Any] = {}
    for f in dataclasses.fields(m):
        v = getattr(m, f.name)
        if not isinstance(v, np.ndarray | list):
            continue
        per_entry = f.name in _PER_ENTRY if ambiguous else len(v) == n_entries != n_groups
        if len(v) not in (n_groups, n_entries):
            continue
        if isinstance(v, np.ndarray):
            cut[f.name] = v[entries] if per_entry else v[chosen]
        elif per_entry:
            cut[f.name] = [x for x, keep in zip(v, entries.tolist(), strict=True) if keep]
        else:
            cut[f.name] = [v[g] for g in groups]
    return dataclasses.replace(m, **cut)


_PER_ENTRY = {"slots", "dx", "dy"}  # `_Motion`'s fields with one value per entry


class NaiveFramesV2(SharedFramesV2):
    """Protocol v2 frames with nothing shared: each client's batches and snapshots are
    encoded for it alone (`_PerClientBatchesV2`, `_FreshSnapshotsV2`), then joined by
    `SharedFramesV2`'s own code."""

    def __init__(self, batches_v2: V2Batches | None, world: World) -> None:
        super().__init__({}, _FreshSnapshotsV2(world), world.key_codes)
        self._per_client = _PerClientBatchesV2(batches_v2) if batches_v2 is not None else None

    def tick_frame(self, tick: int, session: Session) -> bytes | None:
        per_client = self._per_client
        mine = per_client.encode(session.held) if per_client is not None else {}
        self._get = mine.get
        return super().tick_frame(tick, session)


class NaiveTickLoop(TickLoop):
    """A tick loop whose frames are the naive baseline's (in each session's protocol).

    `last_decode_s` is what the last tick spent decoding its batches: none
    with a `NaiveWorld`; the bench takes it out of the baseline's CPU anyway.
    """

    last_decode_s = 0.0

    def frame_encoder(self, delivery: TickDelivery) -> FrameEncoder:
        frames = NaiveFrames(delivery.batches, self.world)
        self.last_decode_s = frames.decode_s
        v2 = [s for s in self.sessions.values() if s.wire_version == 2]
        if not v2:
            return frames
        # Never `V2Batches.prepare`: nothing is encoded once for every client.
        frames_v2 = NaiveFramesV2(delivery.batches_v2, self.world)
        if len(v2) == len(self.sessions):
            return frames_v2
        return MixedFrames(frames, frames_v2)
