"""The world on a real store: restart in a new process, outage, subset loading, bad documents."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from synkworld import DocumentError, GridMap, Limits, Server, Session, TickLoop, World
from synkworld._persistence import Persistence, load_documents
from synkworld.store import MongoStore, Region, SQLiteStore, Store
from tests.store.support import CLIENT_OPTIONS, MongoServer
from tests.store.world_types import Crate, Notice, new_world

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(180)


def churn(world: World, rng: random.Random) -> None:
    """One tick's worth of creates, changes, moves (near and far, other map), deletes."""
    crates = [o for o in world if isinstance(o, Crate)]
    for c in rng.sample(crates, min(len(crates), 20)):
        r = rng.random()
        if r < 0.6:
            world.move(c, c.x + rng.uniform(-20, 20), c.y + rng.uniform(-20, 20))
        elif r < 0.8:
            world.move(c, rng.uniform(0, 999), rng.uniform(0, 999))
        else:
            c.hp = rng.randint(0, 99)
            c.tags = [*c.tags[-2:], f"t{rng.randint(0, 9)}"]
    for c in rng.sample(crates, min(len(crates), 2)):
        world.delete(c)
    for _ in range(2):
        if rng.random() < 0.2:
            world.create(Crate(x=rng.uniform(5000, 5499), y=rng.uniform(0, 499)), map="sea")
        else:
            world.create(Crate(x=rng.uniform(0, 999), y=rng.uniform(0, 999), label="new"))
    if rng.random() < 0.1:
        world.create(Notice(text=f"n{rng.random():.3f}"), key=f"board:{rng.randint(0, 3)}")


async def run_world(store: Store, ticks: int, seed: int = 1) -> dict[str, Any]:
    world = new_world()
    loop = TickLoop(world)
    rng = random.Random(seed)
    for _ in range(100):
        world.create(Crate(x=rng.uniform(0, 999), y=rng.uniform(0, 999)))
    async with Persistence(world, store, retry_max_s=0.2) as p:
        loop.on_changes(p.on_changes)
        for _ in range(ticks):
            churn(world, rng)
            loop.step()
            await asyncio.sleep(0)
        churn(world, rng)  # changes after the last tick count too
        await world.flush()
        final = world.documents([o.id for o in world])
    return final


def reload_in_new_process(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.store.load_world", *args],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=120,
    )
    result: dict[str, Any] = orjson.loads(out.stdout)
    return result


async def test_restart_sqlite_loads_an_equal_world(tmp_path: Path) -> None:
    path = tmp_path / "world.sqlite3"
    final = await run_world(SQLiteStore(path), ticks=300)
    reloaded = reload_in_new_process("sqlite", str(path))
    assert reloaded["loaded"] == len(final)
    assert reloaded["docs"] == final


@pytest.mark.mongo
async def test_restart_mongo_loads_an_equal_world(
    mongo_server: MongoServer, mongo_db_name: str
) -> None:
    store = MongoStore.connect(mongo_server.uri, mongo_db_name, **CLIENT_OPTIONS)
    final = await run_world(store, ticks=300, seed=2)
    reloaded = reload_in_new_process("mongo", mongo_server.uri, mongo_db_name)
    assert reloaded["docs"] == final


@pytest.mark.mongo
async def test_outage_delays_writes_and_loses_nothing(
    server_control: MongoServer, mongo_db_name: str
) -> None:
    store = MongoStore.connect(server_control.uri, mongo_db_name, **CLIENT_OPTIONS)
    world = new_world()
    loop = TickLoop(world)
    session = Session(
        "watcher",
        world.grid,
        limits=Limits(send_queue_max_frames=10_000, send_queue_max_bytes=10**9),
    )
    session.view("main", (0, 0, 999, 999), 1)
    loop.attach(session)
    rng = random.Random(3)
    for _ in range(100):
        world.create(Crate(x=rng.uniform(0, 999), y=rng.uniform(0, 999)))
    async with Persistence(world, store, retry_max_s=0.2) as p:
        loop.on_changes(p.on_changes)

        async def ticks(n: int) -> int:
            frames = 0
            for _ in range(n):
                churn(world, rng)
                loop.step()
                while session.pop() is not None:
                    frames += 1
                await asyncio.sleep(0.01)
            return frames

        assert await ticks(20) == 20
        await world.flush()
        server_control.stop()
        assert await ticks(60) == 60  # clients keep getting frames while the database is away
        stats = p.statistics()
        assert stats.failed_attempts > 0
        assert stats.pending_objects > 0
        server_control.start()
        assert await ticks(20) == 20
        await asyncio.wait_for(world.flush(), timeout=60)
        final = world.documents([o.id for o in world])
    async with MongoStore.connect(server_control.uri, mongo_db_name, **CLIENT_OPTIONS) as check:
        stored = await check.load()
    assert len(stored) == len({d["_id"] for d in stored})  # nothing duplicated
    assert {d["_id"]: d for d in stored} == final  # nothing lost, deletes applied


async def test_subset_loading_holds_exactly_the_region(tmp_path: Path) -> None:
    final = await run_world(SQLiteStore(tmp_path / "w.sqlite3"), ticks=30, seed=4)
    store = SQLiteStore(tmp_path / "w.sqlite3")
    region = Region("main", 200, 200, 600, 700)
    world = new_world()
    load_documents(world, await store.load(region=region))
    expected = {
        i
        for i, d in final.items()
        if d is not None
        and d["key"].startswith("main:")
        and 200 <= d["x"] < 600
        and 200 <= d["y"] < 700
    }
    assert {o.id for o in world} == expected
    assert expected
    keys = {"main:2:2", "board:1"}
    world2 = new_world()
    load_documents(world2, await store.load(keys=keys))
    assert {o.id for o in world2} == {i for i, d in final.items() if d and d["key"] in keys}
    await store.close()


