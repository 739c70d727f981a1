"""How far the write-behind stays behind the tick when every object changes every tick.

Runs a world of N moving objects at the tick rate for some seconds with the
SQLite store (or MongoDB with --mongo URI), samples the write lag each tick, and
prints JSON: lag in ticks and seconds (median, p99, max), objects written per
second, and the tick loop's own duration.

    .venv/bin/python -m bench.persist_lag [--objects 10000] [--seconds 20] [--mongo URI]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from synkworld import GridMap, SynkObject, TickLoop, World
from synkworld._persistence import Persistence
from synkworld.store import SQLiteStore, Store


class Walker(SynkObject, type="bench-walker"):
    x: float
    y: float
    hp: int = 100


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def run(a: argparse.Namespace) -> dict[str, object]:
    store: Store
    if a.mongo:
        from synkworld.store import MongoStore

        store = MongoStore.connect(a.mongo, "synkworld_bench_lag")
    else:
        store = SQLiteStore(Path(tempfile.mkdtemp()) / "lag.sqlite3")
    rng = np.random.default_rng(1)
    world = World(GridMap(cell_size=250, bounds=(0, 0, 10_000, 10_000)), initial_capacity=a.objects)
    walkers = [
        world.create(Walker(id=f"w{i}", x=float(x), y=float(y)))
        for i, (x, y) in enumerate(rng.uniform(0, 10_000, (a.objects, 2)))
    ]
    slots = world.slots(walkers)
    loop = TickLoop(world, tick_rate_hz=a.tick_rate)

    @loop.add_simulation
    def move(dt: float) -> None:
        xs, ys = world.positions(slots)
        world.set_positions(
            slots,
            np.clip(xs + rng.normal(0, 2, len(xs)), 0, 9_999),
            np.clip(ys + rng.normal(0, 2, len(ys)), 0, 9_999),
        )

    lag_ticks: list[float] = []
    lag_s: list[float] = []
    durations: list[float] = []
    loop.on_tick_done(durations.append)
    async with Persistence(world, store) as p:
        loop.on_changes(p.on_changes)
        ticking = asyncio.create_task(loop.run())
        start = time.monotonic()
        written0 = 0
        while time.monotonic() - start < a.seconds:
            await asyncio.sleep(1 / a.tick_rate)
            st = p.statistics()
            if time.monotonic() - start > 2:  # after the first full write
                lag_ticks.append(st.write_lag_ticks)
                lag_s.append(st.oldest_pending_age_s or 0.0)
            else:
                written0 = st.objects_written
        loop.stop()
        await ticking
        elapsed = time.monotonic() - start - 2
        written = p.statistics().objects_written - written0
        t0 = time.monotonic()
        await world.flush()
        final_flush_s = time.monotonic() - t0
    return {
        "objects": a.objects,
        "store": "mongo" if a.mongo else "sqlite",
        "tick_rate_hz": a.tick_rate,
        "ticks": world.tick,
        "lag_ticks_median": statistics.median(lag_ticks),
        "lag_ticks_p99": pct(lag_ticks, 0.99),
        "lag_ticks_max": max(lag_ticks),
        "lag_s_median": round(statistics.median(lag_s), 3),
        "lag_s_p99": round(pct(lag_s, 0.99), 3),
        "objects_written_per_s": round(written / elapsed),
        "tick_ms_median": round(statistics.median(durations) * 1000, 2),
        "final_flush_s": round(final_flush_s, 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--objects", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--tick-rate", type=float, default=20.0)
    p.add_argument("--mongo", default=None, metavar="URI")
    a = p.parse_args()
    print(orjson.dumps(asyncio.run(run(a)), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
