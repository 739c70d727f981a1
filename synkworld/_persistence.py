"""Persistence wiring: loading a world from a store, and the write-behind of every tick.

`Persistence` connects one world to one store. The tick hands it the ids it
changed and deleted (`on_changes`), which only merges them into the
write-behind's pending set; the write-behind's task reads the current
documents between ticks and writes them in one batch, retrying while the store
is away. `flush()` also covers changes made since the last tick.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from synkworld._errors import DocumentError
from synkworld._metrics import Sample
from synkworld._world import TickChanges, World
from synkworld.store import Store, WriteBehind, WriteBehindStatistics

__all__ = ["LoadReport", "Persistence", "load_documents"]

log = logging.getLogger("synkworld.store")


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What loading documents into a world did."""

    loaded: int
    skipped: tuple[tuple[Any, str], ...]  # (document id, reason)


def load_documents(
    world: World, docs: Iterable[Mapping[str, Any]], *, skip_bad: bool = False
) -> LoadReport:
    """Puts stored documents into a world as objects of their registered classes.

    A document of an unknown type, or with a missing, unknown or wrongly typed
    field, raises `DocumentError` naming the document and the field; with
    `skip_bad` it is logged as a warning and left out instead.
    """
    loaded = 0
    skipped: list[tuple[Any, str]] = []
    for doc in docs:
        try:
            world.load(doc)
        except DocumentError as e:
            if not skip_bad:
                raise
            log.warning("skipped document %r: %s", e.doc_id, e)
            skipped.append((e.doc_id, str(e)))
        else:
            loaded += 1
    return LoadReport(loaded, tuple(skipped))


class Persistence:
    """Writes one world's changes to one store, behind its tick loop."""

    def __init__(
        self,
        world: World,
        store: Store,
        *,
        max_pending_objects: int = 1_000_000,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 5.0,
        write_interval_s: float = 0.0,
    ) -> None:
        self.world = world
        self.store = store
        self.writer = WriteBehind(
            store,
            world,
            max_pending_objects=max_pending_objects,
            retry_initial_s=retry_initial_s,
            retry_max_s=retry_max_s,
            write_interval_s=write_interval_s,
        )
        world.add_flusher(self.flush)

    def on_changes(self, changes: TickChanges) -> None:
        """Marks a tick's changed and deleted ids for writing (cheap; no I/O)."""
        self.writer.mark(changes.tick, changes.changed_ids, changes.deleted_ids)

    async def flush(self) -> None:
        """Returns when everything changed so far, committed or not, is durable."""
        self._mark_uncommitted()
        await self.writer.flush()

    def _mark_uncommitted(self) -> None:
        changed, deleted = self.world.uncommitted_ids()
        if changed or deleted:
            self.writer.mark(self.world.tick, changed, deleted)

    async def __aenter__(self) -> Persistence:
        await self.writer.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Flushes what is left and closes the store."""
        try:
            self._mark_uncommitted()
            await self.writer.aclose()
        finally:
            await self.store.close()

    def statistics(self) -> WriteBehindStatistics:
        """The write-behind's state now."""
        return self.writer.statistics()

    def samples(self) -> list[Sample]:
        """The store's metrics for /metrics."""
        st = self.writer.statistics()
        lag_s = st.oldest_pending_age_s or 0.0
        return [
            (
                "synkworld_store_pending_objects",
                "gauge",
                "Objects changed, not yet durable.",
                {},
                st.pending_objects,
            ),
            (
                "synkworld_store_write_lag_ticks",
                "gauge",
                "Ticks between the oldest unwritten change and the last tick.",
                {},
                st.write_lag_ticks,
            ),
            (
                "synkworld_store_write_lag_seconds",
                "gauge",
                "Age of the oldest unwritten change.",
                {},
                lag_s,
            ),
            ("synkworld_store_writes_total", "counter", "Batches written.", {}, st.writes_done),
            (
                "synkworld_store_objects_written_total",
                "counter",
                "Objects written.",
                {},
                st.objects_written,
            ),
            (
                "synkworld_store_failed_attempts_total",
                "counter",
                "Write attempts that failed.",
                {},
                st.failed_attempts,
            ),
            (
                "synkworld_store_rejected_total",
                "counter",
                "Documents refused for good.",
                {},
                st.rejected,
            ),
            (
                "synkworld_store_pending_limit",
                "gauge",
                "The configured pending-objects limit.",
                {},
                st.max_pending_objects,
            ),
            (
                "synkworld_store_over_limit",
                "gauge",
                "1 when pending objects exceed the limit.",
                {},
                1 if st.over_limit else 0,
            ),
        ]
