"""Micro-benchmark of one tick in memory: 10,000 moving objects in 1,600 cells, 500 subscribers.

Prints JSON with the median ms to build all batches (`World.commit`) and to build
all frames (`deliver_frames`), over several ticks. No network, no store.

    .venv/bin/python -m bench.micro_tick [--objects 10000] [--subscribers 500] [--ticks 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import orjson

from synkworld import GridMap, Session, SynkObject, World, deliver_frames


class Mover(SynkObject, type="bench-mover"):
    x: float
    y: float
    kind: str = "a"
    color: int = 0
    hp: int = 100


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--objects", type=int, default=10_000)
    p.add_argument("--subscribers", type=int, default=500)
    p.add_argument("--keys-per-subscriber", type=int, default=20)
    p.add_argument("--ticks", type=int, default=40)
    a = p.parse_args()

    rng = np.random.default_rng(1)
    world = World(GridMap(cell_size=250, bounds=(0, 0, 10_000, 10_000)), initial_capacity=a.objects)
    objs = [
        world.create(Mover(id=f"e{i}", x=float(x), y=float(y)))
        for i, (x, y) in enumerate(rng.uniform(0, 10_000, (a.objects, 2)))
    ]
    slots = world.slots(objs)
    angle = rng.uniform(0, 2 * np.pi, a.objects)
    vx, vy = np.cos(angle) * 2.5, np.sin(angle) * 2.5  # 50 units/s at 20 Hz
    sessions = []
    side = int(np.sqrt(a.keys_per_subscriber))
    for i in range(a.subscribers):
        s = Session(
            f"s{i}",
            world.grid,
            max_keys=1000,
            send_queue_max_frames=10**9,
            send_queue_max_bytes=10**12,
        )
        cx, cy = rng.integers(0, 40 - side, 2)
        keys = [
            f"main:{cx + dx}:{cy + dy}"
            for dx in range(side)
            for dy in range(a.keys_per_subscriber // side)
        ]
        s.sub(keys)
        sessions.append(s)
    world.commit()
    commit_ms, frames_ms, frame_bytes = [], [], []
    for _ in range(a.ticks):
        xs, ys = world.positions(slots)
        xs, ys = xs + vx, ys + vy
        vx = np.where((xs < 0) | (xs > 10_000), -vx, vx)
        vy = np.where((ys < 0) | (ys > 10_000), -vy, vy)
        world.set_positions(slots, np.clip(xs, 0, 9_999.9), np.clip(ys, 0, 9_999.9))
        for i in rng.integers(0, a.objects, a.objects // 100).tolist():
            objs[i].hp = int(rng.integers(0, 100))
        t0 = time.perf_counter()
        changes = world.commit()
        t1 = time.perf_counter()
        report = deliver_frames(
            changes.tick, changes.batches, sessions, world, now=0.0, lag_timeout_s=1e9
        )
        t2 = time.perf_counter()
        for s in sessions:
            while s.pop() is not None:
                pass
        commit_ms.append((t1 - t0) * 1000)
        frames_ms.append((t2 - t1) * 1000)
        frame_bytes.append(report.bytes / max(report.frames, 1))
    print(
        orjson.dumps(
            {
                "objects": a.objects,
                "cells": world.grid.default_map.cell_count,
                "subscribers": a.subscribers,
                "keys_per_subscriber": a.keys_per_subscriber,
                "ticks": a.ticks,
                "batches_ms_median": round(statistics.median(commit_ms), 2),
                "frames_ms_median": round(statistics.median(frames_ms), 2),
                "batches_ms_p90": round(sorted(commit_ms)[int(0.9 * len(commit_ms))], 2),
                "frames_ms_p90": round(sorted(frames_ms)[int(0.9 * len(frames_ms))], 2),
                "mean_frame_bytes": round(statistics.mean(frame_bytes)),
            },
            option=orjson.OPT_INDENT_2,
        ).decode()
    )


if __name__ == "__main__":
    main()
