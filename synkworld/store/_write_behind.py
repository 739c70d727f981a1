"""`WriteBehind`: writes the world's changes to a store in batches, behind the tick loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from itertools import repeat
from types import TracebackType
from typing import Final, Literal, Protocol, Self

from synkworld._errors import ConfigError
from synkworld.store._base import Document, Store, WriteBatch, WriteResult
from synkworld.store._errors import StoreError, StoreUnavailableError

__all__ = ["DocumentSource", "WriteBehind", "WriteBehindStatistics"]

logger = logging.getLogger("synkworld.store")

# How many refused documents one batch logs one by one; the rest are summed up.
_MAX_REJECTIONS_LOGGED = 20

# What is owed for one id. An insert is a new object's first write: the store
# must not overwrite a stored document with it. An insert that was part of a
# failed attempt may have reached the store anyway, so finding it stored then
# is no collision.
Op = int
NOTHING: Op = -1
INSERT: Op = 0
INSERT_UNSURE: Op = 1
UPSERT: Op = 2
DELETE: Op = 3


def merged_op(older: Op, newer: Op) -> Op:
    """The one operation owed for an id marked `older`, then `newer`."""
    if newer == DELETE:
        # Created and deleted before anything was sent: there is nothing to write
        # (and a delete could hit a stored document of the same id).
        return NOTHING if older == INSERT else DELETE
    if newer in (INSERT, INSERT_UNSURE):
        # Created again after a delete not yet written: the stored document is ours.
        return UPSERT if older in (DELETE, UPSERT) else older
    # A change after the creation is written by the insert.
    return older if older in (INSERT, INSERT_UNSURE) else UPSERT


def _mark_changed(pending: dict[str, Op], ids: Iterable[str]) -> bool:
    """`merged_op(old, UPSERT)` for every id: a pending insert stays, all else is UPSERT."""
    ids = ids if isinstance(ids, list) else list(ids)
    if not ids:
        return False
    kept: dict[str, Op] | None = None
    # One pass for both kinds of insert: they are the two smallest ops kept.
    if min(pending.values(), default=UPSERT) <= INSERT_UNSURE:
        get = pending.get
        kept = {i: o for i in ids if (o := get(i)) == INSERT or o == INSERT_UNSURE}
    # From pairs: `dict.fromkeys` of a list grows a new table step by step, which
    # made this 2.5 times slower for a tick's thousands of ids.
    pending.update(zip(ids, repeat(UPSERT)))
    if kept:
        pending.update(kept)
    return True


class Elsewhere:
    """The answer of a source for an object that lives in another process's world now."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ELSEWHERE"


ELSEWHERE: Final = Elsewhere()


class DocumentSource(Protocol):
    """Gives the current documents of objects; the world implements it."""

    def documents(self, ids: Collection[str]) -> Mapping[str, Document | Elsewhere | None]:
        """Returns the current full document of each id, or None if the object no longer exists.

        `ELSEWHERE` says that the object left for another process's world (one map
        on several processes): that process writes it now, so nothing is written
        here, neither its state nor the delete its absence would look like.

        Each document is a new dict that the caller may keep: the source must not
        change it afterwards (the store encodes it later, maybe on another
        thread). An id missing from the answer counts as None.
        """
        ...


class EpochSource(DocumentSource, Protocol):
    """A source whose deletes are conditional too (one map on several processes)."""

    def delete_epochs(self, ids: Collection[str]) -> Mapping[str, int]:
        """The fencing epoch each delete carries (`WriteBatch.delete_epochs`), at its mark."""
        ...


