"""WriteBehind: merging marks, flush, back-off, refusals, statistics, outages of real stores."""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from synkworld.store import (
    MemoryStore,
    SQLiteStore,
    Store,
    StoreError,
    StoreUnavailableError,
    WriteBatch,
    WriteBehind,
    WriteResult,
)
from synkworld.store.mongo import MongoStore
from synkworld.testing import FakeClock

FAST = {"retry_initial_s": 0.01, "retry_max_s": 0.05}


class DictSource:
    """A world in miniature: documents by id, and the DocumentSource protocol over them."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.calls: list[list[str]] = []
        self.fail_next = 0

    def documents(self, ids: Collection[str]) -> dict[str, dict[str, Any] | None]:
        self.calls.append(list(ids))
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("the source failed")
        return {i: dict(self.docs[i]) if i in self.docs else None for i in ids}

    def put(self, doc_id: str, **fields: Any) -> str:
        doc = self.docs.setdefault(doc_id, {"_id": doc_id, "t": "entity", "key": "k", "v": 0})
        doc.update(fields)
        doc["v"] += 1
        return doc_id

    def remove(self, doc_id: str) -> str:
        del self.docs[doc_id]
        return doc_id


class RecordingStore(MemoryStore):
    """A memory store that records each batch, and can hold or fail writes on demand."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batches: list[WriteBatch] = []
        self.attempts: list[float] = []
        self.hold: asyncio.Semaphore | None = None
        self.fail_after_hold = 0

    async def apply(self, batch: WriteBatch) -> WriteResult:
        self.attempts.append(asyncio.get_running_loop().time())
        copied = WriteBatch(
            [dict(d) for d in batch.upserts],
            list(batch.deletes),
            [dict(d) for d in batch.inserts],
        )
        if self.hold is not None:
            await self.hold.acquire()
        if self.fail_after_hold:
            self.fail_after_hold -= 1
            raise StoreUnavailableError("failed while the write was under way")
        result = await super().apply(batch)
        self.batches.append(copied)
        return result


async def stored(store: Store) -> dict[str, dict[str, Any]]:
    return {doc["_id"]: doc for doc in await store.load()}


@pytest.fixture
def source() -> DictSource:
    return DictSource()


@pytest.fixture
def store() -> RecordingStore:
    return RecordingStore()


async def test_an_object_changed_in_many_ticks_is_written_once_with_its_latest_state(
    source: DictSource, store: RecordingStore
) -> None:
    wb = WriteBehind(store, source)
    for tick in range(1, 6):
        wb.mark(tick, [source.put("a", hp=tick)], [])
    wb.mark(6, [source.put("b")], [])

    async with wb:
        await wb.flush()

    assert len(store.batches) == 1
    assert store.batches[0].deletes == []
    assert sorted(store.batches[0].upserts, key=lambda d: d["_id"]) == [
        source.docs["a"],
        source.docs["b"],
    ]
    assert source.docs["a"]["hp"] == 5
    assert await stored(store) == source.docs


async def test_a_delete_in_the_same_mark_supersedes_a_change(
    source: DictSource, store: RecordingStore
) -> None:
    await store.apply(WriteBatch(upserts=[{"_id": "a", "v": 1}]))
    async with WriteBehind(store, source) as wb:
        wb.mark(1, ["a"], ["a"])
        await wb.flush()

    assert store.batches[-1] == WriteBatch(upserts=[], deletes=["a"])
    assert await stored(store) == {}


async def test_the_latest_mark_decides_between_delete_and_write(
    source: DictSource, store: RecordingStore
) -> None:
    wb = WriteBehind(store, source)
    wb.mark(1, [source.put("a"), source.put("b")], [])
    wb.mark(2, [], [source.remove("a")])
    wb.mark(3, [], [source.remove("b")])
    wb.mark(4, [source.put("b", reborn=True)], [])

    async with wb:
        await wb.flush()

    assert store.batches == [WriteBatch(upserts=[source.docs["b"]], deletes=["a"])]
    assert await stored(store) == {"b": source.docs["b"]}


