"""The store interface: documents, regions, write batches and the `Store` base class.

A store persists the world's objects as documents (docs/protocol.md, "Persistence")::

    {"_id": str, "t": str, "key": str, "v": int, "owner"?: ..., ...state fields}

`_id` is the object's id, `t` its type, `key` the key of the cell holding it
(`"<map>:<cx>:<cy>"`) or its channel key, `v` its version. Positioned objects
carry their position in two top-level number fields (`x` and `y` unless told
otherwise), which region loads filter on.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeGuard

from synkworld._errors import ConfigError
from synkworld.store._errors import DocumentRejectedError
from synkworld.store._spill import SpillJournal, default_spill_dir, log_replay

__all__ = [
    "DEFAULT_MAX_DOCUMENT_BYTES",
    "Document",
    "Region",
    "Store",
    "WriteBatch",
    "WriteResult",
]

Document = dict[str, Any]
"""A stored object: `{"_id", "t", "key", "v", ...state}`, JSON-like values only."""

DEFAULT_MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
"""MongoDB's document size limit (16 MiB), which every store enforces by default."""


@dataclass(frozen=True, slots=True)
class Region:
    """A rectangle of one map: the half-open box `x0 <= x < x1`, `y0 <= y < y1`.

    A document lies in the region when its key starts with `"<map>:"` and both of
    its `pos_fields` are numbers inside the box. Half-open, like grid cells, so
    that the region made of whole cells holds exactly the objects of those cells.
    """

    map: str
    x0: float
    y0: float
    x1: float
    y1: float
    pos_fields: tuple[str, str] = ("x", "y")

    def __post_init__(self) -> None:
        if not self.map or ":" in self.map:
            raise ConfigError(f"a map name is non-empty and has no ':', not {self.map!r}")
        bounds = (self.x0, self.y0, self.x1, self.y1)
        if any(isinstance(b, bool) or not isinstance(b, int | float) for b in bounds):
            raise TypeError(f"region bounds are numbers, not {bounds!r}")
        if any(math.isnan(b) for b in bounds):
            raise ConfigError("region bounds are not NaN")
        if self.x0 > self.x1 or self.y0 > self.y1:
            raise ConfigError(f"a region has x0 <= x1 and y0 <= y1, not {bounds!r}")
        if len(self.pos_fields) != 2 or self.pos_fields[0] == self.pos_fields[1]:
            raise ConfigError(f"pos_fields names two different fields, not {self.pos_fields!r}")

    @property
    def key_prefix(self) -> str:
        """The prefix of the keys of this map's cells: `"<map>:"`."""
        return self.map + ":"

    def contains(self, doc: Mapping[str, Any]) -> bool:
        """Tells whether a document lies in the region."""
        key = doc.get("key")
        if not isinstance(key, str) or not key.startswith(self.key_prefix):
            return False
        x = doc.get(self.pos_fields[0])
        y = doc.get(self.pos_fields[1])
        return is_number(x) and is_number(y) and self.x0 <= x < self.x1 and self.y0 <= y < self.y1


