"""Boats that survive a restart: loaded from the store if it has them, else made and stored.

synkworld serve examples.persistent_server:make_server   (boats.sqlite3 in the current folder)
MONGODB_URI=mongodb://127.0.0.1:27017/ synkworld serve examples.persistent_server:make_server
"""

import os

from synkworld import Call, GridMap, Server, SynkObject, World, load_documents
from synkworld.store import SQLiteStore, Store


class Boat(SynkObject, type="boat"):
    name: str
    x: float
    y: float


def open_store() -> Store:
    uri = os.environ.get("MONGODB_URI")
    if uri:  # pip install 'synkworld[mongo]'
        from synkworld.store import MongoStore

        return MongoStore.connect(uri, "boats")
    return SQLiteStore("boats.sqlite3")  # embedded: nothing to install


async def make_server() -> Server:
    world = World(GridMap(cell_size=250, bounds=(0, 0, 10_000, 10_000)))
    store = open_store()
    stored = await store.load()
    if stored:
        load_documents(world, stored)
    else:  # the first start: the next ticks write these to the store
        for i in range(100):
            world.create(Boat(id=f"boat{i}", name=f"Boat {i}", x=100.0 * i, y=100.0 * i))
    server = Server(world, tick_rate_hz=20)
    server.persist(store)  # every change is written behind the tick; flushed at shutdown

    @server.handler("sail")
    def sail(call: Call, boat: str, dx: float, dy: float) -> dict[str, float]:
        b = call.world.get(boat, Boat)
        call.world.move(b, b.x + dx, b.y + dy)
        return {"x": b.x, "y": b.y}

    return server