async def test_an_object_the_source_no_longer_has_is_deleted(
    source: DictSource, store: RecordingStore
) -> None:
    await store.apply(WriteBatch(upserts=[{"_id": "gone", "v": 3}]))
    async with WriteBehind(store, source) as wb:
        wb.mark(1, ["gone"], [])
        await wb.flush()

    assert store.batches[-1].deletes == ["gone"]
    assert await stored(store) == {}


async def test_flush_with_nothing_marked_returns_at_once(
    source: DictSource, store: RecordingStore
) -> None:
    wb = WriteBehind(store, source)
    await wb.flush()
    wb.mark(1, [], [])
    await wb.flush()
    assert store.attempts == []


async def test_flush_waits_for_the_write_and_not_for_later_marks(
    source: DictSource, store: RecordingStore
) -> None:
    store.hold = asyncio.Semaphore(0)
    async with WriteBehind(store, source) as wb:
        wb.mark(1, [source.put("a")], [])
        flush = asyncio.create_task(wb.flush())
        await asyncio.sleep(0.01)
        assert not flush.done()
        assert wb.statistics().pending_objects == 1

        wb.mark(2, [source.put("b")], [])  # while a's write is under way
        store.hold.release()  # lets a's write through, not b's
        await asyncio.wait_for(flush, 5)

        assert await stored(store) == {"a": source.docs["a"]}
        assert wb.statistics().pending_objects == 1
        second = asyncio.create_task(wb.flush())
        await asyncio.sleep(0.01)
        assert not second.done()
        store.hold.release()
        await asyncio.wait_for(second, 5)

    assert await stored(store) == source.docs


async def test_an_outage_keeps_every_mark_and_writes_the_final_state(
    source: DictSource, store: RecordingStore
) -> None:
    for name in "abcd":
        source.put(name, hp=0)
    await store.apply(WriteBatch(upserts=[dict(d) for d in source.docs.values()]))
    store.batches.clear()
    store.available = False

    async with WriteBehind(store, source, **FAST) as wb:
        for tick in range(1, 30):
            wb.mark(tick, [source.put("a", hp=tick)], [])
            if tick == 10:
                wb.mark(tick, [], [source.remove("b")])
            if tick == 20:
                wb.mark(tick, [source.put("e")], [source.remove("c")])
            await asyncio.sleep(0.005)
        failed = wb.statistics()
        store.available = True
        await asyncio.wait_for(wb.flush(), 5)

    assert failed.failed_attempts >= 2
    assert failed.last_error is not None
    assert "StoreUnavailableError" in failed.last_error
    assert failed.pending_objects == 4
    assert await stored(store) == source.docs
    assert wb.statistics().pending_objects == 0


async def test_a_retry_rereads_the_source_so_an_older_state_never_wins(
    source: DictSource, store: RecordingStore
) -> None:
    store.hold = asyncio.Semaphore(0)
    store.fail_after_hold = 1
    async with WriteBehind(store, source, **FAST) as wb:
        wb.mark(1, [source.put("a", hp=1)], [])
        await asyncio.sleep(0.01)  # a's write (hp=1) is under way, held
        wb.mark(2, [source.put("a", hp=2)], [])
        store.hold.release()  # ...and fails
        await asyncio.sleep(0.005)
        store.hold.release()
        store.hold.release()
        await asyncio.wait_for(wb.flush(), 5)

    assert [b.upserts[0]["hp"] for b in store.batches] == [2]
    assert await stored(store) == {"a": source.docs["a"]}


async def test_refused_documents_are_logged_counted_and_do_not_block_the_rest(
    source: DictSource, caplog: pytest.LogCaptureFixture
) -> None:
    store = RecordingStore(max_document_bytes=1_000)
    source.put("fine")
    source.put("huge", blob="x" * 2_000)
    source.put("bad", **{"$where": 1})

    with caplog.at_level(logging.ERROR, logger="synkworld.store"):
        async with WriteBehind(store, source) as wb:
            wb.mark(1, ["fine", "huge", "bad"], [])
            await asyncio.wait_for(wb.flush(), 5)

    assert await stored(store) == {"fine": source.docs["fine"]}
    stats = wb.statistics()
    assert stats.rejected == 2
    assert stats.pending_objects == 0
    assert stats.objects_written == 1
    logged = [r.getMessage() for r in caplog.records if r.name == "synkworld.store"]
    assert any("'huge'" in m and "over the limit" in m for m in logged)
    assert any("'bad'" in m and "starts with '$'" in m for m in logged)


