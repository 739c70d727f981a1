"""Builds the demo server: loads the world from its store, or makes a fresh one."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from synkworld import ClusterSettings, GridMap, Server, World, load_documents
from synkworld.demo.world import Agent, Avatar, DemoSettings, Wanderers, build_world, install
from synkworld.store import SQLiteStore, Store, WriteBatch

log = logging.getLogger("synkworld.demo")

STATIC = Path(__file__).resolve().parent / "static"


def default_db_path() -> Path:
    """Where the demo keeps its world between runs: the user's cache folder (XDG)."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "synkworld" / "demo" / "world.sqlite3"


async def open_store(db_path: str | None, mongo_uri: str | None) -> Store:
    """The embedded SQLite store, or MongoDB when a URI is given."""
    if mongo_uri:
        from synkworld.store import MongoStore

        return MongoStore.connect(mongo_uri, "synkworld_demo")
    path = Path(db_path) if db_path else default_db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return SQLiteStore(path)


@dataclass(frozen=True, slots=True)
class Shared:
    """The demo on several processes: the Redis that they share the map through."""

    redis: str
    world: str = "demo"
    gateway: bool = False
    node: str | None = None
    region_cells: int = 4


async def make_demo_server(
    settings: DemoSettings,
    store: Store,
    *,
    test_hooks: bool = False,
    shared: Shared | None = None,
) -> Server:
    """The demo server on `store`: the stored world if there is one, else a new one."""
    if shared is not None:
        return await _make_shared_server(settings, store, shared, test_hooks=test_hooks)
    docs = await store.load()
    if docs:
        s = settings.map_size
        world = World(
            GridMap(cell_size=settings.cell_size, bounds=(0, 0, s, s), precision=0),
            initial_capacity=len(docs) + 256,
        )
        report = load_documents(world, docs, skip_bad=True)
        # Avatars belong to connections, which did not survive the restart.
        for obj in list(world):
            if isinstance(obj, Avatar):
                world.delete(obj)
        agents = [o for o in world if isinstance(o, Agent)]
        wanderers = Wanderers(world, agents, s, settings.seed + 1)
        log.info(
            "loaded %d objects from the store (%d skipped)", report.loaded, len(report.skipped)
        )
    else:
        world, wanderers = build_world(settings)
        log.info("new world: %d agents", settings.agents)
    server = Server(
        world,
        tick_rate_hz=settings.tick_rate_hz,
        web_root=STATIC,
        # A map for people in browsers (which offer permessage-deflate): few
        # clients, links slower than loopback. Compressed frames are a third
        # of the size for some CPU per client.
        compression=True,
    )
    # Agents move every tick; writing them once a second keeps the store light and
    # loses at most a second of wandering on a crash (markers are flushed at shutdown).
    server.persist(store, write_interval_s=1.0)
    install(server, settings, wanderers, test_hooks=test_hooks)
    return server


async def _make_shared_server(
    settings: DemoSettings, store: Store, shared: Shared, *, test_hooks: bool
) -> Server:
    """One of several processes serving the demo map: its world starts empty."""
    from synkworld.bus.redis import RedisBackend

    if not await store.load():
        # The first process seeds the store; the others' inserts of the same
        # documents collide and are refused, harmlessly (the store decides).
        seed, _ = build_world(settings)
        seed.commit()
        docs = [d for d in seed.documents([o.id for o in seed]).values() if d is not None]
        result = await store.apply(WriteBatch(inserts=docs))
        log.info("seeded the store: %d documents (%d were there)", len(docs), len(result.existing))
    s = settings.map_size
    world = World(
        GridMap(cell_size=settings.cell_size, bounds=(0, 0, s, s), precision=0),
        initial_capacity=settings.agents + 256,
    )
    server = Server(world, tick_rate_hz=settings.tick_rate_hz, web_root=STATIC, compression=True)
    server.persist(store, write_interval_s=1.0)
    server.join_cluster(
        RedisBackend(shared.redis, shared.world),
        settings=ClusterSettings(owner=not shared.gateway, region_cells=shared.region_cells),
        node=shared.node,
    )
    install(
        server,
        settings,
        Wanderers(world, [], s, settings.seed + 1, dynamic=True),
        test_hooks=test_hooks,
    )
    return server