@dataclass(frozen=True, slots=True)
class WriteBehindStatistics:
    """A snapshot of a `WriteBehind`'s state."""

    pending_objects: int
    """Objects marked and not yet durable, including those of a write under way."""
    oldest_pending_tick: int | None
    """The tick of the oldest mark not yet durable; None when nothing is pending."""
    oldest_pending_age_s: float | None
    """Seconds since that oldest mark; None when nothing is pending."""
    last_marked_tick: int | None
    """The tick of the last mark; None before the first."""
    writes_done: int
    """Batches the store accepted."""
    objects_written: int
    """Upserts and deletes the store applied."""
    failed_attempts: int
    """Write attempts that failed as a whole (store unavailable, or another error) and
    were retried."""
    rejected: int
    """Objects the store refused for good; they were logged and dropped."""
    collisions: int
    """New objects whose id a stored document already had: logged, never written."""
    last_error: str | None
    """The last failed attempt's error; kept after the store recovers."""
    over_limit: bool
    """More than `max_pending_objects` objects are pending."""
    max_pending_objects: int
    fenced: int = 0
    """Conditional writes the store refused because a newer owner wrote the object
    (several processes on one map): dropped, as they must be."""

    @property
    def write_lag_ticks(self) -> int:
        """Ticks between the oldest pending mark and the last mark (0 when nothing is pending)."""
        if self.oldest_pending_tick is None or self.last_marked_tick is None:
            return 0
        return self.last_marked_tick - self.oldest_pending_tick


