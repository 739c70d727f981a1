"""Measures how many objects per second go through each store's bulk writes, and prints JSON.

    .venv/bin/python bench/store_throughput.py [--objects 10000] [--batches 5]
        [--backends memory,sqlite,mongo] [--mongodb-uri URI]

Per backend, with grid-world documents (`{_id, t, key, v, x, y, kind, color, hp}`):

- insert: batches of new documents;
- update: the same documents again, every one moved (the grid-world tick, where
  all entities move), as full documents, one batch per tick;
- write_behind: the update scenario through `WriteBehind` (mark every id, then
  flush), which adds reading the documents from a source;
- load_all and load_region (one cell of the 40 x 40 grid), as documents per second.

Without `--mongodb-uri` the MongoDB backend runs against FerretDB started by
scripts/ferretdb.sh on a free loopback port, in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pymongo

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from synkworld.store import (  # noqa: E402
    MemoryStore,
    Region,
    SQLiteStore,
    Store,
    WriteBatch,
    WriteBehind,
)
from synkworld.store.mongo import MongoStore  # noqa: E402

MAP_UNITS = 10_000
CELL_UNITS = 250


def entity(doc_id: str, rng: random.Random, version: int) -> dict[str, Any]:
    x, y = rng.uniform(0, MAP_UNITS - 1), rng.uniform(0, MAP_UNITS - 1)
    return {
        "_id": doc_id,
        "t": "entity",
        "key": f"main:{int(x // CELL_UNITS)}:{int(y // CELL_UNITS)}",
        "v": version,
        "x": x,
        "y": y,
        "kind": rng.choice(["wolf", "elk", "bear", "fox"]),
        "color": rng.randrange(1 << 24),
        "hp": rng.randint(0, 100),
    }


class Source:
    """The documents of the benchmark's world; the DocumentSource of the write-behind."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    def documents(self, ids: Collection[str]) -> dict[str, dict[str, Any] | None]:
        return {i: dict(self.docs[i]) for i in ids}


def summary(objects_per_batch: int, times: list[float]) -> dict[str, Any]:
    return {
        "objects_per_s": round(objects_per_batch * len(times) / sum(times)),
        "batches": len(times),
        "objects_per_batch": objects_per_batch,
        "batch_s_median": round(statistics.median(times), 4),
        "batch_s_max": round(max(times), 4),
    }


async def timed(action: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await action()
    return time.perf_counter() - start


async def run_backend(store: Store, objects: int, batches: int) -> dict[str, Any]:
    rng = random.Random(1)
    results: dict[str, Any] = {}

    inserted: list[dict[str, Any]] = []
    times = []
    for b in range(batches):
        docs = [entity(f"b{b}-{i}", rng, 1) for i in range(objects)]
        inserted = docs
        times.append(await timed(lambda docs=docs: store.apply(WriteBatch(upserts=docs))))
    results["insert"] = summary(objects, times)

    times = []
    for tick in range(batches):
        docs = [entity(doc["_id"], rng, tick + 2) for doc in inserted]
        times.append(await timed(lambda docs=docs: store.apply(WriteBatch(upserts=docs))))
    results["update"] = summary(objects, times)

    source = Source()
    source.docs = {doc["_id"]: doc for doc in inserted}
    times = []
    async with WriteBehind(store, source) as wb:
        for tick in range(batches):
            for doc_id in source.docs:
                source.docs[doc_id] = entity(doc_id, rng, tick + 100)
            start = time.perf_counter()
            wb.mark(tick, source.docs.keys(), ())
            await wb.flush()
            times.append(time.perf_counter() - start)
    results["write_behind"] = summary(objects, times)

    total = objects * batches
    start = time.perf_counter()
    loaded = await store.load()
    elapsed = time.perf_counter() - start
    assert len(loaded) == total, (len(loaded), total)
    results["load_all"] = {"docs": total, "docs_per_s": round(total / elapsed), "s": elapsed}

    region = Region("main", 5000, 5000, 5000 + CELL_UNITS, 5000 + CELL_UNITS)
    start = time.perf_counter()
    found = await store.load(region=region)
    elapsed = time.perf_counter() - start
    results["load_region"] = {"docs": len(found), "s": round(elapsed, 4)}
    return results


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def ferretdb(tmp: Path) -> AsyncIterator[str]:
    """Runs FerretDB through scripts/ferretdb.sh; yields its URI."""
    script = REPO / "scripts" / "ferretdb.sh"
    subprocess.run([str(script), "build"], check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    uri = f"mongodb://127.0.0.1:{port}/"
    with (tmp / "ferretdb.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(script), "run", str(port), str(tmp / "ferretdb")], stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            client: pymongo.MongoClient[Any] = pymongo.MongoClient(
                uri, serverSelectionTimeoutMS=300
            )
            try:
                client.admin.command("ping")
                break
            except pymongo.errors.PyMongoError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
            finally:
                client.close()
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=10_000, help="objects per batch")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--backends", default="memory,sqlite,mongo")
    parser.add_argument("--mongodb-uri", default=os.environ.get("MONGODB_URI"))
    args = parser.parse_args()
    backends = args.backends.split(",")

    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "pymongo": pymongo.version,
        },
        "results": {},
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "memory" in backends:
            async with MemoryStore() as memory:
                report["results"]["memory"] = await run_backend(memory, args.objects, args.batches)
        if "sqlite" in backends:
            async with SQLiteStore(tmp / "bench.sqlite3") as sqlite_store:
                report["results"]["sqlite"] = await run_backend(
                    sqlite_store, args.objects, args.batches
                )
        if "mongo" in backends:
            async with (
                ferretdb(tmp) if args.mongodb_uri is None else _given(args.mongodb_uri)
            ) as uri:
                client: pymongo.AsyncMongoClient[Any] = pymongo.AsyncMongoClient(uri)
                build_info = await client.admin.command("buildInfo")
                await client.drop_database("synkworld_bench")
                server = (
                    f"FerretDB {build_info['ferretdbVersion']} (SQLite backend, patched build)"
                    if "ferretdbVersion" in build_info
                    else f"MongoDB {build_info.get('version')}"
                )
                # Our FerretDB build is fixed for large update commands; a stock
                # FerretDB 1.x gets the store's default split of 40.
                max_ops = 1_000_000 if args.mongodb_uri is None else None
                store = MongoStore(client["synkworld_bench"], max_ops_per_command=max_ops)
                try:
                    results = await run_backend(store, args.objects, args.batches)
                finally:
                    await client.drop_database("synkworld_bench")
                    await client.close()
                report["results"]["mongo"] = {"server": server, **results}
    print(json.dumps(report, indent=2))


@asynccontextmanager
async def _given(uri: str) -> AsyncIterator[str]:
    yield uri


if __name__ == "__main__":
    asyncio.run(main())
