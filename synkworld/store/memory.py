"""`MemoryStore`: documents in a dict, for tests and for worlds that need no persistence."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

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
    upsert_id,
)
from synkworld.store._errors import StoreError, StoreUnavailableError

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """Keeps documents in memory, with the semantics of the persistent stores.

    Documents go through orjson on the way in and out, so a stored document is a
    copy that later changes to the caller's dict do not reach, and a value orjson
    cannot encode is refused as it would be by `SQLiteStore`. A document larger
    than `max_document_bytes` (its orjson encoding, after merging with the stored
    fields) is refused.

    Setting `available` to False makes every call raise `StoreUnavailableError`
    until it is set back: tests use it to stand for a database that went away.
    It has no spill journal unless given one: its documents end with the process.
    """

    def __init__(
        self,
        *,
        max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
        spill_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if max_document_bytes <= 0:
            raise ConfigError(f"max_document_bytes is positive, not {max_document_bytes!r}")
        self.max_document_bytes = max_document_bytes
        self._spill_path = Path(spill_path) if spill_path is not None else None
        self.available = True
        self._docs: dict[str, bytes] = {}
        self._closed = False

    async def _load(
        self,
        *,
        keys: Collection[str] | None = None,
        region: Region | None = None,
    ) -> list[Document]:
        await self._enter()
        docs = [orjson.loads(raw) for raw in self._docs.values()]
        if keys is None and region is None:
            return docs
        wanted = frozenset(keys) if keys is not None else frozenset()
        return [
            doc
            for doc in docs
            if doc.get("key") in wanted or (region is not None and region.contains(doc))
        ]

    @property
    def spill_path(self) -> Path | None:
        return self._spill_path

    async def apply(self, batch: WriteBatch) -> WriteResult:
        await self._enter()
        rejected: dict[str, str] = {}
        existing: set[str] = set()
        written = 0
        for insert in batch.inserts:
            doc_id = upsert_id(insert)
            if doc_id in self._docs:
                existing.add(doc_id)
                continue
            problem = field_name_problem(insert)
            if problem is None:
                problem, raw = self._merge(doc_id, insert)
            if problem is not None:
                rejected[doc_id] = problem
                continue
            self._docs[doc_id] = raw
            written += 1
        fenced: set[str] = set()
        for upsert in batch.upserts:
            doc_id = upsert_id(upsert)
            old = self._docs.get(doc_id)
            if "ep" in upsert and old is not None and is_fenced(upsert, orjson.loads(old)):
                fenced.add(doc_id)
                continue
            problem = field_name_problem(upsert)
            if problem is None:
                problem, raw = self._merge(doc_id, upsert)
            if problem is not None:
                rejected[doc_id] = problem
                continue
            self._docs[doc_id] = raw
            written += 1
        for doc_id in batch.deletes:
            old = self._docs.get(doc_id)
            epoch = batch.delete_epochs.get(doc_id)
            if old is not None and epoch is not None and delete_is_fenced(epoch, orjson.loads(old)):
                continue
            self._docs.pop(doc_id, None)
            written += 1
        return WriteResult(
            written=written,
            rejected=rejected,
            existing=frozenset(existing),
            fenced=frozenset(fenced),
        )

    async def close(self) -> None:
        self._closed = True

    def __len__(self) -> int:
        return len(self._docs)

    def _merge(self, doc_id: str, upsert: Document) -> tuple[str | None, bytes]:
        old = self._docs.get(doc_id)
        merged: dict[str, Any] = orjson.loads(old) if old is not None else {}
        merged.update(upsert)
        try:
            raw = orjson.dumps(merged)
        except TypeError as exc:
            return f"cannot encode: {exc}", b""
        if len(raw) > self.max_document_bytes:
            return (
                f"document is {len(raw)} bytes, over the limit of {self.max_document_bytes}",
                b"",
            )
        return None, raw

    async def _enter(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")
        # A real store would wait for I/O here; let other tasks run, as they would then.
        await asyncio.sleep(0)
        if not self.available:
            raise StoreUnavailableError("the memory store is marked unavailable")