class WriteBehind:
    """Writes marked objects to a store in batches, behind the tick loop.

    The tick calls `mark()` with the ids it changed and deleted; nothing is read
    or written then. A writer task takes everything pending at once, asks the
    source for the current documents (on the event loop's thread, between
    ticks, so that no document is caught half-changed) and applies them to the
    store in one batch: an object changed in many ticks since the last write is
    written once, with its latest state. While a write is under way, new marks
    gather for the next batch, so batches grow as the store slows down.

    When the store fails (`StoreUnavailableError`, or any other error), the
    batch's ids go back into the pending set, under any newer marks of the same
    ids, and the writer retries with exponential back-off from `retry_initial_s`
    to `retry_max_s`. A retry asks the source again, so it writes the latest
    state: nothing marked is lost, and no older state overwrites a newer one.
    Documents the store refuses for good (`WriteResult.rejected`) are logged on
    the `synkworld.store` logger with their id and reason, counted, and dropped;
    they do not hold back the rest.

    `max_pending_objects` does not bound anything: past it, `mark()` still
    accepts every id and `statistics().over_limit` turns True (and a warning is
    logged). Dropping marks would lose data, and slowing the simulation down is
    a choice only the application can make, by watching the statistics.

    Run the writer either by placing `run()` in the application's task group
    (then call `aclose()` at shutdown), or by using the object as an async
    context manager, which owns its task; leaving the block flushes and stops.
    """

    def __init__(
        self,
        store: Store,
        source: DocumentSource,
        *,
        max_pending_objects: int = 1_000_000,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 5.0,
        write_interval_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        gate: Callable[[], str | None] | None = None,
    ) -> None:
        if max_pending_objects <= 0:
            raise ConfigError(f"max_pending_objects is positive, not {max_pending_objects!r}")
        if not 0 < retry_initial_s <= retry_max_s:
            raise ConfigError(
                "0 < retry_initial_s <= retry_max_s, not "
                f"retry_initial_s={retry_initial_s!r}, retry_max_s={retry_max_s!r}"
            )
        self._store = store
        self._source = source
        self._max_pending = max_pending_objects
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        if write_interval_s < 0:
            raise ConfigError(f"write_interval_s is not negative, not {write_interval_s!r}")
        # Between two writes, marks gather: an object moving every tick is then
        # written once per interval, not once per tick. flush() cuts the wait
        # short; flush_ids() writes its ids in a batch of their own.
        self._write_interval_s = write_interval_s
        self._urgent: set[str] = set()
        # Says why writes must wait now (None: they may go): a process whose
        # lease on part of a shared map may have expired holds its writes
        # until it knows, so that it never overwrites its successor's.
        self._gate = gate
        self._id_waiters: list[tuple[set[str], asyncio.Future[None]]] = []
        self._clock = clock

        # id -> the operation owed; insertion-ordered.
        self._pending: dict[str, Op] = {}
        self._pending_tick: int | None = None
        self._pending_since: float | None = None
        # The batch of the write under way.
        self._inflight: dict[str, Op] = {}
        self._inflight_tick: int | None = None
        self._inflight_since: float | None = None
        self._last_tick: int | None = None

        # Every mark that names an id bumps `_marked_seq`; a successful write of
        # everything pending up to sequence S sets `_durable_seq` to S.
        self._marked_seq = 0
        self._durable_seq = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._state: Literal["new", "running", "stopped"] = "new"
        self._closed = False
        self._abandoned = False
        self._task: asyncio.Task[None] | None = None

        self._writes_done = 0
        self._objects_written = 0
        self._failed_attempts = 0
        self._failure_streak = 0
        self._rejected = 0
        self._collisions = 0
        self._fenced = 0
        # Ids of new objects that collided with a stored document: nothing of
        # theirs is ever written (a later change or delete would hit the stored one).
        self._refused_ids: set[str] = set()
        # The fencing epochs of pending deletes, taken from the source when marked:
        # the object is gone by the time the delete is written.
        self._delete_epochs: dict[str, int] = {}
        self._last_error: str | None = None
        self._warned_over_limit = False

    def mark(
        self,
        tick: int,
        changed_ids: Iterable[str],
        deleted_ids: Iterable[str],
        created_ids: Iterable[str] = (),
    ) -> None:
        """Records that, in `tick`, these objects changed, these were deleted, these are new.

        Cheap and synchronous: it only merges the ids into the pending set. An id
        in several collections counts as created, then changed, then deleted; an
        id marked again in a later call takes that call's verdict (a deleted id
        created anew is written, not deleted). A new object's first write must
        not overwrite a stored document (`WriteBatch.inserts`). Raises
        `RuntimeError` once the write-behind is closed.
        """
        if self._closed:
            raise RuntimeError("the write-behind is closed; no more marks are written")
        self._last_tick = tick
        pending = self._pending
        was_empty = not pending
        marked = False
        refused = self._refused_ids
        if self._delete_epochs:
            # Marked again as written: whatever delete was owed before is not.
            created_ids, changed_ids = list(created_ids), list(changed_ids)
            for doc_id in (*created_ids, *changed_ids):
                self._delete_epochs.pop(doc_id, None)
        if deleted_ids:
            deleted_ids = list(deleted_ids)
            epochs_of = getattr(self._source, "delete_epochs", None)
            if epochs_of is not None:
                self._delete_epochs.update(epochs_of(deleted_ids))
        for op, ids in ((INSERT, created_ids), (UPSERT, changed_ids), (DELETE, deleted_ids)):
            if op == UPSERT and not refused:
                # Most of every tick: thousands of moved objects, merged at C speed.
                marked = _mark_changed(pending, ids) or marked
                continue
            for doc_id in ids:
                if refused and doc_id in refused:
                    continue
                old = pending.get(doc_id)
                new = op if old is None else merged_op(old, op)
                if new == NOTHING:
                    del pending[doc_id]
                else:
                    pending[doc_id] = new
                marked = True
        if not marked:
            return
        if was_empty:
            self._pending_tick = tick
            self._pending_since = self._clock()
        self._marked_seq += 1
        self._wake.set()

    def guard(
        self, source: DocumentSource | None = None, gate: Callable[[], str | None] | None = None
    ) -> None:
        """Replaces the document source, and the gate that may hold writes back."""
        if source is not None:
            self._source = source
        self._gate = gate

    def forget(self, ids: Iterable[str]) -> None:
        """Drops what is owed for these ids: their objects left for another process's world.

        That process writes them from now on; a write of theirs from here
        (an update, or worse the delete their absence would look like) must not
        follow. A write already under way is not recalled: it carries the state
        they left with.
        """
        pending, urgent = self._pending, self._urgent
        for doc_id in ids:
            pending.pop(doc_id, None)
            urgent.discard(doc_id)
        if not pending and not self._inflight:
            self._pending_tick = self._pending_since = None
        self._wake_id_waiters()

    async def flush(self) -> None:
        """Returns when everything marked before the call is written or refused for good.

        While the store is unavailable, waits as long as it takes: wrap the call in
        `asyncio.timeout()` to bound it. Raises `StoreError` if the writer stops
        before that.
        """
        target = self._marked_seq
        if self._durable_seq >= target or (not self._pending and not self._inflight):
            return
        self._wake.set()
        if self._state == "stopped":
            raise StoreError(self._unwritten_message())
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (target, future)
        self._waiters.append(waiter)
        try:
            await future
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def flush_ids(self, ids: Collection[str]) -> None:
        """Returns when these ids' marks so far are written, ahead of everything else pending.

        For a reply that must wait until its own changes are durable: the
        writer sends these ids in a small batch of their own, without waiting
        for the write interval or for the rest of the pending set.
        """
        outstanding = {i for i in ids if i in self._pending or i in self._inflight}
        if not outstanding:
            return
        if self._state == "stopped":
            raise StoreError(self._unwritten_message())
        self._urgent.update(i for i in outstanding if i in self._pending)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (outstanding, future)
        self._id_waiters.append(waiter)
        self._wake.set()
        try:
            await future
        finally:
            if waiter in self._id_waiters:
                self._id_waiters.remove(waiter)

    async def run(self) -> None:
        """Writes pending objects until `aclose()`; place it in the application's task group."""
        if self._state != "new":
            raise RuntimeError(f"the writer runs once; it is {self._state}")
        self._state = "running"
        loop = asyncio.get_running_loop()
        delay = self._retry_initial_s
        next_full_write_at = loop.time()
        try:
            while not self._stop.is_set():
                if not self._pending:
                    # Nothing owed: every mark so far is written (or needed no write).
                    self._durable_seq = self._marked_seq
                    self._wake_waiters()
                    self._wake_id_waiters()
                    if self._closed:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                urgent = [i for i in self._urgent if i in self._pending]
                self._urgent.clear()
                # Between two writes of everything, marks gather (unless a flush
                # or a few urgent ids cannot wait).
                wait_s = next_full_write_at - loop.time()
                if not urgent and wait_s > 0 and not self._waiters and not self._closed:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait_s):
                            await self._wake.wait()
                    continue
                if await self._write_pending(urgent or None):
                    delay = self._retry_initial_s
                    if not urgent:
                        next_full_write_at = loop.time() + self._write_interval_s
                else:
                    self._urgent.update(urgent)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._stop.wait()
                    delay = min(delay * 2, self._retry_max_s)
        finally:
            self._state = "stopped"
            if (self._pending or self._inflight) and not self._abandoned:
                logger.error("%s", self._unwritten_message())
            for future in [f for _, f in self._waiters] + [f for _, f in self._id_waiters]:
                if not future.done():
                    future.set_exception(StoreError(self._unwritten_message()))

    async def aclose(self) -> None:
        """Flushes, then stops the writer. Marks made afterwards raise `RuntimeError`.

        Needs the writer running to flush. If the flush is cancelled or fails
        (the writer stopped), the writer stops without writing what is left, and
        logs how many objects that was.
        """
        if self._closed:
            return
        abandoned = True
        try:
            await self.flush()
            abandoned = False
        finally:
            self._closed = True
            if abandoned:
                self._stop.set()
            self._wake.set()
            task, self._task = self._task, None
            if task is not None:
                if abandoned:
                    task.cancel()
                try:
                    await asyncio.wait([task])
                except asyncio.CancelledError:
                    task.cancel()
                    raise
                if not task.cancelled() and task.exception() is not None and not abandoned:
                    raise StoreError("the write-behind writer failed") from task.exception()

    def delete_epochs_owed(self, ids: Collection[str]) -> dict[str, int]:
        """The fencing epochs of these owed deletes (for a spill journal, after `abandon`)."""
        epochs = self._delete_epochs
        return {i: epochs[i] for i in ids if i in epochs}

    async def abandon(self) -> dict[str, Op]:
        """Stops the writer at once, whatever it was doing; returns what it still owed.

        For a shutdown that cannot wait for the store any longer: the caller
        keeps the returned operations elsewhere (a spill journal). A write that
        was under way may or may not have reached the store, so its inserts
        come back as `INSERT_UNSURE`.
        """
        self._closed = True
        self._abandoned = True
        self._stop.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        owed = dict(self._inflight)
        for doc_id, op in owed.items():
            if op == INSERT:
                owed[doc_id] = INSERT_UNSURE
        for doc_id, op in self._pending.items():
            old = owed.get(doc_id)
            owed[doc_id] = op if old is None else merged_op(old, op)
        self._pending, self._inflight = {}, {}
        self._pending_tick = self._pending_since = None
        self._inflight_tick = self._inflight_since = None
        for future in [f for _, f in self._waiters] + [f for _, f in self._id_waiters]:
            if not future.done():
                future.set_exception(StoreError(f"abandoned with {len(owed)} objects unwritten"))
        return owed

    def statistics(self) -> WriteBehindStatistics:
        """Returns a snapshot of the pending set and of the counters."""
        pending = len(self._pending)
        if self._inflight:
            pending += sum(1 for doc_id in self._inflight if doc_id not in self._pending)
        ticks = [t for t in (self._pending_tick, self._inflight_tick) if t is not None]
        since = [t for t in (self._pending_since, self._inflight_since) if t is not None]
        return WriteBehindStatistics(
            pending_objects=pending,
            oldest_pending_tick=min(ticks) if ticks else None,
            oldest_pending_age_s=self._clock() - min(since) if since else None,
            last_marked_tick=self._last_tick,
            writes_done=self._writes_done,
            objects_written=self._objects_written,
            failed_attempts=self._failed_attempts,
            rejected=self._rejected,
            collisions=self._collisions,
            last_error=self._last_error,
            over_limit=pending > self._max_pending,
            max_pending_objects=self._max_pending,
            fenced=self._fenced,
        )

    async def __aenter__(self) -> Self:
        if self._task is not None or self._state != "new":
            raise RuntimeError("the write-behind's writer is already started")
        self._task = asyncio.create_task(self.run(), name="synkworld-write-behind")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _write_pending(self, only: list[str] | None = None) -> bool:
        """Writes everything pending (or the ids `only`) in one batch; False if it failed."""
        if only is None:
            batch, seq = self._pending, self._marked_seq
            self._pending = {}
            tick, since = self._pending_tick, self._pending_since
            self._pending_tick = self._pending_since = None
        else:
            batch, seq = {i: self._pending.pop(i) for i in only}, None
            tick, since = self._pending_tick, self._pending_since
            if not self._pending:
                self._pending_tick = self._pending_since = None
        self._inflight, self._inflight_tick, self._inflight_since = batch, tick, since
        self._check_limit(len(batch))
        try:
            held = self._gate() if self._gate is not None else None
            if held is not None:
                raise StoreUnavailableError(f"writes held: {held}")
            write_batch, refused = self._build(batch)
            result = await self._store.apply(write_batch)
        except Exception as exc:
            self._put_back()
            self._failed(exc)
            return False
        except BaseException:
            self._put_back()
            raise
        finally:
            inflight_tick, inflight_since = self._inflight_tick, self._inflight_since
            self._inflight, self._inflight_tick, self._inflight_since = {}, None, None
        self._succeeded(result, refused)
        if self._delete_epochs:
            for doc_id in write_batch.deletes:
                if doc_id not in self._pending:
                    self._delete_epochs.pop(doc_id, None)
        resent = self._found_stored(batch, result.existing, inflight_tick, inflight_since)
        self._wake_id_waiters()
        if resent:
            # Some inserts are to be sent again as upserts: flushes wait for those too.
            self._urgent.update(resent)
            self._wake.set()
        elif seq is not None:
            self._durable_seq = seq
            self._wake_waiters()
        return True

    def _build(self, batch: dict[str, Op]) -> tuple[WriteBatch, dict[str, str]]:
        write_ids = [doc_id for doc_id, op in batch.items() if op != DELETE]
        deletes = [doc_id for doc_id, op in batch.items() if op == DELETE]
        docs = self._source.documents(write_ids) if write_ids else {}
        epochs = self._delete_epochs
        out = WriteBatch(
            deletes=deletes,
            delete_epochs={i: epochs[i] for i in deletes if i in epochs} if epochs else {},
        )
        refused: dict[str, str] = {}
        for doc_id in write_ids:
            doc = docs.get(doc_id)
            if doc is None:
                deletes.append(doc_id)
            elif isinstance(doc, Elsewhere):
                continue
            elif doc.get("_id") != doc_id:
                refused[doc_id] = f"the source gave a document with _id {doc.get('_id')!r}"
            elif batch[doc_id] == UPSERT:
                out.upserts.append(doc)
            else:
                out.inserts.append(doc)
        return out, refused

    def _found_stored(
        self,
        batch: dict[str, Op],
        existing: frozenset[str],
        tick: int | None,
        since: float | None,
    ) -> set[str]:
        """Handles inserts that found a stored document; returns those to send again."""
        resend: set[str] = set()
        for doc_id in existing:
            op = batch.get(doc_id)
            if op == INSERT_UNSURE:
                # Our own earlier attempt reached the store after all.
                pending = self._pending
                newer = pending.get(doc_id)
                pending[doc_id] = UPSERT if newer is None else merged_op(UPSERT, newer)
                if self._pending_tick is None:
                    self._pending_tick, self._pending_since = tick, since
                resend.add(doc_id)
            elif op == INSERT:
                self._collisions += 1
                self._refused_ids.add(doc_id)
                self._pending.pop(doc_id, None)
                logger.error(
                    "a new object's id %r is already stored: the stored document is kept, and "
                    "this object is not persisted (ids must be unique across the store)",
                    doc_id,
                )
        return resend

    def _put_back(self) -> None:
        """Returns the failed batch's ids to the pending set; newer marks keep precedence."""
        pending = self._pending
        for doc_id, op in self._inflight.items():
            attempted = INSERT_UNSURE if op == INSERT else op
            newer = pending.get(doc_id)
            pending[doc_id] = attempted if newer is None else merged_op(attempted, newer)
        if self._inflight_tick is not None and (
            self._pending_tick is None or self._inflight_tick < self._pending_tick
        ):
            self._pending_tick = self._inflight_tick
        if self._inflight_since is not None and (
            self._pending_since is None or self._inflight_since < self._pending_since
        ):
            self._pending_since = self._inflight_since

    def _failed(self, exc: Exception) -> None:
        self._failed_attempts += 1
        self._failure_streak += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        if self._failure_streak > 1:
            logger.debug("store write failed again (%s)", self._last_error)
        elif isinstance(exc, StoreUnavailableError):
            logger.warning(
                "store unavailable (%s); keeping %d objects and retrying",
                exc,
                len(self._pending),
            )
        else:
            logger.error(
                "store write failed; keeping %d objects and retrying",
                len(self._pending),
                exc_info=exc,
            )

    def _succeeded(self, result: WriteResult, refused: dict[str, str]) -> None:
        if self._failure_streak:
            logger.info("store write succeeded after %d failed attempts", self._failure_streak)
            self._failure_streak = 0
        self._writes_done += 1
        self._objects_written += result.written
        if result.fenced:
            self._fenced += len(result.fenced)
            # Routine on a shared map: the write a source makes of an object as it
            # left loses to its adopter's, whenever the adopter wrote first.
            logger.debug(
                "%d writes fenced: a process with a newer lease owns those objects now",
                len(result.fenced),
            )
        rejected = {**refused, **result.rejected}
        if rejected:
            self._rejected += len(rejected)
            for n, (doc_id, reason) in enumerate(rejected.items()):
                if n == _MAX_REJECTIONS_LOGGED:
                    logger.error("... and %d more objects refused", len(rejected) - n)
                    break
                logger.error("store refused object %r for good, not written: %s", doc_id, reason)

    def _wake_id_waiters(self) -> None:
        """Resolves the `flush_ids` waiters whose ids are owed no more (written or dropped)."""
        pending, inflight = self._pending, self._inflight
        for ids, future in self._id_waiters:
            ids.difference_update([i for i in ids if i not in pending and i not in inflight])
            if not ids and not future.done():
                future.set_result(None)

    def _wake_waiters(self) -> None:
        durable = self._durable_seq
        for target, future in self._waiters:
            if target <= durable and not future.done():
                future.set_result(None)

    def _check_limit(self, pending: int) -> None:
        if pending > self._max_pending and not self._warned_over_limit:
            self._warned_over_limit = True
            logger.warning(
                "%d objects wait to be written, more than max_pending_objects=%d",
                pending,
                self._max_pending,
            )
        elif pending <= self._max_pending and self._warned_over_limit:
            self._warned_over_limit = False
            logger.info("objects waiting to be written are back under max_pending_objects")

    def _unwritten_message(self) -> str:
        unwritten = len(self._pending.keys() | self._inflight.keys())
        return f"the write-behind writer stopped with {unwritten} objects unwritten"
