"""`MongoStore`: documents in a MongoDB collection, through PyMongo's async API or Motor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument
from pymongo import AsyncMongoClient, DeleteOne, InsertOne, UpdateOne
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    ExecutionTimeout,
    PyMongoError,
    WriteConcernError,
    WTimeoutError,
)

from synkworld._errors import ConfigError
from synkworld.store._base import (
    DEFAULT_MAX_DOCUMENT_BYTES,
    Document,
    Region,
    Store,
    WriteBatch,
    WriteResult,
    field_name_problem,
    upsert_id,
)
from synkworld.store._errors import StoreError, StoreUnavailableError
from synkworld.store._spill import default_spill_dir

__all__ = ["MongoStore"]

logger = logging.getLogger("synkworld.store")

# Keeps each `$in` query far below the 16 MiB command limit.
_KEYS_PER_QUERY = 10_000

# Under both FerretDB 1.x connection pools (50 and 100), with room to spare.
_FERRETDB_1_MAX_OPS = 40

_DUPLICATE_KEY = 11000

# What is sent for one id: ("insert", raw document), ("update", update document) or
# ("delete", None).
_Sent = tuple[str, str, Any]


class MongoStore(Store):
    """Stores documents in one MongoDB collection, one bulk write per batch.

    Takes a database object of PyMongo's async API (`pymongo.AsyncMongoClient()[name]`)
    or of Motor (`AsyncIOMotorClient()[name]`); both drivers are used through the
    same calls. A store made from a database leaves its client to the caller; one
    made by `MongoStore.connect()` owns its client and closes it.

    A batch is one unordered `bulk_write` of `InsertOne(doc)` for new objects
    (a duplicate `_id` leaves the stored document and is reported in
    `WriteResult.existing`), `UpdateOne({_id}, {$set: fields}, upsert=True)`
    and `DeleteOne({_id})`. A shutdown that cannot write spills to
    `synkworld-spill-<db>.<collection>.json` in `default_spill_dir()` unless
    `spill_path` names another file. Each `$set` document is encoded to BSON
    once, here, so that a document over `max_document_bytes` (16 MiB by default,
    MongoDB's limit) or with a value BSON cannot encode is refused before it is
    sent, and the rest of the batch still goes. Write errors the server reports
    (`BulkWriteError`) refuse the ids they name. Network failures, timeouts and
    write-concern errors raise `StoreUnavailableError`: every operation is
    idempotent, so the whole batch can be sent again.

    Indexes, created on first use: `(key, <x>, <y>)`, which serves loads by key
    (as its prefix) and by region (a prefix range on `key`, then the position).

    `max_ops_per_command` splits a batch into several bulk writes, sent one after
    the other, of at most that many operations. None (the default) sends one
    bulk write (the driver still splits it at the server's `maxWriteBatchSize`),
    except against FerretDB 1.x, detected on first use, where it is 40: FerretDB
    1.x keeps the cursor of every update that matched a document open until the
    whole update command ends, and wedges for good once its connection pool is
    spent (100 connections with SQLite, 50 with PostgreSQL).
    """

    def __init__(
        self,
        database: Any,
        *,
        collection: str = "objects",
        pos_fields: tuple[str, str] = ("x", "y"),
        max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
        max_ops_per_command: int | None = None,
        spill_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if max_document_bytes <= 0:
            raise ConfigError(f"max_document_bytes is positive, not {max_document_bytes!r}")
        if max_ops_per_command is not None and max_ops_per_command <= 0:
            raise ConfigError(f"max_ops_per_command is positive, not {max_ops_per_command!r}")
        self.database = database
        self.max_ops_per_command = max_ops_per_command
        self.collection_name = collection
        self.pos_fields = pos_fields
        self.max_document_bytes = max_document_bytes
        self._collection: Any = database[collection]
        self._spill_path = (
            Path(spill_path)
            if spill_path is not None
            else default_spill_dir()
            / f"synkworld-spill-{getattr(database, 'name', 'db')}.{collection}.json"
        )
        self._owned_client: AsyncMongoClient[Any] | None = None
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._closed = False

    @classmethod
    def connect(
        cls,
        uri: str,
        db_name: str,
        collection: str = "objects",
        *,
        pos_fields: tuple[str, str] = ("x", "y"),
        max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
        max_ops_per_command: int | None = None,
        spill_path: str | os.PathLike[str] | None = None,
        **client_options: Any,
    ) -> MongoStore:
        """Makes a store with its own `AsyncMongoClient`, closed with the store.

        `client_options` go to the client; `serverSelectionTimeoutMS` defaults to
        5000 here (PyMongo's own default, 30 s, holds a write behind an outage
        that long before it can be retried).
        """
        client_options.setdefault("serverSelectionTimeoutMS", 5000)
        client: AsyncMongoClient[Any] = AsyncMongoClient(uri, **client_options)
        store = cls(
            client[db_name],
            collection=collection,
            pos_fields=pos_fields,
            max_document_bytes=max_document_bytes,
            max_ops_per_command=max_ops_per_command,
            spill_path=spill_path,
        )
        store._owned_client = client
        return store

    @property
    def spill_path(self) -> Path | None:
        return self._spill_path

    async def ensure_indexes(self) -> None:
        """Creates the store's index if it does not exist yet (done on first use anyway)."""
        if self._ready:
            return
        async with self._ready_lock:
            if self._ready:
                return
            x, y = self.pos_fields
            with _driver_errors():
                await self._collection.create_index(
                    [("key", 1), (x, 1), (y, 1)], name=f"synkworld_key_{x}_{y}"
                )
                build_info = await self.database.command("buildInfo")
            if self.max_ops_per_command is None:
                ferretdb = str(build_info.get("ferretdbVersion", ""))
                if ferretdb.startswith("v1."):
                    self.max_ops_per_command = _FERRETDB_1_MAX_OPS
                    logger.info(
                        "FerretDB %s: bulk writes go in commands of %d operations at most",
                        ferretdb,
                        _FERRETDB_1_MAX_OPS,
                    )
            self._ready = True

    async def _load(
        self,
        *,
        keys: Collection[str] | None = None,
        region: Region | None = None,
    ) -> list[Document]:
        self._check_open()
        await self.ensure_indexes()
        if keys is None and region is None:
            return await self._find({})
        found: dict[str, Document] = {}
        if keys:
            unique = list(dict.fromkeys(keys))
            for start in range(0, len(unique), _KEYS_PER_QUERY):
                chunk = unique[start : start + _KEYS_PER_QUERY]
                for doc in await self._find({"key": {"$in": chunk}}):
                    found[doc["_id"]] = doc
        if region is not None:
            x, y = region.pos_fields
            query = {
                "key": {"$regex": "^" + re.escape(region.key_prefix)},
                x: {"$gte": region.x0, "$lt": region.x1},
                y: {"$gte": region.y0, "$lt": region.y1},
            }
            for doc in await self._find(query):
                found[doc["_id"]] = doc
        return list(found.values())

    async def apply(self, batch: WriteBatch) -> WriteResult:
        self._check_open()
        rejected: dict[str, str] = {}
        existing: set[str] = set()
        sent: list[_Sent] = []
        for insert in batch.inserts:
            doc_id = upsert_id(insert)
            problem, raw = self._encoded(insert, with_id=True)
            if raw is None:
                rejected[doc_id] = problem or "refused"
            else:
                sent.append((doc_id, "insert", raw))
        for upsert in batch.upserts:
            doc_id = upsert_id(upsert)
            problem, update = self._update(upsert)
            if update is None:
                rejected[doc_id] = problem or "refused"
            else:
                ep = upsert.get("ep")
                if isinstance(ep, int) and not isinstance(ep, bool):
                    sent.append((doc_id, f"update@{ep}", update))
                else:
                    sent.append((doc_id, "update", update))
        for doc_id in batch.deletes:
            epoch = batch.delete_epochs.get(doc_id)
            sent.append((doc_id, "delete" if epoch is None else f"delete@{epoch}", None))
        if not sent:
            return WriteResult(written=0, rejected=rejected)
        fenced: set[str] = set()
        ops = [_operation(doc_id, kind, body) for doc_id, kind, body in sent]
        await self.ensure_indexes()
        step = self.max_ops_per_command or len(ops)
        for start in range(0, len(ops), step):
            await self._bulk_write(
                ops[start : start + step], sent[start : start + step], rejected, existing, fenced
            )
        written = sum(
            1
            for doc_id, _, _ in sent
            if doc_id not in rejected and doc_id not in existing and doc_id not in fenced
        )
        return WriteResult(
            written=written,
            rejected=rejected,
            existing=frozenset(existing),
            fenced=frozenset(fenced),
        )

    async def _bulk_write(
        self,
        ops: list[InsertOne[Any] | UpdateOne | DeleteOne],
        sent: list[_Sent],
        rejected: dict[str, str],
        existing: set[str],
        fenced: set[str],
    ) -> None:
        """Sends one unordered bulk write; adds the operations refused to `rejected`.

        An insert refused for a duplicate `_id` found a stored document: it goes
        to `existing`, not `rejected`. A conditional upsert refused so found a
        newer epoch stored (its filter missed, and the insert it fell back to
        met the stored `_id`): it goes to `fenced`.
        """
        try:
            with _driver_errors():
                await self._collection.bulk_write(ops, ordered=False)
        except _ServerRefused as refused:
            for index, (code, reason) in refused.errors.items():
                doc_id, kind, _ = sent[index]
                if kind == "insert" and code == _DUPLICATE_KEY:
                    existing.add(doc_id)
                elif kind.startswith("update@") and code == _DUPLICATE_KEY:
                    fenced.add(doc_id)
                else:
                    rejected[doc_id] = reason
        except _BadReply:
            # FerretDB 1.x answers an update command that has write errors
            # without `nModified` (PyMongo then fails with a KeyError), reports
            # the wrong index, and skips the operations after the failed one.
            # Replaying each operation on its own finds the refused ones; the
            # writes are idempotent, so replaying those that went through
            # changes nothing (an insert that went through finds itself stored,
            # which is what the caller learns for a first attempt that failed).
            logger.warning(
                "bulk write of %d operations got a malformed reply; replaying them one by one",
                len(ops),
            )
            for doc_id, kind, body in sent:
                code, refusal = await self._replay(doc_id, kind, body)
                if refusal is None:
                    continue
                if kind == "insert" and code == _DUPLICATE_KEY:
                    existing.add(doc_id)
                elif kind.startswith("update@") and code == _DUPLICATE_KEY:
                    fenced.add(doc_id)
                else:
                    rejected[doc_id] = refusal

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owned_client is not None:
            await self._owned_client.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    async def _find(self, query: dict[str, Any]) -> list[Document]:
        with _driver_errors():
            docs: list[Document] = await self._collection.find(query).to_list(None)
        return docs

    def _encoded(self, doc: Document, *, with_id: bool) -> tuple[str | None, Any]:
        """The document's fields as raw BSON (with or without `_id`), or why it is refused."""
        problem = field_name_problem(doc)
        if problem is not None:
            return problem, None
        fields = doc if with_id else {name: value for name, value in doc.items() if name != "_id"}
        try:
            raw = bson.encode(fields)
        except (bson.InvalidDocument, OverflowError, TypeError, ValueError) as exc:
            return f"cannot encode: {exc}", None
        if len(raw) > self.max_document_bytes:
            limit = self.max_document_bytes
            return f"document is {len(raw)} bytes, over the limit of {limit}", None
        # The driver copies raw BSON as it is: the fields are encoded once, not twice.
        return None, RawBSONDocument(raw)

    def _update(self, upsert: Document) -> tuple[str | None, dict[str, Any] | None]:
        """Returns the update document for an upsert, or why it is refused."""
        if len(upsert) == 1 and "_id" in upsert:
            problem = field_name_problem(upsert)
            # `$set: {}` is refused by FerretDB and by MongoDB before 5.0.
            return (problem, None) if problem is not None else (None, {"$setOnInsert": {}})
        problem, raw = self._encoded(upsert, with_id=False)
        if raw is None:
            return problem, None
        return None, {"$set": raw}

    async def _replay(self, doc_id: str, kind: str, body: Any) -> tuple[int | None, str | None]:
        """Sends one operation as a plain command; returns the server's refusal, if any."""
        name = self.collection_name
        command: dict[str, Any]
        if kind == "delete":
            deletes = [{"q": {"_id": doc_id}, "limit": 1}]
            command = {"delete": name, "deletes": deletes, "ordered": True}
        elif kind == "insert":
            command = {"insert": name, "documents": [body], "ordered": True}
        else:
            updates = [{"q": _update_filter(doc_id, kind), "u": body, "upsert": True}]
            command = {"update": name, "updates": updates, "ordered": True}
        try:
            with _driver_errors():
                reply = await self.database.command(command)
        except _ServerRefused as exc:
            return next(iter(exc.errors.values()), (None, str(exc)))
        except _BadReply as exc:
            return None, str(exc)
        errors = reply.get("writeErrors") or []
        if errors:
            return errors[0].get("code"), "; ".join(_reason(err) for err in errors)
        return None, None


def _operation(doc_id: str, kind: str, body: Any) -> InsertOne[Any] | UpdateOne | DeleteOne:
    if kind == "insert":
        return InsertOne(body)
    if kind.startswith("update"):
        return UpdateOne(_update_filter(doc_id, kind), body, upsert=True)
    return DeleteOne(_update_filter(doc_id, kind))


def _update_filter(doc_id: str, kind: str) -> dict[str, Any]:
    """`{_id}`, or for a conditional write (``update@<ep>``, ``delete@<ep>``) also
    "no newer epoch stored"."""
    if "@" not in kind:
        return {"_id": doc_id}
    ep = int(kind.partition("@")[2])
    return {"_id": doc_id, "$or": [{"ep": {"$exists": False}}, {"ep": {"$lte": ep}}]}


class _ServerRefused(Exception):
    """The server refused some operations of a bulk write: index -> (code, reason)."""

    def __init__(self, errors: dict[int, tuple[int | None, str]]) -> None:
        super().__init__("; ".join(reason for _, reason in errors.values()))
        self.errors = errors


class _BadReply(Exception):
    """The driver could not make sense of the server's reply."""


@contextlib.contextmanager
def _driver_errors() -> Iterator[None]:
    """Turns driver errors into store errors, `_ServerRefused` and `_BadReply`."""
    try:
        yield
    except BulkWriteError as exc:
        details = exc.details
        if details.get("writeConcernErrors"):
            raise StoreUnavailableError(f"MongoDB write concern failed: {exc}") from exc
        errors = {
            int(err["index"]): (err.get("code"), _reason(err))
            for err in details.get("writeErrors", [])
        }
        raise _ServerRefused(errors) from exc
    except PyMongoError as exc:
        if _is_transient(exc):
            raise StoreUnavailableError(f"MongoDB unavailable: {exc}") from exc
        raise StoreError(f"MongoDB: {exc}") from exc
    except (KeyError, TypeError, IndexError) as exc:
        # Raised from inside the driver, which expected a field the reply lacks.
        raise _BadReply(f"malformed reply from the server: {exc!r}") from exc


def _reason(write_error: dict[str, Any]) -> str:
    return f"{write_error.get('errmsg', 'write error')} (code {write_error.get('code')})"


def _is_transient(exc: PyMongoError) -> bool:
    if isinstance(exc, ConnectionFailure | ExecutionTimeout | WriteConcernError | WTimeoutError):
        return True
    return exc.has_error_label("RetryableWriteError") or exc.has_error_label("NetworkError")
