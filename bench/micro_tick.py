"""One grid-world tick in memory: the load test's world, motion and panning views, no network.

Prints JSON with the median ms per tick of each part: the simulation step, the
clients' `view`s that land in the tick, `World.commit` (the batches) and
`deliver_frames` (every session's frame, queued, not written). What the load
test adds on top is the sockets: the writes, and reading the clients' messages.

    .venv/bin/python -m bench.micro_tick [--entities 10000] [--clients 500] [--ticks 100]
    .venv/bin/python -m bench.micro_tick --proto 2      # every session speaks protocol v2
    .venv/bin/python -m bench.micro_tick --profile      # cProfile of views, commit, frames

With `--proto 2` the world records only v2 batches (as the tick loop has it
when every session is a v2 one) and the frames part includes
`V2Batches.prepare`, the encoding of the batches the sessions hold.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import math
import pstats
import statistics
import time

import orjson

from bench.gridworld_scenario import Motion, PanPath, Scenario, pan_path, pan_rect, view_phase
from bench.gridworld_server import create_entities
from synkworld import GridMap, Limits, Session, World, deliver_frames
from synkworld._frames import FrameEncoder, SharedFramesV2
from synkworld._world import TickChanges


class _SnapshotsV2:
    """A world's v2 snapshots as a snapshot source."""

    def __init__(self, world: World) -> None:
        self.snapshot = world.snapshot_v2


def _encoder(world: World, changes: TickChanges, sessions: list[Session]) -> FrameEncoder:
    """What the tick loop builds a tick's frames with when every session speaks v2."""
    v2 = changes.batches_v2
    assert v2 is not None
    v2.prepare(set().union(*(s.held for s in sessions)))
    return SharedFramesV2(v2.data, _SnapshotsV2(world), world.key_codes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--entities", type=int, default=Scenario().entities)
    p.add_argument("--clients", type=int, default=Scenario().clients)
    p.add_argument("--ticks", type=int, default=100)
    p.add_argument("--proto", type=int, choices=(1, 2), default=1, help="the sessions' protocol")
    p.add_argument("--profile", action="store_true", help="print cProfile's top functions too")
    a = p.parse_args()

    sc = Scenario(entities=a.entities, clients=a.clients)
    gmap = GridMap(cell_size=sc.cell_size, bounds=(0, 0, sc.map_size, sc.map_size))
    world = World(gmap, initial_capacity=sc.entities)
    v2 = a.proto == 2
    if v2:
        world.record_v2 = True
        world.encode_v1 = False
    m = Motion(sc)
    entities = create_entities(world, m)
    slots = world.slots(entities)
    paths = [pan_path(sc, i) for i in range(sc.clients)]
    phases = [view_phase(sc, i) for i in range(sc.clients)]
    sessions = [
        Session(
            f"s{i}",
            world.grid,
            limits=Limits(send_queue_max_frames=10**9, send_queue_max_bytes=10**12),
            wire_version=a.proto,
        )
        for i in range(sc.clients)
    ]
    for path, s in zip(paths, sessions, strict=True):
        s.view("main", _rect(sc, path, 0.0), sc.margin)
    first = world.commit()
    deliver_frames(
        world.tick,
        {},
        sessions,
        world,
        now=0.0,
        lag_timeout_s=1e9,
        encoder=_encoder(world, first, sessions) if v2 else None,
    )
    _drain(sessions)
    # What the server does after start-up: the world is not rescanned by the GC.
    gc.collect()
    gc.freeze()

    period = 1 / sc.tick_rate_hz
    parts: dict[str, list[float]] = {"simulate": [], "views": [], "commit": [], "frames": []}
    frame_bytes: list[float] = []
    views_sent = 0
    prof = cProfile.Profile() if a.profile else None
    for t in range(1, a.ticks + 1):
        now = t * period
        gc.disable()  # as TickLoop.step does
        t0 = time.perf_counter()
        m.step()
        world.set_positions(slots, m.xs, m.ys)
        for i, hp in zip(*m.hp_step(), strict=True):
            entities[i].hp = hp
        t1 = time.perf_counter()
        if prof is not None:
            prof.enable()
        for i, s in enumerate(sessions):
            # Each client sends its view once per interval, at its own phase.
            interval = sc.view_interval_s
            if math.floor((now - phases[i]) / interval) != math.floor(
                (now - period - phases[i]) / interval
            ):
                s.view("main", _rect(sc, paths[i], now), sc.margin)
                views_sent += 1
        t2 = time.perf_counter()
        changes = world.commit()
        t3 = time.perf_counter()
        report = deliver_frames(
            changes.tick,
            changes.batches,
            sessions,
            world,
            now=now,
            lag_timeout_s=1e9,
            encoder=_encoder(world, changes, sessions) if v2 else None,
        )
        t4 = time.perf_counter()
        if prof is not None:
            prof.disable()
        gc.enable()
        _drain(sessions)
        for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            parts[name].append(seconds * 1000)
        frame_bytes.append(report.bytes / max(report.frames, 1))

    p50 = {k: round(statistics.median(v), 2) for k, v in parts.items()}
    result = {
        "proto": a.proto,
        "entities": sc.entities,
        "clients": sc.clients,
        "ticks": a.ticks,
        "views_sent": views_sent,
        "ms_p50": p50,
        "ms_p50_total": round(sum(p50.values()), 2),
        "ms_p90": {k: round(sorted(v)[int(0.9 * (len(v) - 1))], 2) for k, v in parts.items()},
        "mean_frame_bytes": round(statistics.fmean(frame_bytes)),
    }
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def _rect(sc: Scenario, path: PanPath, t: float) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = pan_rect(sc, path, t)
    return (x0, y0, x1, y1)


def _drain(sessions: list[Session]) -> None:
    for s in sessions:
        while s.pop() is not None:
            pass


if __name__ == "__main__":
    main()
