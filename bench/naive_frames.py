"""The naive baseline the load test compares synkworld with: frames filtered and encoded per client.

What an engine without shared batch bytes does: its tick keeps every key's
batch as a message, not encoded (`NaiveWorld`); for every client it takes the
messages of the keys it holds, builds one frame message and encodes it
(`NaiveFrames`). Its frames carry the same content as synkworld's
(tests/test_bench.py checks it); only the encoding is per client.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from synkworld import Session, TickBatches, TickDelivery, TickLoop, World
from synkworld._batch import BatchBuilder, Motion
from synkworld._frames import FrameEncoder, snapshots_for

__all__ = ["NaiveFrames", "NaiveTickLoop", "NaiveWorld"]


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


class NaiveTickLoop(TickLoop):
    """A tick loop whose frames are the naive baseline's.

    `last_decode_s` is what the last tick spent decoding its batches: none
    with a `NaiveWorld`; the bench takes it out of the baseline's CPU anyway.
    """

    last_decode_s = 0.0

    def frame_encoder(self, delivery: TickDelivery) -> FrameEncoder:
        frames = NaiveFrames(delivery.batches, self.world)
        self.last_decode_s = frames.decode_s
        return frames
