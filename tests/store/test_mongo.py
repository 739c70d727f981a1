"""MongoStore beyond the contract: connecting, outages, server refusals, FerretDB's quirks."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import BulkWriteError

from synkworld.store import StoreError, StoreUnavailableError, WriteBatch
from synkworld.store.mongo import MongoStore


class FakeCollection:
    """Stands for a collection whose bulk writes fail as a given server would."""

    def __init__(self, errors: list[BaseException | None]) -> None:
        self.errors = errors
        self.writes: list[list[Any]] = []

    async def create_index(self, keys: Any, **kwargs: Any) -> str:
        return "ok"

    async def bulk_write(self, ops: list[Any], *, ordered: bool) -> None:
        assert not ordered
        self.writes.append(ops)
        error = self.errors.pop(0) if self.errors else None
        if error is not None:
            raise error


class FakeDatabase:
    def __init__(self, collection: FakeCollection, replies: dict[str, dict[str, Any]]) -> None:
        self.collection = collection
        self.replies = replies
        self.commands: list[dict[str, Any]] = []

    def __getitem__(self, name: str) -> FakeCollection:
        return self.collection

    async def command(self, command: dict[str, Any] | str) -> dict[str, Any]:
        if isinstance(command, str):
            return {"ok": 1.0, "version": "7.0.0"}
        self.commands.append(command)
        entries = command.get("updates") or command.get("deletes")
        doc_id = entries[0]["q"]["_id"]
        return self.replies.get(doc_id, {"ok": 1.0, "n": 1})


def docs(*names: str) -> list[dict[str, Any]]:
    return [{"_id": name, "key": "main:0:0", "v": 1} for name in names]


def bulk_error(*write_errors: tuple[int, str], concern: bool = False) -> BulkWriteError:
    return BulkWriteError(
        {
            "writeErrors": [
                {"index": index, "code": 17419, "errmsg": message}
                for index, message in write_errors
            ],
            "writeConcernErrors": [{"code": 64, "errmsg": "waiting for replication"}]
            if concern
            else [],
            "nInserted": 0,
            "nUpserted": 0,
            "nMatched": 0,
            "nModified": 0,
            "nRemoved": 0,
            "upserted": [],
        }
    )


async def test_write_errors_refuse_the_ids_they_index_in_each_command() -> None:
    collection = FakeCollection(
        [None, bulk_error((1, "Resulting document after update is larger than 16777216"))]
    )
    store = MongoStore(FakeDatabase(collection, {}), max_ops_per_command=2)

    result = await store.apply(WriteBatch(upserts=docs("a", "b", "c"), deletes=["d"]))

    assert [len(ops) for ops in collection.writes] == [2, 2]
    assert result.written == 3
    assert list(result.rejected) == ["d"]
    assert "larger than 16777216 (code 17419)" in result.rejected["d"]


async def test_a_write_concern_error_means_unavailable() -> None:
    store = MongoStore(FakeDatabase(FakeCollection([bulk_error(concern=True)]), {}))

    with pytest.raises(StoreUnavailableError, match="write concern"):
        await store.apply(WriteBatch(upserts=docs("a")))


async def test_a_malformed_reply_is_resolved_by_replaying_each_operation() -> None:
    refusal = {"ok": 1.0, "writeErrors": [{"index": 0, "code": 2, "errmsg": "invalid key"}]}
    database = FakeDatabase(FakeCollection([KeyError("nModified")]), {"b": refusal})
    store = MongoStore(database)

    result = await store.apply(WriteBatch(upserts=docs("a", "b"), deletes=["c"]))

    assert result.written == 2
    assert result.rejected == {"b": "invalid key (code 2)"}
    assert [next(iter(c)) for c in database.commands] == ["update", "update", "delete"]


@pytest.mark.usefixtures("leaked_sockets_collected")
async def test_an_unreachable_server_raises_store_unavailable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = MongoStore.connect(
        f"mongodb://127.0.0.1:{port}/", "nowhere", serverSelectionTimeoutMS=100
    )
    async with store:
        with pytest.raises(StoreUnavailableError):
            await store.apply(WriteBatch(upserts=docs("a")))
        with pytest.raises(StoreUnavailableError):
            await store.load()


def test_settings_are_validated() -> None:
    database = FakeDatabase(FakeCollection([]), {})
    with pytest.raises(ValueError, match="max_document_bytes"):
        MongoStore(database, max_document_bytes=0)
    with pytest.raises(ValueError, match="max_ops_per_command"):
        MongoStore(database, max_ops_per_command=0)


@pytest.mark.mongo
@pytest.mark.usefixtures("leaked_sockets_collected")
async def test_connect_makes_a_store_that_owns_and_closes_its_client(
    mongo_server: Any, mongo_db_name: str
) -> None:
    store = MongoStore.connect(mongo_server.uri, mongo_db_name, "things")
    async with store:
        await store.apply(WriteBatch(upserts=docs("a")))
        assert await store.load() == docs("a")

    with pytest.raises(StoreError, match="closed"):
        await store.load()
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_server.uri)
    try:
        assert await client[mongo_db_name]["things"].count_documents({}) == 1
        indexes = await client[mongo_db_name]["things"].index_information()
        assert indexes["synkworld_key_x_y"]["key"] == [("key", 1), ("x", 1), ("y", 1)]
    finally:
        await client.close()


@pytest.mark.mongo
async def test_a_nested_field_name_the_server_refuses_is_refused_alone(
    mongo_server: Any, mongo_db_name: str, pymongo_client: AsyncMongoClient[Any]
) -> None:
    # FerretDB 1.x refuses "$" and "." in nested names (MongoDB 5+ takes them): the
    # store must then find the refused document although FerretDB's reply is wrong.
    store = MongoStore(pymongo_client[mongo_db_name])
    batch = WriteBatch(
        upserts=[*docs("a"), {"_id": "n", "bag": {"$b": 1}}, *docs("z")], deletes=["q"]
    )

    result = await store.apply(batch)

    stored = {doc["_id"] for doc in await store.load()}
    build_info = await pymongo_client.admin.command("buildInfo")
    if "ferretdbVersion" in build_info:
        assert list(result.rejected) == ["n"]
        assert "$b" in result.rejected["n"]
        assert stored == {"a", "z"}
        assert store.max_ops_per_command == 40
    else:
        assert stored - {"n"} == {"a", "z"}
        assert store.max_ops_per_command is None