async def test_a_document_with_another_id_than_asked_for_is_refused(
    store: RecordingStore,
) -> None:
    class WrongIds(DictSource):
        def documents(self, ids: Collection[str]) -> dict[str, dict[str, Any] | None]:
            return {i: {"_id": i + "-x", "v": 1} for i in ids}

    async with WriteBehind(store, WrongIds()) as wb:
        wb.mark(1, ["a"], [])
        await wb.flush()

    assert wb.statistics().rejected == 1
    assert await stored(store) == {}


async def test_a_failing_source_is_retried(
    source: DictSource, store: RecordingStore, caplog: pytest.LogCaptureFixture
) -> None:
    source.fail_next = 2
    with caplog.at_level(logging.ERROR, logger="synkworld.store"):
        async with WriteBehind(store, source, **FAST) as wb:
            wb.mark(1, [source.put("a")], [])
            await asyncio.wait_for(wb.flush(), 5)

    assert await stored(store) == source.docs
    assert wb.statistics().failed_attempts == 2
    assert "the source failed" in caplog.text


async def test_retries_back_off_exponentially_up_to_the_maximum(
    source: DictSource, store: RecordingStore
) -> None:
    store.available = False
    async with WriteBehind(store, source, retry_initial_s=0.02, retry_max_s=0.08) as wb:
        wb.mark(1, [source.put("a")], [])
        await asyncio.sleep(0.5)
        store.available = True
        await asyncio.wait_for(wb.flush(), 5)

    gaps = [b - a for a, b in zip(store.attempts, store.attempts[1:], strict=False)]
    expected = [0.02, 0.04, 0.08, 0.08, 0.08]
    assert len(gaps) >= 4
    for gap, least in zip(gaps, expected, strict=False):
        assert gap >= least * 0.9
    # Nowhere near one attempt per event-loop turn.
    assert len(store.attempts) <= 12


async def test_statistics_report_the_pending_set_its_age_and_the_lag() -> None:
    clock = FakeClock()
    source, store = DictSource(), RecordingStore()
    wb = WriteBehind(store, source, max_pending_objects=1, clock=clock)

    empty = wb.statistics()
    assert empty.pending_objects == 0
    assert empty.oldest_pending_tick is None
    assert empty.oldest_pending_age_s is None
    assert empty.write_lag_ticks == 0
    assert not empty.over_limit

    wb.mark(10, [source.put("a")], [])
    clock.now += 2.5
    wb.mark(12, [source.put("b")], [])
    wb.mark(13, [], [])
    stats = wb.statistics()
    assert stats.pending_objects == 2
    assert stats.oldest_pending_tick == 10
    assert stats.oldest_pending_age_s == 2.5
    assert stats.last_marked_tick == 13
    assert stats.write_lag_ticks == 3
    assert stats.over_limit
    assert stats.max_pending_objects == 1

    async with wb:
        await wb.flush()
    done = wb.statistics()
    assert (done.pending_objects, done.oldest_pending_tick, done.over_limit) == (0, None, False)
    assert (done.writes_done, done.objects_written, done.failed_attempts) == (1, 2, 0)
    assert done.last_marked_tick == 13


async def test_past_the_limit_marks_are_still_accepted_and_written(
    source: DictSource, store: RecordingStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.available = False
    with caplog.at_level(logging.WARNING, logger="synkworld.store"):
        async with WriteBehind(store, source, max_pending_objects=3, **FAST) as wb:
            for tick in range(10):
                wb.mark(tick, [source.put(f"e{tick}")], [])
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.05)
            over = wb.statistics()
            store.available = True
            await asyncio.wait_for(wb.flush(), 5)

    assert over.over_limit
    assert over.pending_objects == 10
    assert not wb.statistics().over_limit
    assert await stored(store) == source.docs
    assert "more than max_pending_objects=3" in caplog.text


