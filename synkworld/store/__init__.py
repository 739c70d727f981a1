"""Persistence: the `Store` interface, three stores, and the write-behind in front of them.

- `MemoryStore`: documents in a dict; for tests.
- `SQLiteStore`: one SQLite file; the embedded default.
- `MongoStore`: a MongoDB collection, through PyMongo's async API or Motor.
- `WriteBehind`: takes the ids each tick changed and writes their documents to
  a store in batches, retrying while the store is away.

`MongoStore` is imported on first use, so that importing this package (as the
tick loop does, for `WriteBehind`) does not import PyMongo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from synkworld.store._base import (
    DEFAULT_MAX_DOCUMENT_BYTES,
    Document,
    Region,
    Store,
    WriteBatch,
    WriteResult,
)
from synkworld.store._errors import DocumentRejectedError, StoreError, StoreUnavailableError
from synkworld.store._write_behind import DocumentSource, WriteBehind, WriteBehindStatistics
from synkworld.store.memory import MemoryStore
from synkworld.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from synkworld.store.mongo import MongoStore

__all__ = [
    "DEFAULT_MAX_DOCUMENT_BYTES",
    "Document",
    "DocumentRejectedError",
    "DocumentSource",
    "MemoryStore",
    "MongoStore",
    "Region",
    "SQLiteStore",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "WriteBatch",
    "WriteBehind",
    "WriteBehindStatistics",
    "WriteResult",
]


def __getattr__(name: str) -> Any:
    if name == "MongoStore":
        from synkworld.store.mongo import MongoStore

        return MongoStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
