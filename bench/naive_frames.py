"""The naive baseline the load test compares synkworld with: frames filtered and encoded per client.

What an engine without shared batch bytes does: for every client, take the
messages of the keys it holds, build one frame message and encode it. The
tick's batches are decoded into messages once per tick (not per client), so
the baseline pays for its per-client work only; `decode_s` says what the
decoding cost. Its frames carry the same content as synkworld's
(tests/test_bench.py checks it); only the encoding is per client.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from synkworld import Session, TickDelivery, TickLoop, World
from synkworld._frames import FrameEncoder, snapshots_for

__all__ = ["NaiveFrames", "NaiveTickLoop"]


class NaiveFrames:
    """A `FrameEncoder` that builds and encodes every client's frame itself."""

    def __init__(self, batches: Mapping[str, bytes], world: World) -> None:
        started = time.perf_counter()
        self._messages = {k: orjson.loads(b) for k, b in batches.items()}
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
    """A tick loop whose frames are the naive baseline's."""

    decode_s_total = 0.0

    def frame_encoder(self, delivery: TickDelivery) -> FrameEncoder:
        frames = NaiveFrames(delivery.batches, self.world)
        self.decode_s_total += frames.decode_s
        return frames