async def test_leaving_the_block_flushes_and_closes(
    source: DictSource, store: RecordingStore
) -> None:
    async with WriteBehind(store, source) as wb:
        wb.mark(1, [source.put("a")], [])

    assert await stored(store) == source.docs
    with pytest.raises(RuntimeError, match="closed"):
        wb.mark(2, [source.put("b")], [])
    await wb.aclose()


async def test_run_can_live_in_the_applications_task_group(
    source: DictSource, store: RecordingStore
) -> None:
    wb = WriteBehind(store, source)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(wb.run())
        wb.mark(1, [source.put("a")], [])
        await wb.flush()
        wb.mark(2, [source.put("b")], [])
        await wb.aclose()

    assert await stored(store) == source.docs
    with pytest.raises(RuntimeError, match="runs once"):
        await wb.run()


async def test_stopping_the_writer_during_an_outage_fails_the_waiting_flushes(
    source: DictSource, store: RecordingStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.available = False
    wb = WriteBehind(store, source, **FAST)
    writer = asyncio.create_task(wb.run())
    wb.mark(1, [source.put("a"), source.put("b")], [])
    flush = asyncio.create_task(wb.flush())
    await asyncio.sleep(0.03)

    with caplog.at_level(logging.ERROR, logger="synkworld.store"):
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer

    with pytest.raises(StoreError, match="2 objects unwritten"):
        await flush
    assert "2 objects unwritten" in caplog.text
    with pytest.raises(StoreError):
        await wb.flush()


async def test_a_shutdown_that_times_out_during_an_outage_stops_the_writer(
    source: DictSource, store: RecordingStore
) -> None:
    store.available = False
    wb = WriteBehind(store, source, **FAST)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1), wb:
            wb.mark(1, [source.put("a")], [])

    assert wb.statistics().pending_objects == 1
    with pytest.raises(RuntimeError, match="closed"):
        wb.mark(2, ["a"], [])


def test_settings_are_validated(source: DictSource, store: RecordingStore) -> None:
    with pytest.raises(ValueError, match="max_pending_objects"):
        WriteBehind(store, source, max_pending_objects=0)
    with pytest.raises(ValueError, match="retry_initial_s"):
        WriteBehind(store, source, retry_initial_s=0)
    with pytest.raises(ValueError, match="retry_initial_s"):
        WriteBehind(store, source, retry_initial_s=2, retry_max_s=1)


# Outages of real stores: the world keeps ticking, the database goes away and comes back.


def one_tick(source: DictSource, rng: random.Random, serial: Iterator[int]) -> tuple[list, list]:
    """Creates, moves and deletes a few objects, as a simulation step would."""
    changed: list[str] = []
    deleted: list[str] = []
    for _ in range(rng.randint(1, 6)):
        roll = rng.random()
        if roll < 0.3 or len(source.docs) < 3:
            x, y = rng.uniform(0, 1000), rng.uniform(0, 1000)
            changed.append(
                source.put(
                    f"e{next(serial)}", x=x, y=y, key=f"main:{int(x // 250)}:{int(y // 250)}"
                )
            )
        elif roll < 0.85:
            doc_id = rng.choice(sorted(source.docs))
            x, y = rng.uniform(0, 1000), rng.uniform(0, 1000)
            key = f"main:{int(x // 250)}:{int(y // 250)}"
            changed.append(source.put(doc_id, x=x, y=y, key=key, hp=rng.randint(0, 100)))
        else:
            deleted.append(source.remove(rng.choice(sorted(source.docs))))
    return changed, deleted


async def tick_until_failures(
    wb: WriteBehind,
    source: DictSource,
    rng: random.Random,
    serial: Iterator[int],
    *,
    first_tick: int,
) -> int:
    """Ticks every 10 ms until the writer has failed three times (and at least 30 ticks)."""
    tick = first_tick
    async with asyncio.timeout(30):
        while tick < first_tick + 30 or wb.statistics().failed_attempts < 3:
            wb.mark(tick, *one_tick(source, rng, serial))
            tick += 1
            await asyncio.sleep(0.01)
    return tick


