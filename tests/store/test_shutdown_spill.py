"""Regression: a shutdown while the store was down never ended, and a supervisor's SIGKILL
then lost every pending change without a word."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from synkworld import Server, TickLoop
from synkworld._persistence import Persistence
from synkworld.store import MemoryStore, SQLiteStore
from synkworld.store._spill import SpillJournal
from synkworld.testing import start_process
from tests.store.support import CLIENT_OPTIONS, MongoServer
from tests.store.world_types import Crate, new_world

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(180)


class Ephemeral(Crate, type="persist-ephemeral", persist=False):
    """A crate that clients see and the store never does."""


async def test_shutdown_waits_a_bounded_time_then_spills_and_the_next_load_replays(
    tmp_path: Path,
) -> None:
    store = MemoryStore(spill_path=tmp_path / "spill.json")
    world = new_world()
    crates = [world.create(Crate(id=f"c{i}", x=i, y=i)) for i in range(50)]
    server = Server(world, autotick=False, freeze_gc=False)
    server.persist(store, retry_max_s=0.05, shutdown_flush_timeout_s=0.5)
    async with server.running():
        server.loop.step()
        await world.flush()
        store.available = False
        for c in crates[:20]:
            c.hp = 99
        world.delete(crates[49])
        fresh = world.create(Crate(id="fresh", x=5, y=5))
        server.loop.step()
        fresh.label = "after the last tick"
        expected = world.documents([o.id for o in world])
        started = time.monotonic()
    took = time.monotonic() - started
    assert took < 0.5 + 1.0
    inserts, upserts, deletes = SpillJournal(tmp_path / "spill.json").read()
    # "fresh" was in write attempts that failed: it may have reached the store,
    # so it is spilled as an upsert, not as an insert.
    spilled = {d["_id"]: d for d in [*upserts, *inserts]}
    assert set(spilled) == {f"c{i}" for i in range(20)} | {"fresh"}
    assert spilled["fresh"]["label"] == "after the last tick"
    assert deletes == ["c49"]
    store.available = True
    store._closed = False  # the same memory, opened again
    docs = {d["_id"]: d for d in await store.load()}
    assert docs == expected


async def test_a_flush_before_the_tick_is_no_collision_and_transient_objects_are_not_written(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "w.sqlite3")
    world = new_world()
    loop = TickLoop(world)
    async with Persistence(world, store) as p:
        loop.on_changes(p.on_changes)
        a = world.create(Crate(id="a", x=1, y=1))
        world.create(Ephemeral(id="e", x=2, y=2))
        await world.flush()  # inserts "a" before any tick
        a.hp = 3
        loop.step()  # the tick's "a" is a change, not a second insert
        await world.flush()
        assert p.statistics().collisions == 0
    async with SQLiteStore(tmp_path / "w.sqlite3") as again:
        docs = {d["_id"]: d for d in await again.load()}
    assert set(docs) == {"a"}
    assert docs["a"]["hp"] == 3


def _serve(server: MongoServer, db: str, truth: Path, port: int, log: Path) -> Any:
    env = {
        **os.environ,
        "SPILL_APP_URI": server.uri,
        "SPILL_APP_DB": db,
        "SPILL_APP_TRUTH": str(truth),
        "SPILL_APP_TIMEOUT_S": "3",
        "SYNKWORLD_SPILL_DIR": str(truth.parent),
    }
    cmd = [sys.executable, "-m", "synkworld", "serve", "tests.store.spill_app:make_server"]
    with log.open("ab") as out:
        return start_process(
            [*cmd, "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _wait_healthy(port: int, proc: Any) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            assert proc.poll() is None, "the server exited"
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("no /healthz")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _stored(server: MongoServer, db: str) -> dict[str, Any]:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[Any] = AsyncMongoClient(server.uri, **CLIENT_OPTIONS)
    try:
        return {d["_id"]: d async for d in client[db]["objects"].find({})}
    finally:
        await client.close()


@pytest.mark.mongo
@pytest.mark.usefixtures("leaked_sockets_collected")
@pytest.mark.parametrize("signals", [1, 2])
async def test_sigterm_with_the_store_down_exits_in_time_and_the_next_start_writes_everything(
    server_control: MongoServer, mongo_db_name: str, tmp_path: Path, signals: int
) -> None:
    truth_path = tmp_path / "truth.json"
    port = _free_port()
    log = tmp_path / "server.log"
    proc = _serve(server_control, mongo_db_name, truth_path, port, log)
    try:
        await _wait_healthy(port, proc)
        await asyncio.sleep(1.0)  # every crate written once
        server_control.stop()
        await asyncio.sleep(1.5)  # changes pile up while the store is away
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        if signals == 2:
            await asyncio.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 20)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 0, text[-3000:]
    # The bound is 3 s; a second SIGTERM skips it.
    assert took < (3.0 if signals == 1 else 0.5) + 3.0, text[-3000:]
    if signals == 1:
        assert "shutdown: waiting for the store to take" in text
    spill = tmp_path / f"synkworld-spill-{mongo_db_name}.objects.json"
    inserts, upserts, _ = SpillJournal(spill).read()
    truth = orjson.loads(truth_path.read_bytes())
    spilled = [*inserts, *upserts]
    assert len(spilled) > 20
    for doc in spilled:
        assert doc == truth[doc["_id"]]

    server_control.start()
    port = _free_port()
    proc = _serve(server_control, mongo_db_name, tmp_path / "truth2.json", port, log)
    try:
        await _wait_healthy(port, proc)  # its load replayed the journal
        assert not spill.exists()
    finally:
        proc.kill()
        proc.wait(timeout=10)
    stored = await _stored(server_control, mongo_db_name)
    print(  # the figures behind the closing note (pytest -s shows them)
        f"\nSIGTERM x{signals} with the store down: exited in {took:.2f}s; "
        f"{len(spilled)} documents spilled; {len(stored)} stored after the restart"
    )
    # The second process may have written its own ticks' changes already; the
    # spilled documents are those of crates it did not touch, or older versions.
    assert len(stored) >= len(truth)
    for doc_id, doc in truth.items():
        assert stored[doc_id]["v"] >= doc["v"]
        if stored[doc_id]["v"] == doc["v"]:
            assert stored[doc_id] == doc


def test_a_newer_spill_decides_whether_a_delete_is_conditional(tmp_path: Path) -> None:
    journal = SpillJournal(tmp_path / "spill.json")
    journal.write(([], [], ["a", "b", "c"]), reason="first", delete_epochs={"a": 4, "b": 4})
    # Later: "a" deleted again without an epoch, "b" written again, "c" with one now.
    journal.write(
        ([], [{"_id": "b", "t": "x"}], ["a", "c"]), reason="second", delete_epochs={"c": 7}
    )
    inserts, upserts, deletes = journal.read()
    assert inserts == [] and [d["_id"] for d in upserts] == ["b"] and sorted(deletes) == ["a", "c"]
    assert journal.delete_epochs() == {"c": 7}