@dataclass(slots=True)
class WriteBatch:
    """Changes to write at once: documents to insert or upsert, and ids to delete.

    Each upsert is a document with at least `_id`; the store sets every field it
    carries (MongoDB's `$set`), keeping the stored fields it does not name, and
    creates the document if it does not exist. An insert is the document of a
    new object: the store writes it only if no document has its `_id`, and
    otherwise leaves the stored one as it is and reports the id in
    `WriteResult.existing` (a new object must never overwrite a stored one).
    Deleting a missing id is not an error. An id appears at most once in a
    batch; the outcome of naming it twice is not specified.

    An upsert whose document carries an int `ep` (the writer's fencing epoch,
    when several processes share one map) is conditional: it is written only
    if the stored document has no `ep` or one no greater; otherwise it is left
    out and its id reported in `WriteResult.fenced` (the object belongs to a
    process with a newer lease, whose writes must not be overwritten).
    A delete whose id has an epoch in `delete_epochs` is conditional in the
    same way: a stored document with a greater `ep` is left as it is (not
    reported: a store cannot always tell it from a missing one).
    """

    upserts: list[Document] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    inserts: list[Document] = field(default_factory=list)
    delete_epochs: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.inserts) + len(self.upserts) + len(self.deletes)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a store did with a batch: how many operations it applied, which ids it refused.

    `rejected` maps the id of each document refused for good (too large, a field
    name the store cannot hold, a value it cannot encode) to the reason. Those are
    not written; every other operation of the batch is. `existing` holds the
    ids of inserts that found a stored document, which was left unchanged;
    `fenced` those of conditional upserts that found a newer epoch stored.
    """

    written: int = 0
    rejected: Mapping[str, str] = field(default_factory=dict)
    existing: frozenset[str] = frozenset()
    fenced: frozenset[str] = frozenset()

    def raise_for_rejected(self) -> None:
        """Raises `DocumentRejectedError` for the first refused document, if any."""
        for doc_id, reason in self.rejected.items():
            raise DocumentRejectedError(reason, doc_id=doc_id)


class Store(abc.ABC):
    """Persists documents; the base class of every store.

    Stores are async context managers: leaving the block closes the store.
    Failures that retrying can cure (the database is unreachable, a lock is held)
    raise `StoreUnavailableError` and write nothing that matters: every write is
    idempotent, so the caller retries the whole batch.

    A store implements `_load`, `apply` and `close`. `load` first replays the
    spill journal (`spill_path`) that a shutdown left when this store was
    unreachable, so that what is loaded includes those changes.
    """

    @property
    def spill_path(self) -> Path | None:
        """Where a shutdown puts the changes it could not write here (None: nowhere).

        By default a file named after the store's class in `default_spill_dir()`;
        stores override it with a name of their own.
        """
        return default_spill_dir() / f"synkworld-spill-{type(self).__name__}.json"

    async def load(
        self,
        *,
        keys: Collection[str] | None = None,
        region: Region | None = None,
    ) -> list[Document]:
        """Returns the stored documents whose key is in `keys` or which lie in `region`.

        With both, the documents matching either; with neither, every document.
        The order of the list is not specified. A spill journal left by an
        earlier shutdown is written into the store first.
        """
        await self.replay_spill()
        return await self._load(keys=keys, region=region)

    async def replay_spill(self) -> int:
        """Writes the spill journal into the store and removes it; returns how many operations.

        Raises `StoreUnavailableError` (and keeps the journal) while the store
        cannot be reached.
        """
        path = self.spill_path
        if path is None:
            return 0
        journal = SpillJournal(path)
        if not journal.exists():
            return 0
        spilled = journal.read()
        inserts, upserts, deletes = spilled
        batch = WriteBatch(
            upserts=upserts,
            deletes=deletes,
            inserts=inserts,
            delete_epochs=journal.delete_epochs(),
        )
        result = await self.apply(batch)
        log_replay(path, spilled, len(result.existing), len(result.rejected))
        journal.remove()
        return len(batch)

    @abc.abstractmethod
    async def _load(
        self,
        *,
        keys: Collection[str] | None = None,
        region: Region | None = None,
    ) -> list[Document]:
        """`load` without the replay: what the store itself holds."""

    @abc.abstractmethod
    async def apply(self, batch: WriteBatch) -> WriteResult:
        """Writes a batch of upserts and deletes, and reports the documents refused."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Releases the store's resources; closing twice is harmless."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def is_number(value: object) -> TypeGuard[int | float]:
    """Tells whether a value is an int or a float (a bool is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_fenced(upsert: Mapping[str, Any], stored: Mapping[str, Any] | None) -> bool:
    """Tells whether a stored document's epoch is newer than a conditional upsert's."""
    ep = upsert.get("ep")
    if stored is None or not isinstance(ep, int) or isinstance(ep, bool):
        return False
    stored_ep = stored.get("ep")
    return isinstance(stored_ep, int) and not isinstance(stored_ep, bool) and stored_ep > ep


def delete_is_fenced(epoch: int | None, stored: Mapping[str, Any] | None) -> bool:
    """Tells whether a stored document's epoch is newer than a conditional delete's."""
    return epoch is not None and is_fenced({"ep": epoch}, stored)


def upsert_id(doc: Mapping[str, Any]) -> str:
    """Returns the `_id` of a document to upsert; raises `ValueError` if it has none.

    A document without a string `_id` is the caller's bug, not a document to
    reject: without an id there is nothing to report it under.
    """
    doc_id = doc.get("_id")
    if not isinstance(doc_id, str) or not doc_id:
        raise ValueError(f"a document to upsert has a non-empty str _id, not {doc_id!r}")
    return doc_id


def field_name_problem(doc: Mapping[str, Any]) -> str | None:
    """Returns why a document's top-level field names cannot be stored, or None if they can.

    Every store refuses the same names, so that a document a test writes to
    SQLite behaves the same in MongoDB: a name is a non-empty str without a NUL,
    that neither starts with `$` nor contains `.` (MongoDB would read those as
    an operator or a path into a nested document).
    """
    try:
        names = "\0".join(doc)
    except TypeError:
        bad = next(k for k in doc if not isinstance(k, str))
        return f"field name {bad!r} is not a str"
    # Fast path: one scan of the joined names finds nothing suspicious.
    if "." not in names and "$" not in names and names.count("\0") == len(doc) - 1 and all(doc):
        return None
    for name in doc:
        if not name:
            return "field name is empty"
        if name.startswith("$"):
            return f"field name {name!r} starts with '$'"
        if "." in name:
            return f"field name {name!r} contains '.'"
        if "\0" in name:
            return f"field name {name!r} contains a NUL character"
    return None
