"""The contract every bus backend keeps, run over the in-process hub and a real redis-server."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from synkworld import BusUnavailableError
from synkworld.bus import Append, AppendResult, AppendStatus, Lease
from tests.bus.conftest import Kind

pytestmark = pytest.mark.timeout(60)


def fields(text: str) -> dict[bytes, bytes]:
    return {b"h": text.encode(), b"b:main:0:0": b'{"k":"main:0:0"}'}


def ap(region: str, epoch: int, tick: int, f: dict[bytes, bytes]) -> Append:
    return Append(region, epoch, tick, f)


def st(results: list[AppendResult]) -> list[AppendStatus]:
    return [r.status for r in results]


async def test_the_clock_epoch_is_set_once(kind: Kind) -> None:
    a, b = kind.backend("a"), kind.backend("b")
    assert await a.clock_epoch(1000) == 1000
    assert await b.clock_epoch(2000) == 1000


async def test_a_lease_is_held_by_one_node_and_its_epoch_only_grows(kind: Kind) -> None:
    a, b = kind.backend("a"), kind.backend("b")
    e1 = await a.acquire("r1", "a", 300)
    assert e1 is not None
    assert await b.acquire("r1", "b", 300) is None
    assert await a.acquire("r1", "a", 300) == e1  # held already: renewed
    e2 = await b.acquire("r2", "b", 300)
    assert e2 is not None and e2 > e1
    leases = await b.leases(["r1", "r2", "r3"])
    assert {r: (lease.node, lease.epoch) for r, lease in leases.items()} == {
        "r1": ("a", e1),
        "r2": ("b", e2),
    }
    await kind.pass_time(0.2)
    assert await a.renew({"r1": e1, "r2": e2}, "a", 300) == {"r2"}
    await kind.pass_time(0.2)
    assert await b.acquire("r1", "b", 300) is None  # renewed above
    await kind.pass_time(0.35)
    e3 = await b.acquire("r1", "b", 300)  # expired: taken over at a higher epoch
    assert e3 is not None and e3 > e2
    assert await a.renew({"r1": e1}, "a", 300) == {"r1"}
    await b.release("r1", "a", e1)  # not a's any more: nothing happens
    assert (await b.leases(["r1"]))["r1"].node == "b"
    await b.release("r1", "b", e3)
    assert await b.leases(["r1"]) == {}


async def test_appends_are_fenced_by_the_lease_and_a_tick_is_written_once(kind: Kind) -> None:
    a, b = kind.backend("a"), kind.backend("b")
    ea = await a.acquire("r1", "a", 5000)
    eb = await b.acquire("r2", "b", 5000)
    assert ea is not None and eb is not None
    statuses = st(
        await a.append(
            "a",
            [
                ap("r1", ea, 1, fields("1")),
                ap("r1", ea, 2, fields("2")),
                ap("r2", ea, 1, fields("x")),
            ],
        )
    )
    assert statuses == [AppendStatus.OK, AppendStatus.OK, AppendStatus.FENCED]
    (fenced,) = await a.append("a", [ap("r2", ea, 2, fields("x"))])
    assert (fenced.holder, fenced.epoch) == ("b", eb)
    assert st(await a.append("a", [ap("r1", ea, 2, fields("again"))])) == [AppendStatus.DUPLICATE]
    assert st(await a.append("a", [ap("r1", ea + 100, 3, fields("3"))])) == [AppendStatus.FENCED]
    # Nobody's lease (expired, or lost with the medium's data): the appender may take it again.
    assert st(await a.append("a", [ap("r9", ea, 1, fields("x"))])) == [AppendStatus.UNHELD]
    result = await b.read({"r1": -1, "r2": -1}, 0.01)
    assert [(r.region, r.tick, r.fields[b"h"]) for r in result.records] == [
        ("r1", 1, b"1"),
        ("r1", 2, b"2"),
    ]
    assert result.records[0].fields[b"b:main:0:0"] == b'{"k":"main:0:0"}'
    assert not result.gaps
    assert await b.has_entry("r1", 2) and not await b.has_entry("r1", 3)
    assert not await b.has_entry("r2", 1)


async def test_a_read_waits_for_the_next_entry(kind: Kind) -> None:
    a, b = kind.backend("a"), kind.backend("b")
    epoch = await a.acquire("r1", "a", 5000)
    assert epoch is not None
    await a.append("a", [ap("r1", epoch, 1, fields("1"))])
    assert not (await b.read({"r1": 1}, 0.05)).records

    async def later() -> None:
        await asyncio.sleep(0.05)
        await a.append("a", [ap("r1", epoch, 2, fields("2"))])

    appending = asyncio.ensure_future(later())
    result = await b.read({"r1": 1}, 2.0)
    await appending
    assert [r.tick for r in result.records] == [2]


async def test_ticks_a_reader_missed_are_a_gap(kind: Kind) -> None:
    a, b = kind.backend("a"), kind.backend("b")
    epoch = await a.acquire("r1", "a", 5000)
    assert epoch is not None
    # Redis trims `MAXLEN ~` streams by whole nodes of 100 entries: 400 ticks is enough.
    for tick in range(1, 401):
        await a.append("a", [ap("r1", epoch, tick, fields(str(tick)))])
    # Trimmed to about 50 entries: what came after tick 10 is gone.
    result = await b.read({"r1": 10}, 0.01)
    assert result.gaps == {"r1"}
    assert not (await b.read({"r1": 399}, 0.01)).gaps
    # Ticks without an entry are no gap: a new owner that starts later, say.
    await a.release("r1", "a", epoch)
    e2 = await b.acquire("r1", "b", 5000)
    assert e2 is not None
    await b.append("b", [ap("r1", e2, 410, fields("410"))])
    result = await b.read({"r1": 400}, 0.01)
    assert not result.gaps and [(r.tick, r.prev) for r in result.records] == [(410, 400)]


async def test_an_append_can_hand_the_lease_over(kind: Kind) -> None:
    a, b = kind.backend("a"), kind.backend("b")
    ea = await a.acquire("r1", "a", 5000)
    assert ea is not None
    (done,) = await a.append("a", [Append("r1", ea, 1, fields("last"), "b", 5000)])
    assert done.status is AppendStatus.OK and done.epoch is not None and done.epoch > ea
    (record,) = (await b.read({"r1": -1}, 0.01)).records
    assert record.epoch == done.epoch and record.prev == -1
    assert (await a.leases(["r1"]))["r1"] == Lease("b", done.epoch)
    assert st(await a.append("a", [ap("r1", ea, 2, fields("2"))])) == [AppendStatus.FENCED]
    assert st(await b.append("b", [ap("r1", done.epoch, 2, fields("2"))])) == [AppendStatus.OK]


async def test_epochs_grow_past_what_a_node_has_seen(kind: Kind) -> None:
    """After the medium lost its counter (a Redis restart), epochs must still grow."""
    a = kind.backend("a")
    assert await a.acquire("r1", "a", 5000, min_epoch=41) == 42
    assert (await a.acquire("r2", "a", 5000)) == 43


async def test_wanted_keys_are_taken_once(kind: Kind) -> None:
    a, b = kind.backend("a"), kind.backend("b")
    await a.want({"r1": ["main:0:0", "main:0:1"]})
    await b.want({"r1": ["main:0:1", "main:2:2"], "r2": ["room"], "r4": []})
    assert await a.take_wanted(["r1", "r3"]) == {"r1": {"main:0:0", "main:0:1", "main:2:2"}}
    assert await a.take_wanted(["r1", "r2"]) == {"r2": {"room"}}
    assert await a.take_wanted(["r1", "r2"]) == {}


async def test_members_live_as_long_as_their_heartbeat(kind: Kind) -> None:
    a, b = kind.backend("a"), kind.backend("b")
    await a.heartbeat("a", b'{"owner": true}', 300)
    await b.heartbeat("b", b"{}", 5000)
    assert await a.members() == {"a": b'{"owner": true}', "b": b"{}"}
    await kind.pass_time(0.4)
    assert await a.members() == {"b": b"{}"}


async def test_messages_reach_their_node(kind: Kind) -> None:
    a, b = kind.backend("a"), kind.backend("b")
    await b.heartbeat("b", b"{}", 5000)
    await a.send("b", b"one")
    await a.send("b", b"two")
    assert await b.receive("b", 1.0) == [b"one", b"two"]
    assert await b.receive("b", 0.02) == []


async def test_a_reader_notices_that_the_medium_lost_everything(kind: Kind) -> None:
    a, b = kind.backend("a"), kind.backend("b")
    epoch = await a.acquire("r1", "a", 5000)
    assert epoch is not None
    await a.append("a", [ap("r1", epoch, 1, fields("1"))])
    assert [r.tick for r in (await b.read({"r1": -1}, 0.01)).records] == [1]
    if kind.name == "memory":
        kind.hub.wipe()  # type: ignore[attr-defined]
    else:
        import redis.asyncio as aioredis

        client = aioredis.from_url(kind.server.url)  # type: ignore[attr-defined]
        await client.flushall()
        await client.aclose()
    result = await b.read({"r1": 1}, 0.01)
    assert result.gaps == {"r1"} and not result.records
    assert await a.leases(["r1"]) == {}
    assert not (await b.read({"r1": 1}, 0.01)).gaps  # told once


async def test_memory_faults_delay_drop_fence_and_disconnect() -> None:
    from synkworld.bus import MemoryHub
    from synkworld.testing import FakeClock

    clock = FakeClock()
    hub = MemoryHub(clock=clock)
    a, b = hub.backend("a"), hub.backend("b")
    epoch = await a.acquire("r1", "a", 5000)
    assert epoch is not None
    hub.delay("r1", 1.0)
    await a.append("a", [ap("r1", epoch, 1, fields("1"))])
    assert not (await b.read({"r1": -1}, 0.01)).records
    clock.advance(1.0)
    assert [r.tick for r in (await b.read({"r1": -1}, 0.01)).records] == [1]
    hub.delay("r1", 0)
    hub.drop_next("r1")
    assert st(await a.append("a", [ap("r1", epoch, 2, fields("2"))])) == [AppendStatus.OK]
    await a.append("a", [ap("r1", epoch, 3, fields("3"))])
    result = await b.read({"r1": 1}, 0.01)
    assert result.gaps == {"r1"} and [r.tick for r in result.records] == [3]
    hub.fence("r1")
    assert st(await a.append("a", [ap("r1", epoch, 4, fields("4"))])) == [AppendStatus.FENCED]
    hub.disconnect("a")
    with pytest.raises(BusUnavailableError):
        await a.leases(["r1"])
    hub.reconnect("a")
    assert (await a.leases(["r1"]))["r1"].node == "thief"


@pytest.mark.redis
async def test_appends_go_on_after_redis_forgets_its_scripts(redis_server: Any) -> None:
    # An append is one EVALSHA, sent straight; a Redis that restarted
    # (or had SCRIPT FLUSH) knows no script: the append loads it and goes on.
    import redis.asyncio as aioredis

    from synkworld.bus import RedisBackend

    world = f"t{uuid.uuid4().hex[:10]}"
    a = RedisBackend(redis_server.url, world, maxlen=50)
    admin = aioredis.from_url(redis_server.url)
    try:
        epoch = await a.acquire("r1", "a", 5000)
        assert epoch is not None
        assert st(await a.append("a", [ap("r1", epoch, 1, fields("1"))])) == [AppendStatus.OK]
        await admin.script_flush()
        statuses = st(
            await a.append("a", [ap("r1", epoch, 2, fields("2")), ap("r1", epoch, 3, fields("3"))])
        )
        assert statuses == [AppendStatus.OK, AppendStatus.OK]
        result = await a.read({"r1": -1}, 0.01)
        assert [r.tick for r in result.records] == [1, 2, 3]
    finally:
        await a.close()
        await admin.aclose()
