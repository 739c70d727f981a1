"""A server persisting a busy world to MongoDB, for the shutdown tests (run in a subprocess).

    SPILL_APP_URI=mongodb://... SPILL_APP_DB=name SPILL_APP_TRUTH=path \\
    SPILL_APP_TIMEOUT_S=3 synkworld serve tests.store.spill_app:make_server --port P

Loads the world from the store when it has one (which replays a spill journal
first), else creates 200 crates. Every tick changes some crates and creates
one. At shutdown, after the last tick, it writes every document of its world
to SPILL_APP_TRUTH: what the store must hold once everything is written.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import orjson

from synkworld import Server, load_documents
from synkworld.store import MongoStore
from tests.store.world_types import Crate, new_world


async def make_server() -> Server:
    store = MongoStore.connect(
        os.environ["SPILL_APP_URI"],
        os.environ["SPILL_APP_DB"],
        serverSelectionTimeoutMS=1000,
        connectTimeoutMS=1000,
    )
    world = new_world()
    docs = await store.load()
    if docs:
        load_documents(world, docs)
    else:
        for i in range(200):
            world.create(Crate(id=f"c{i}", x=(i * 37) % 1000, y=(i * 53) % 1000))
    server = Server(world, tick_rate_hz=20, freeze_gc=False)
    server.persist(
        store,
        retry_max_s=0.2,
        shutdown_flush_timeout_s=float(os.environ["SPILL_APP_TIMEOUT_S"]),
        shutdown_log_interval_s=1.0,
    )
    rng = random.Random(os.getpid())
    serial = iter(range(10**9))

    @server.simulation
    def churn(dt: float) -> None:
        crates = [o for o in world if isinstance(o, Crate)]
        for c in rng.sample(crates, 10):
            c.hp = rng.randint(0, 99)
            world.move(c, rng.uniform(0, 999), rng.uniform(0, 999))
        world.create(Crate(id=f"p{os.getpid()}-{next(serial)}", x=rng.uniform(0, 999), y=5))

    async def write_truth() -> None:
        truth = world.documents([o.id for o in world])
        Path(os.environ["SPILL_APP_TRUTH"]).write_bytes(orjson.dumps(truth))  # noqa: ASYNC240

    server.on_shutdown(write_truth)
    return server
