"""The spill journal: what a shutdown could not write to the store, kept in a local file.

When the store stays away longer than a shutdown may wait, the write-behind's
pending changes are not dropped: they go to one JSON file beside the process,
written whole to a temporary file, fsynced and renamed into place (so the file
is either the old journal or the new one, never half of one). The next
`Store.load()` replays the journal into the store before it reads anything,
then removes it.

The file holds one write batch::

    {"format": "synkworld-spill/1", "written_at": <unix time>, "reason": "...",
     "inserts": [<document>...], "upserts": [<document>...], "deletes": [<id>...]}
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from synkworld.store._errors import StoreError

__all__ = ["SPILL_FORMAT", "SpillJournal", "Spilled", "default_spill_dir"]

Document = dict[str, Any]
Spilled = tuple[list[Document], list[Document], list[str]]
"""A journal's operations: (inserts, upserts, deletes), as in a `WriteBatch`."""

SPILL_FORMAT = "synkworld-spill/1"

logger = logging.getLogger("synkworld.store")


def default_spill_dir() -> Path:
    """Where spill journals go unless a store says otherwise: $SYNKWORLD_SPILL_DIR, or the cwd."""
    return Path(os.environ.get("SYNKWORLD_SPILL_DIR") or os.getcwd())


class SpillJournal:
    """One spill file: written atomically, read back, merged with a newer spill."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def exists(self) -> bool:
        """Tells whether a journal is waiting to be replayed."""
        return self.path.exists()

    def read(self) -> Spilled:
        """The journal's operations; raises `StoreError` if the file is not a spill journal."""
        try:
            data = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise StoreError(f"cannot read the spill journal {self.path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != SPILL_FORMAT:
            raise StoreError(f"{self.path} is not a synkworld spill journal ({SPILL_FORMAT})")
        return (
            list(data.get("inserts", [])),
            list(data.get("upserts", [])),
            list(data.get("deletes", [])),
        )

    def delete_epochs(self) -> dict[str, int]:
        """The fencing epochs of the journal's conditional deletes (`WriteBatch.delete_epochs`)."""
        try:
            data = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise StoreError(f"cannot read the spill journal {self.path}: {exc}") from exc
        epochs = data.get("delete_epochs", {}) if isinstance(data, dict) else {}
        return {k: v for k, v in epochs.items() if isinstance(v, int)}

    def write(
        self, spilled: Spilled, *, reason: str, delete_epochs: Mapping[str, int] | None = None
    ) -> int:
        """Writes the operations durably, merged over a journal already there; returns how many.

        A journal that is already there holds older changes (a replay that
        never happened): the new operations win for the ids they name.
        `delete_epochs` keeps the deletes conditional (one map on several
        processes), as they were in the write-behind.
        """
        epochs = dict(delete_epochs or {})
        if self.exists():
            named = set(spilled[2])  # a newer delete of an id brings its own epoch, or none
            older = {k: v for k, v in self.delete_epochs().items() if k not in named}
            spilled = _merged(self.read(), spilled)
            epochs = {**older, **epochs}
        inserts, upserts, deletes = spilled
        kept = set(deletes)
        epochs = {k: v for k, v in epochs.items() if k in kept}
        data: dict[str, Any] = {
            "format": SPILL_FORMAT,
            "written_at": time.time(),
            "reason": reason,
            "inserts": inserts,
            "upserts": upserts,
            "deletes": deletes,
            "delete_epochs": epochs,
        }
        raw = orjson.dumps(data)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        return len(inserts) + len(upserts) + len(deletes)

    def remove(self) -> None:
        """Deletes the journal once its batch is in the store."""
        self.path.unlink(missing_ok=True)
        _fsync_dir(self.path.parent)


def _merged(old: Spilled, new: Spilled) -> Spilled:
    ops: dict[str, tuple[str, Document | None]] = {}
    for inserts, upserts, deletes in (old, new):
        for doc in inserts:
            prev = ops.get(doc["_id"])
            # Re-created after a delete that never reached the store: ours to overwrite.
            kind = "upsert" if prev is not None and prev[0] == "delete" else "insert"
            ops[doc["_id"]] = (kind, doc)
        for doc in upserts:
            prev = ops.get(doc["_id"])
            kind = "insert" if prev is not None and prev[0] == "insert" else "upsert"
            ops[doc["_id"]] = (kind, doc)
        for doc_id in deletes:
            ops[doc_id] = ("delete", None)
    return (
        [d for kind, d in ops.values() if kind == "insert" and d is not None],
        [d for kind, d in ops.values() if kind == "upsert" and d is not None],
        [doc_id for doc_id, (kind, _) in ops.items() if kind == "delete"],
    )


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def log_replay(path: Path, spilled: Spilled, existing: int, rejected: int) -> None:
    """Logs what a replay wrote."""
    inserts, upserts, deletes = spilled
    logger.warning(
        "replayed the spill journal %s into the store: %d inserts, %d upserts, %d deletes "
        "(%d inserts found a stored document, %d documents refused)",
        path,
        len(inserts),
        len(upserts),
        len(deletes),
        existing,
        rejected,
    )
