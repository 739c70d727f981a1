"""Loads a world from a store in a fresh process and prints its documents as JSON.

python -m tests.store.load_world sqlite PATH
python -m tests.store.load_world mongo URI DB
"""

from __future__ import annotations

import asyncio
import sys

import orjson

from synkworld._persistence import load_documents
from synkworld.store import SQLiteStore, Store
from tests.store.world_types import new_world


async def main(argv: list[str]) -> None:
    store: Store
    if argv[0] == "sqlite":
        store = SQLiteStore(argv[1])
    else:
        from synkworld.store import MongoStore

        store = MongoStore.connect(argv[1], argv[2])
    async with store:
        world = new_world()
        report = load_documents(world, await store.load())
        docs = world.documents([o.id for o in world])
        sys.stdout.write(orjson.dumps({"loaded": report.loaded, "docs": docs}).decode())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