def serial_numbers() -> Iterator[int]:
    n = 0
    while True:
        n += 1
        yield n


@pytest.mark.mongo
async def test_mongodb_going_away_mid_run_loses_nothing(
    server_control: Any, mongo_db_name: str, pymongo_client: AsyncMongoClient[Any]
) -> None:
    rng, serial, source = random.Random(7), serial_numbers(), DictSource()
    store = MongoStore(pymongo_client[mongo_db_name])
    async with WriteBehind(store, source, retry_initial_s=0.02, retry_max_s=0.2) as wb:
        for tick in range(1, 30):
            wb.mark(tick, *one_tick(source, rng, serial))
            await asyncio.sleep(0.01)
        await wb.flush()
        before = wb.statistics()

        await asyncio.to_thread(server_control.stop)
        tick = await tick_until_failures(wb, source, rng, serial, first_tick=30)
        during = wb.statistics()

        restart = asyncio.create_task(asyncio.to_thread(server_control.start))
        while not restart.done():  # the world keeps ticking while it comes back
            wb.mark(tick, *one_tick(source, rng, serial))
            tick += 1
            await asyncio.sleep(0.01)
        await restart
        for later in range(tick, tick + 20):
            wb.mark(later, *one_tick(source, rng, serial))
            await asyncio.sleep(0.01)
        await asyncio.wait_for(wb.flush(), 60)

    assert before.failed_attempts == 0
    assert during.failed_attempts >= 1
    assert during.pending_objects > 0
    assert during.last_error is not None
    assert "StoreUnavailableError" in during.last_error
    assert wb.statistics().pending_objects == 0
    assert await stored(store) == source.docs
    assert len(source.docs) > 20


async def test_a_locked_sqlite_file_loses_nothing(tmp_path: Path) -> None:
    rng, serial, source = random.Random(11), serial_numbers(), DictSource()
    path = tmp_path / "world.sqlite3"
    store = SQLiteStore(path, busy_timeout_s=0.02)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        async with store, WriteBehind(store, source, **FAST) as wb:
            for tick in range(1, 20):
                wb.mark(tick, *one_tick(source, rng, serial))
                await asyncio.sleep(0.005)
            await wb.flush()

            other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
            tick = await tick_until_failures(wb, source, rng, serial, first_tick=20)
            during = wb.statistics()
            other.execute("ROLLBACK")

            for later in range(tick, tick + 10):
                wb.mark(later, *one_tick(source, rng, serial))
                await asyncio.sleep(0.005)
            await asyncio.wait_for(wb.flush(), 10)

            assert during.failed_attempts >= 1
            assert during.last_error is not None
            assert "locked" in during.last_error
            assert await stored(store) == source.docs
    finally:
        other.close()


