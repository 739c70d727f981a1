"""`SQLiteStore`: the embedded default store, one SQLite file in WAL mode."""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson

from synkworld._errors import ConfigError
from synkworld.store._base import (
    DEFAULT_MAX_DOCUMENT_BYTES,
    Document,
    Region,
    Store,
    WriteBatch,
    WriteResult,
    delete_is_fenced,
    field_name_problem,
    is_fenced,
    is_number,
    upsert_id,
)
from synkworld.store._errors import StoreError, StoreUnavailableError

__all__ = ["SQLiteStore"]

_T = TypeVar("_T")

# Stays well under SQLite's limit on bound parameters (32766 since 3.32).
_CHUNK = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    _id TEXT PRIMARY KEY NOT NULL,
    t   TEXT,
    key TEXT,
    v   INTEGER,
    map TEXT,
    x   REAL,
    y   REAL,
    doc TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {table}_key ON {table} (key);
CREATE INDEX IF NOT EXISTS {table}_map_pos ON {table} (map, x, y);
"""


class SQLiteStore(Store):
    """Stores documents in one SQLite file, off the event loop.

    The table has one row per document: the whole document as JSON text in `doc`
    (encoded with orjson), and copies of the fields that loads filter on: `t`,
    `key`, `v`, `map` (the part of `key` before its first `:`, or NULL) and the
    two position fields (`pos_fields`, `x` and `y` by default) as `x` and `y`
    when they are numbers. Loads by key use the index on `key`; region loads use
    the index on `(map, x, y)` (a region naming other position fields is served
    by a scan of the map's rows).

    A shutdown that cannot write here spills to `<path>.spill.json`
    (`spill_path`), which the next `load()` replays.

    Every call runs on one worker thread that owns the connection; a batch is one
    transaction. The database is in WAL mode with `synchronous=NORMAL` by default:
    a committed batch survives the process crashing, and the last batches may be
    lost if the machine loses power; `synchronous="FULL"` closes that gap at the
    cost of an fsync per batch.

    Refused for good, as by MongoDB: a document whose JSON encoding (after
    merging with the stored fields) exceeds `max_document_bytes` (16 MiB by
    default), one with a value orjson cannot encode, one with a field name
    MongoDB cannot hold. `sqlite3.OperationalError` (the file is locked by another
    writer past `busy_timeout_s`, the disk is full, the file cannot be opened)
    raises `StoreUnavailableError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = "objects",
        pos_fields: tuple[str, str] = ("x", "y"),
        max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
        busy_timeout_s: float = 5.0,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        spill_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if not table.isidentifier():
            raise ConfigError(f"table is an identifier, not {table!r}")
        if max_document_bytes <= 0:
            raise ConfigError(f"max_document_bytes is positive, not {max_document_bytes!r}")
        if busy_timeout_s < 0:
            raise ConfigError(f"busy_timeout_s is >= 0, not {busy_timeout_s!r}")
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigError(f"synchronous is 'NORMAL' or 'FULL', not {synchronous!r}")
        self.path = os.fspath(path)
        self.table = table
        self.pos_fields = pos_fields
        self.max_document_bytes = max_document_bytes
        self.busy_timeout_s = busy_timeout_s
        self.synchronous = synchronous
        # Beside the database file, where an operator looks first.
        self._spill_path = (
            Path(spill_path)
            if spill_path is not None
            else None
            if self.path in ("", ":memory:")
            else Path(self.path + ".spill.json")
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synkworld-sqlite")
        self._conn: sqlite3.Connection | None = None  # used only on the worker thread
        self._closed = False

    async def _load(
        self,
        *,
        keys: Collection[str] | None = None,
        region: Region | None = None,
    ) -> list[Document]:
        return await self._run(self._load_rows, None if keys is None else list(keys), region)

    @property
    def spill_path(self) -> Path | None:
        return self._spill_path

    async def apply(self, batch: WriteBatch) -> WriteResult:
        # Copy the lists: the caller may change them while the worker thread reads.
        return await self._run(
            self._apply,
            list(batch.inserts),
            list(batch.upserts),
            list(batch.deletes),
            dict(batch.delete_epochs),
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        finally:
            self._executor.shutdown(wait=False)

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._closed:
            raise StoreError("the store is closed")
        call = functools.partial(fn, *args)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(f"SQLite: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite: {exc}") from exc

    # Everything below runs on the worker thread.

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
                conn.executescript(_SCHEMA.format(table=self.table))
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _load_rows(self, keys: list[str] | None, region: Region | None) -> list[Document]:
        conn = self._connection()
        table = self.table
        if keys is None and region is None:
            return [orjson.loads(row[0]) for row in conn.execute(f"SELECT doc FROM {table}")]
        found: dict[str, Document] = {}
        if keys:
            unique = list(dict.fromkeys(keys))
            for chunk in _chunks(unique):
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT _id, doc FROM {table} WHERE key IN ({marks})"
                for doc_id, raw in conn.execute(sql, chunk):
                    found[doc_id] = orjson.loads(raw)
        if region is not None:
            if region.pos_fields == self.pos_fields:
                sql = (
                    f"SELECT _id, doc FROM {table} "
                    "WHERE map = ? AND x >= ? AND x < ? AND y >= ? AND y < ?"
                )
                params = (region.map, region.x0, region.x1, region.y0, region.y1)
                for doc_id, raw in conn.execute(sql, params):
                    found[doc_id] = orjson.loads(raw)
            else:
                sql = f"SELECT _id, doc FROM {table} WHERE map = ?"
                for doc_id, raw in conn.execute(sql, (region.map,)):
                    doc = orjson.loads(raw)
                    if region.contains(doc):
                        found[doc_id] = doc
        return list(found.values())

    def _apply(
        self,
        inserts: list[Document],
        upserts: list[Document],
        deletes: list[str],
        delete_epochs: dict[str, int],
    ) -> WriteResult:
        conn = self._connection()
        table = self.table
        rejected: dict[str, str] = {}
        existing: set[str] = set()
        rows: list[tuple[Any, ...]] = []
        # Take the write lock first, so that the reads of stored documents below
        # and the writes form one consistent transaction.
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids = [upsert_id(doc) for doc in inserts] + [upsert_id(doc) for doc in upserts]
            stored = self._stored_docs(conn, ids)
            for insert in inserts:
                doc_id = insert["_id"]
                if doc_id in stored:
                    existing.add(doc_id)
                    continue
                problem = field_name_problem(insert)
                if problem is None:
                    problem, row = self._row(doc_id, insert, None)
                if problem is not None:
                    rejected[doc_id] = problem
                    continue
                rows.append(row)
            fenced: set[str] = set()
            for upsert in upserts:
                doc_id = upsert["_id"]
                old = stored.get(doc_id)
                if "ep" in upsert and old is not None and is_fenced(upsert, orjson.loads(old)):
                    fenced.add(doc_id)
                    continue
                problem = field_name_problem(upsert)
                if problem is None:
                    problem, row = self._row(doc_id, upsert, old)
                if problem is not None:
                    rejected[doc_id] = problem
                    continue
                rows.append(row)
            conn.executemany(
                f"INSERT INTO {table} (_id, t, key, v, map, x, y, doc) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (_id) DO UPDATE SET t = excluded.t, key = excluded.key, "
                "v = excluded.v, map = excluded.map, x = excluded.x, y = excluded.y, "
                "doc = excluded.doc",
                rows,
            )
            if delete_epochs:
                held = self._stored_docs(conn, [d for d in deletes if d in delete_epochs])
                deletes = [
                    d
                    for d in deletes
                    if d not in held
                    or not delete_is_fenced(delete_epochs.get(d), orjson.loads(held[d]))
                ]
            for chunk in _chunks(deletes):
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM {table} WHERE _id IN ({marks})", chunk)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return WriteResult(
            written=len(rows) + len(deletes),
            rejected=rejected,
            existing=frozenset(existing),
            fenced=frozenset(fenced),
        )

    def _stored_docs(self, conn: sqlite3.Connection, ids: list[str]) -> dict[str, str]:
        stored: dict[str, str] = {}
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT _id, doc FROM {self.table} WHERE _id IN ({marks})"
            stored.update(conn.execute(sql, chunk).fetchall())
        return stored

    def _row(
        self, doc_id: str, upsert: Document, stored: str | None
    ) -> tuple[str | None, tuple[Any, ...]]:
        if stored is None:
            doc = upsert
        else:
            doc = orjson.loads(stored)
            doc.update(upsert)
        try:
            raw = orjson.dumps(doc)
        except TypeError as exc:
            return f"cannot encode: {exc}", ()
        if len(raw) > self.max_document_bytes:
            return (
                f"document is {len(raw)} bytes, over the limit of {self.max_document_bytes}",
                (),
            )
        key = doc.get("key")
        x = doc.get(self.pos_fields[0])
        y = doc.get(self.pos_fields[1])
        row = (
            doc_id,
            _text_or_none(doc.get("t")),
            _text_or_none(key),
            _int_or_none(doc.get("v")),
            key.partition(":")[0] if isinstance(key, str) and ":" in key else None,
            float(x) if is_number(x) else None,
            float(y) if is_number(y) else None,
            raw.decode(),
        )
        return None, row


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int_or_none(value: object) -> int | None:
    # SQLite's INTEGER is 64-bit; a larger version is kept in `doc` only.
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return value
    return None
