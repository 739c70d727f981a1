"""SQLiteStore beyond the contract: its file, its schema, its indexes, its thread."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from synkworld.store import Region, SQLiteStore, StoreUnavailableError, WriteBatch


async def test_the_file_is_in_wal_mode_with_the_search_fields_in_columns(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite3"
    doc = {"_id": "a", "t": "entity", "key": "main:1:2", "v": 7, "x": 260, "y": 510.5, "hp": 3}
    async with SQLiteStore(path) as store:
        await store.apply(WriteBatch(upserts=[doc, {"_id": "c", "key": "chat", "x": "?"}]))

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        rows = conn.execute("SELECT _id, t, key, v, map, x, y, doc FROM objects ORDER BY _id")
        a, c = rows.fetchall()
    assert a[:7] == ("a", "entity", "main:1:2", 7, "main", 260.0, 510.5)
    assert orjson.loads(a[7]) == doc
    assert c[:7] == ("c", None, "chat", None, None, None, None)


@pytest.mark.parametrize(
    ("load", "index"),
    [
        ({"keys": ["main:0:0"]}, "objects_key"),
        ({"region": Region("main", 0, 0, 250, 250)}, "objects_map_pos"),
    ],
)
async def test_loads_use_an_index(tmp_path: Path, load: dict[str, Any], index: str) -> None:
    path = tmp_path / "w.sqlite3"
    async with SQLiteStore(path) as store:
        await store.load(**load)  # creates the schema
    sql = (
        "SELECT _id, doc FROM objects WHERE key IN (?)"
        if "keys" in load
        else "SELECT _id, doc FROM objects WHERE map = ? AND x >= ? AND x < ? AND y >= ? AND y < ?"
    )
    params = ["k"] if "keys" in load else ["main", 0, 1, 0, 1]

    with sqlite3.connect(path) as conn:
        plan = " ".join(str(row) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
    assert index in plan


async def test_every_call_runs_on_one_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    connect = sqlite3.connect

    def recording_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        threads.append(threading.current_thread().name)
        return connect(*args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", recording_connect)
    async with SQLiteStore(tmp_path / "w.sqlite3") as store:
        await store.apply(WriteBatch(upserts=[{"_id": "a"}]))
        await store.load()

    assert len(threads) == 1
    assert threads[0].startswith("synkworld-sqlite")
    assert threads[0] != threading.current_thread().name


async def test_a_file_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "missing-dir" / "w.sqlite3") as store:
        with pytest.raises(StoreUnavailableError, match="unable to open"):
            await store.load()


async def test_other_position_fields_can_be_indexed(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "w.sqlite3", pos_fields=("lon", "lat")) as store:
        await store.apply(WriteBatch(upserts=[{"_id": "a", "key": "geo:0:0", "lon": 5, "lat": 6}]))
        found = await store.load(region=Region("geo", 0, 0, 10, 10, pos_fields=("lon", "lat")))
        assert [doc["_id"] for doc in found] == ["a"]
        assert await store.load(region=Region("geo", 0, 0, 10, 10)) == []


def test_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="table"):
        SQLiteStore(tmp_path / "w", table="objects; DROP")
    with pytest.raises(ValueError, match="max_document_bytes"):
        SQLiteStore(tmp_path / "w", max_document_bytes=0)
    with pytest.raises(ValueError, match="busy_timeout_s"):
        SQLiteStore(tmp_path / "w", busy_timeout_s=-1)
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore(tmp_path / "w", synchronous="OFF")  # type: ignore[arg-type]