def test_bad_documents_raise_or_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    good = {
        "_id": "g",
        "t": "persist-crate",
        "key": "main:0:0",
        "v": 3,
        "x": 1.0,
        "y": 2.0,
        "hp": 1,
        "label": "",
        "tags": [],
    }
    bad = [
        (
            {"_id": "u", "t": "no-such-type", "key": "main:0:0", "v": 1},
            "unknown type 'no-such-type'",
        ),
        (
            {"_id": "m", "t": "persist-crate", "key": "main:0:0", "v": 1, "x": 1.0},
            "missing field 'y'",
        ),
        (
            {
                "_id": "w",
                "t": "persist-crate",
                "key": "main:0:0",
                "v": 1,
                "x": 1.0,
                "y": 1.0,
                "hp": "lots",
            },
            "hp must be an int",
        ),
        (
            {
                "_id": "f",
                "t": "persist-crate",
                "key": "main:0:0",
                "v": 1,
                "x": 1.0,
                "y": 1.0,
                "wings": 2,
            },
            "unknown field 'wings'",
        ),
    ]
    for doc, message in bad:
        with pytest.raises(DocumentError, match=message) as e:
            load_documents(new_world(), [good, doc])
        assert e.value.doc_id == doc["_id"]
        assert repr(doc["_id"]) in str(e.value)
    world = new_world()
    report = load_documents(world, [good, *(d for d, _ in bad)], skip_bad=True)
    assert report.loaded == 1
    assert [i for i, _ in report.skipped] == ["u", "m", "w", "f"]
    assert world["g"].version == 3
    assert "skipped document 'w'" in caplog.text


async def test_server_shutdown_flushes_the_store(tmp_path: Path) -> None:
    path = tmp_path / "world.sqlite3"
    world = World(GridMap(cell_size=100, bounds=(0, 0, 1000, 1000)))
    server = Server(world, tick_rate_hz=50, freeze_gc=False)
    server.persist(SQLiteStore(path))
    crate = world.create(Crate(x=1, y=1))
    async with server.running():
        await asyncio.sleep(0.1)
        crate.hp = 77  # changed and never ticked before the shutdown begins
        gone = world.create(Crate(x=5, y=5))
        world.delete(gone)
        doomed = world.create(Crate(x=6, y=6))
        await asyncio.sleep(0.1)
        world.delete(doomed)
    async with SQLiteStore(path) as check:
        docs = {d["_id"]: d for d in await check.load()}
    assert docs == {crate.id: world.document(crate)}
    assert docs[crate.id]["hp"] == 77


async def test_write_interval_merges_ticks_and_flush_cuts_it_short(tmp_path: Path) -> None:
    world = new_world()
    loop = TickLoop(world)
    crates = [world.create(Crate(x=i, y=i)) for i in range(50)]
    async with Persistence(world, SQLiteStore(tmp_path / "w.sqlite3"), write_interval_s=30) as p:
        loop.on_changes(p.on_changes)
        loop.step()
        await asyncio.sleep(0.2)  # the first write happens at once
        assert p.statistics().writes_done == 1
        for _ in range(10):
            for c in crates:
                world.move(c, c.x + 1, c.y)
            loop.step()
            await asyncio.sleep(0.01)
        assert p.statistics().writes_done == 1  # ten ticks of motion wait for the interval
        await asyncio.wait_for(world.flush(), timeout=5)
        st = p.statistics()
        assert st.writes_done == 2
        assert st.objects_written == 100  # each object once per write, however many ticks
        final = world.documents([c.id for c in crates])
    async with SQLiteStore(tmp_path / "w.sqlite3") as check:
        assert {d["_id"]: d for d in await check.load()} == final


async def test_a_created_object_with_a_stored_id_fails_loudly_and_overwrites_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: with 24-bit id prefixes, a new object could take a stored object's id
    (about 3% over 1,000 process starts) and overwrite its document."""
    path = tmp_path / "w.sqlite3"
    first = new_world()
    first.create(Crate(id="shared", x=1, y=1, label="the first"))
    async with Persistence(first, SQLiteStore(path)) as p1:
        loop1 = TickLoop(first)
        loop1.on_changes(p1.on_changes)
        loop1.step()
    # A second process that did not load that part of the world creates the same id.
    second = new_world()
    loop = TickLoop(second)
    async with Persistence(second, SQLiteStore(path)) as p:
        loop.on_changes(p.on_changes)
        clash = second.create(Crate(id="shared", x=2, y=2, label="the second"))
        loop.step()
        await second.flush()
        clash.hp = 1
        loop.step()
        await second.flush()
        assert p.statistics().collisions == 1
    assert "already stored" in caplog.text
    async with SQLiteStore(path) as store:
        (doc,) = await store.load()
    assert doc["label"] == "the first"


def test_default_ids_carry_64_random_bits_per_world() -> None:
    ids = [new_world().create(Crate(x=1, y=1)).id for _ in range(200)]
    prefixes = {i[:11] for i in ids}
    assert len(prefixes) == 200
    assert all(len(i) <= 14 for i in ids)  # still short on the wire
