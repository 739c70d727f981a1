"""Persistence wiring: loading a world from a store, and the write-behind of every tick.

`Persistence` connects one world to one store. The tick hands it the ids it
changed and deleted (`on_changes`), which only merges them into the
write-behind's pending set; the write-behind's task reads the current
documents between ticks and writes them in one batch, retrying while the store
is away. `flush()` also covers changes made since the last tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import Metric

from synkworld._errors import ConfigError, DocumentError, StoreError, StoreUnavailableError
from synkworld._metrics import families
from synkworld._world import TickChanges, World
from synkworld.store import Store, WriteBatch, WriteBehind, WriteBehindStatistics
from synkworld.store._spill import SpillJournal
from synkworld.store._write_behind import DELETE, INSERT, DocumentSource

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
    """Writes one world's changes to one store, behind its tick loop.

    At shutdown it waits for the store at most `shutdown_flush_timeout_s`,
    logging every few seconds what it waits for; what the store has not taken
    by then (or at once, after `skip_flush_wait()`: a second SIGTERM) goes to
    the store's spill journal, which the next `Store.load()` replays.
    """

    def __init__(
        self,
        world: World,
        store: Store,
        *,
        max_pending_objects: int = 1_000_000,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 5.0,
        write_interval_s: float = 0.0,
        shutdown_flush_timeout_s: float = 20.0,
        shutdown_log_interval_s: float = 5.0,
        source: DocumentSource | None = None,
        write_gate: Callable[[], str | None] | None = None,
    ) -> None:
        if shutdown_flush_timeout_s < 0 or shutdown_log_interval_s <= 0:
            raise ConfigError(
                "shutdown_flush_timeout_s must be >= 0 and shutdown_log_interval_s positive"
            )
        self.world = world
        self.store = store
        self.shutdown_flush_timeout_s = shutdown_flush_timeout_s
        self.shutdown_log_interval_s = shutdown_log_interval_s
        self._skip_wait = asyncio.Event()
        self.writer = WriteBehind(
            store,
            world if source is None else source,
            max_pending_objects=max_pending_objects,
            retry_initial_s=retry_initial_s,
            retry_max_s=retry_max_s,
            write_interval_s=write_interval_s,
            gate=write_gate,
        )
        world.add_flusher(self)

    def on_changes(self, changes: TickChanges) -> None:
        """Marks a tick's changed and deleted ids for writing (cheap; no I/O)."""
        if changes.released_ids:
            self.writer.forget(changes.released_ids)
        self.writer.mark(
            changes.tick, changes.changed_ids, changes.deleted_ids, changes.created_ids
        )
        if changes.outgoing:
            # Handed to another process: written once more as they left (the source says
            # how), so that the store has them where they went. A mark of their own, not
            # a copy of the tick's thousands of ids with them.
            self.writer.mark(changes.tick, [h.id for h in changes.outgoing], ())

    async def flush(self) -> None:
        """Returns when everything changed so far, committed or not, is durable."""
        self._mark_uncommitted()
        await self.writer.flush()

    async def flush_recent(self) -> None:
        """Returns when what changed since the last tick is durable, ahead of older changes.

        What a durable call handler waits for: its own changes (and whatever
        else changed since the tick), written in a batch of their own.
        """
        await self.writer.flush_ids(self._mark_uncommitted())

    def _mark_uncommitted(self) -> list[str]:
        changed, deleted, created = self.world.take_uncommitted_ids()
        if changed or deleted:
            self.writer.mark(self.world.tick, changed, deleted, created)
        return [*changed, *deleted]

    def skip_flush_wait(self) -> None:
        """Makes a shutdown in progress (or the next one) spill at once instead of waiting."""
        self._skip_wait.set()

    async def __aenter__(self) -> Persistence:
        # A journal still here was not replayed by a load: write it before any
        # newer change can reach the store (the journal must never win over those).
        try:
            await self.store.replay_spill()
        except StoreUnavailableError as exc:
            raise StoreUnavailableError(
                f"the spill journal {self.store.spill_path} from an earlier shutdown must be "
                f"written before this world's changes, and the store is unavailable: {exc}"
            ) from exc
        await self.writer.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Flushes what is left (or spills it) and closes the store."""
        try:
            self._mark_uncommitted()
            if await self._flushed_in_time():
                await self.writer.aclose()
            else:
                self._spill(await self.writer.abandon())
        finally:
            await self.store.close()

    async def _flushed_in_time(self) -> bool:
        """Waits for the flush up to the shutdown timeout; False if it did not end in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_flush_timeout_s
        flushing = asyncio.ensure_future(self.writer.flush())
        skipping = asyncio.ensure_future(self._skip_wait.wait())
        try:
            while not flushing.done() and not self._skip_wait.is_set():
                left = deadline - loop.time()
                if left <= 0:
                    break
                await asyncio.wait(
                    {flushing, skipping},
                    timeout=min(self.shutdown_log_interval_s, left),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not flushing.done() and not self._skip_wait.is_set():
                    st = self.writer.statistics()
                    log.warning(
                        "shutdown: waiting for the store to take %d objects (oldest change "
                        "%.1fs old, last error: %s); %.0fs more, then they go to %s "
                        "(a second SIGTERM or SIGINT: at once)",
                        st.pending_objects,
                        st.oldest_pending_age_s or 0.0,
                        st.last_error,
                        max(0.0, deadline - loop.time()),
                        self.store.spill_path,
                    )
        finally:
            skipping.cancel()
        if flushing.done():
            return flushing.exception() is None
        flushing.cancel()
        with contextlib.suppress(asyncio.CancelledError, StoreError):
            await flushing
        return False

    def _spill(self, owed: dict[str, int]) -> None:
        """Puts what the write-behind still owed into the store's spill journal."""
        if not owed:
            return
        batch = WriteBatch()
        docs = self.world.documents([i for i, op in owed.items() if op != DELETE])
        for doc_id, op in owed.items():
            doc = docs.get(doc_id)
            if op == DELETE or (doc is None and op != INSERT):
                batch.deletes.append(doc_id)
            elif doc is None:
                continue  # created and gone, never stored: nothing to write
            elif op == INSERT:
                batch.inserts.append(doc)
            else:
                batch.upserts.append(doc)
        path = self.store.spill_path
        if path is None:
            log.error(
                "shutdown: %d objects could not be written and %s keeps no spill journal: "
                "they are lost",
                len(batch),
                type(self.store).__name__,
            )
            return
        reason = self.writer.statistics().last_error or "the store did not answer in time"
        total = SpillJournal(path).write(
            (batch.inserts, batch.upserts, batch.deletes),
            reason=reason,
            delete_epochs=self.writer.delete_epochs_owed(batch.deletes),
        )
        log.warning(
            "shutdown: the store did not take %d objects; they are in %s (%d operations in "
            "all) and will be written by the next start's load",
            len(batch),
            path,
            total,
        )

    def statistics(self) -> WriteBehindStatistics:
        """The write-behind's state now."""
        return self.writer.statistics()

    def metric_families(self) -> list[Metric]:
        """The store's metrics for /metrics."""
        st = self.writer.statistics()
        return families(
            [
                (
                    "synkworld_store_pending_objects",
                    "gauge",
                    "Objects changed, not yet durable.",
                    st.pending_objects,
                ),
                (
                    "synkworld_store_write_lag_ticks",
                    "gauge",
                    "Ticks between the oldest unwritten change and the last tick.",
                    st.write_lag_ticks,
                ),
                (
                    "synkworld_store_write_lag_seconds",
                    "gauge",
                    "Age of the oldest unwritten change.",
                    st.oldest_pending_age_s or 0.0,
                ),
                ("synkworld_store_writes_total", "counter", "Batches written.", st.writes_done),
                (
                    "synkworld_store_objects_written_total",
                    "counter",
                    "Objects written.",
                    st.objects_written,
                ),
                (
                    "synkworld_store_failed_attempts_total",
                    "counter",
                    "Write attempts that failed.",
                    st.failed_attempts,
                ),
                (
                    "synkworld_store_rejected_total",
                    "counter",
                    "Documents refused for good.",
                    st.rejected,
                ),
                (
                    "synkworld_store_collisions_total",
                    "counter",
                    "New objects whose id was already stored (never written).",
                    st.collisions,
                ),
                (
                    "synkworld_store_pending_limit",
                    "gauge",
                    "The configured pending-objects limit.",
                    st.max_pending_objects,
                ),
                (
                    "synkworld_store_over_limit",
                    "gauge",
                    "1 when pending objects exceed the limit.",
                    1 if st.over_limit else 0,
                ),
            ]
        )