async def test_a_new_object_colliding_with_a_stored_document_is_never_written(
    source: DictSource, store: RecordingStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: a created object took the id of a stored one and overwrote it."""
    await store.apply(WriteBatch(upserts=[{"_id": "a", "owner": "someone else"}]))
    wb = WriteBehind(store, source, **FAST)
    async with wb:
        wb.mark(1, [source.put("a"), source.put("b")], [], created_ids=["a", "b"])
        await wb.flush()
        wb.mark(2, [source.put("a", hp=1)], [])
        await wb.flush()
        wb.mark(3, [], [source.remove("a")])
        await wb.flush()
    docs = await stored(store)
    assert docs["a"] == {"_id": "a", "owner": "someone else"}
    assert docs["b"]["v"] == 1
    assert wb.statistics().collisions == 1
    assert "already stored" in caplog.text
    written = store.batches[1:]  # after the stored document the test wrote itself
    assert all("a" not in {d["_id"] for d in b.upserts} for b in written)
    assert all("a" not in b.deletes for b in written)


class LandsThenFails(RecordingStore):
    """Writes the batch, then reports a failure: the outcome a client cannot tell apart."""

    def __init__(self) -> None:
        super().__init__()
        self.lie_times = 1

    async def apply(self, batch: WriteBatch) -> WriteResult:
        result = await super().apply(batch)
        if self.lie_times:
            self.lie_times -= 1
            raise StoreUnavailableError("the reply was lost")
        return result


async def test_an_insert_that_reached_the_store_in_a_failed_attempt_is_no_collision(
    source: DictSource,
) -> None:
    store = LandsThenFails()
    wb = WriteBehind(store, source, **FAST)
    async with wb:
        wb.mark(1, [source.put("a", hp=1)], [], created_ids=["a"])
        await asyncio.sleep(0.005)
        wb.mark(2, [source.put("a", hp=2)], [])
        await wb.flush()
    assert wb.statistics().collisions == 0
    assert (await stored(store))["a"]["hp"] == 2


async def test_an_object_created_and_deleted_before_its_write_writes_nothing(
    source: DictSource, store: RecordingStore
) -> None:
    await store.apply(WriteBatch(upserts=[{"_id": "a", "owner": "someone else"}]))
    wb = WriteBehind(store, source, **FAST)
    async with wb:
        wb.mark(1, [source.put("a")], [], created_ids=["a"])
        wb.mark(2, [], [source.remove("a")])
        await wb.flush()
    assert (await stored(store))["a"] == {"_id": "a", "owner": "someone else"}


async def test_abandon_returns_what_was_owed_and_stops_at_once(
    source: DictSource, store: RecordingStore
) -> None:
    from synkworld.store._write_behind import DELETE, INSERT, INSERT_UNSURE, UPSERT

    await store.apply(WriteBatch(upserts=[{"_id": "c"}]))
    store.available = False
    wb = WriteBehind(store, source, **FAST)
    async with asyncio.timeout(5):
        await wb.__aenter__()
        wb.mark(1, [source.put("a"), source.put("b")], [], created_ids=["a"])
        await asyncio.sleep(0.05)  # a failed attempt: "a" may have landed
        wb.mark(2, [], ["c"], created_ids=["d"])
        owed = await wb.abandon()
    assert owed == {"a": INSERT_UNSURE, "b": UPSERT, "c": DELETE, "d": INSERT}
    with pytest.raises(RuntimeError, match="closed"):
        wb.mark(3, ["a"], [])


async def test_a_forgotten_id_is_neither_written_nor_deleted(
    source: DictSource, store: RecordingStore
) -> None:
    """An object that left for another process's world: that process writes it now."""
    await store.apply(WriteBatch(upserts=[{"_id": "left", "v": 3}]))
    wb = WriteBehind(store, source)
    wb.mark(1, ["left", source.put("stays")], [])
    wb.forget(["left"])  # gone from the source too: a write would be a delete
    async with wb:
        await wb.flush()
    assert store.batches[1:] == [WriteBatch(upserts=[source.docs["stays"]])]
    assert (await stored(store))["left"] == {"_id": "left", "v": 3}


async def test_a_gate_holds_writes_back_and_loses_none(
    source: DictSource, store: RecordingStore
) -> None:
    held: list[str | None] = ["the lease may have expired"]
    wb = WriteBehind(store, source, gate=lambda: held[0], **FAST)
    async with wb:
        wb.mark(1, [source.put("a", hp=1)], [])
        await asyncio.sleep(0.1)
        assert store.batches == []
        assert "writes held: the lease may have expired" in (wb.statistics().last_error or "")
        held[0] = None
        await asyncio.wait_for(wb.flush(), 5)
    assert await stored(store) == source.docs


async def test_fenced_writes_are_dropped_and_counted(
    source: DictSource, store: RecordingStore
) -> None:
    await store.apply(WriteBatch(upserts=[{"_id": "a", "v": 9, "ep": 7}]))
    async with WriteBehind(store, source) as wb:
        wb.mark(1, [source.put("a", ep=3), source.put("b", ep=3)], [])
        await wb.flush()
        assert wb.statistics().fenced == 1
        assert wb.statistics().pending_objects == 0
    docs = await stored(store)
    assert docs["a"] == {"_id": "a", "v": 9, "ep": 7} and docs["b"]["ep"] == 3
