"""`WriteBehind`: writes the world's changes to a store in batches, behind the tick loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol, Self

from synkworld.store._base import Document, Store, WriteBatch, WriteResult
from synkworld.store._errors import StoreError, StoreUnavailableError

__all__ = ["DocumentSource", "WriteBehind", "WriteBehindStatistics"]

logger = logging.getLogger("synkworld.store")

# How many refused documents one batch logs one by one; the rest are summed up.
_MAX_REJECTIONS_LOGGED = 20


class DocumentSource(Protocol):
    """Gives the current documents of objects; the world implements it."""

    def documents(self, ids: Collection[str]) -> Mapping[str, Document | None]:
        """Returns the current full document of each id, or None if the object no longer exists.

        Each document is a new dict that the caller may keep: the source must not
        change it afterwards (the store encodes it later, maybe on another
        thread). An id missing from the answer counts as None.
        """
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
    last_error: str | None
    """The last failed attempt's error; kept after the store recovers."""
    over_limit: bool
    """More than `max_pending_objects` objects are pending."""
    max_pending_objects: int

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
    ) -> None:
        if max_pending_objects <= 0:
            raise ValueError(f"max_pending_objects is positive, not {max_pending_objects!r}")
        if not 0 < retry_initial_s <= retry_max_s:
            raise ValueError(
                "0 < retry_initial_s <= retry_max_s, not "
                f"retry_initial_s={retry_initial_s!r}, retry_max_s={retry_max_s!r}"
            )
        self._store = store
        self._source = source
        self._max_pending = max_pending_objects
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        if write_interval_s < 0:
            raise ValueError(f"write_interval_s is not negative, not {write_interval_s!r}")
        # Between two writes, marks gather: an object moving every tick is then
        # written once per interval, not once per tick. flush() cuts the wait short.
        self._write_interval_s = write_interval_s
        self._hurry = asyncio.Event()
        self._clock = clock

        # id -> True to delete, False to upsert; insertion-ordered.
        self._pending: dict[str, bool] = {}
        self._pending_tick: int | None = None
        self._pending_since: float | None = None
        # The batch of the write under way.
        self._inflight: dict[str, bool] = {}
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
        self._task: asyncio.Task[None] | None = None

        self._writes_done = 0
        self._objects_written = 0
        self._failed_attempts = 0
        self._failure_streak = 0
        self._rejected = 0
        self._last_error: str | None = None
        self._warned_over_limit = False

    def mark(self, tick: int, changed_ids: Iterable[str], deleted_ids: Iterable[str]) -> None:
        """Records that, in `tick`, these objects changed and these were deleted.

        Cheap and synchronous: it only merges the ids into the pending set. An id
        in both collections is deleted; an id marked again in a later call takes
        that call's verdict (a deleted id created anew is written, not deleted).
        Raises `RuntimeError` once the write-behind is closed.
        """
        if self._closed:
            raise RuntimeError("the write-behind is closed; no more marks are written")
        changed = dict.fromkeys(changed_ids, False)
        deleted = dict.fromkeys(deleted_ids, True)
        self._last_tick = tick
        if not changed and not deleted:
            return
        pending = self._pending
        if not pending:
            self._pending_tick = tick
            self._pending_since = self._clock()
        pending.update(changed)
        pending.update(deleted)
        self._marked_seq += 1
        self._wake.set()

    async def flush(self) -> None:
        """Returns when everything marked before the call is written or refused for good.

        While the store is unavailable, waits as long as it takes: wrap the call in
        `asyncio.timeout()` to bound it. Raises `StoreError` if the writer stops
        before that.
        """
        target = self._marked_seq
        if self._durable_seq >= target:
            return
        self._hurry.set()
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

    async def run(self) -> None:
        """Writes pending objects until `aclose()`; place it in the application's task group."""
        if self._state != "new":
            raise RuntimeError(f"the writer runs once; it is {self._state}")
        self._state = "running"
        delay = self._retry_initial_s
        try:
            while not self._stop.is_set():
                if not self._pending:
                    if self._closed:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if await self._write_pending():
                    delay = self._retry_initial_s
                    if self._write_interval_s > 0 and not self._hurry.is_set():
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(self._write_interval_s):
                                await self._hurry.wait()
                    if not self._waiters:
                        self._hurry.clear()
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._stop.wait()
                    delay = min(delay * 2, self._retry_max_s)
        finally:
            self._state = "stopped"
            if self._pending or self._inflight:
                logger.error("%s", self._unwritten_message())
            for _, future in self._waiters:
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
            self._hurry.set()
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
            last_error=self._last_error,
            over_limit=pending > self._max_pending,
            max_pending_objects=self._max_pending,
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

    async def _write_pending(self) -> bool:
        """Writes everything pending in one batch; returns False if the attempt failed."""
        batch, seq = self._pending, self._marked_seq
        self._inflight, self._inflight_tick, self._inflight_since = (
            batch,
            self._pending_tick,
            self._pending_since,
        )
        self._pending, self._pending_tick, self._pending_since = {}, None, None
        self._check_limit(len(batch))
        try:
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
            self._inflight, self._inflight_tick, self._inflight_since = {}, None, None
        self._succeeded(result, refused)
        self._durable_seq = seq
        self._wake_waiters()
        return True

    def _build(self, batch: dict[str, bool]) -> tuple[WriteBatch, dict[str, str]]:
        upsert_ids = [doc_id for doc_id, deleted in batch.items() if not deleted]
        deletes = [doc_id for doc_id, deleted in batch.items() if deleted]
        docs = self._source.documents(upsert_ids) if upsert_ids else {}
        upserts: list[Document] = []
        refused: dict[str, str] = {}
        for doc_id in upsert_ids:
            doc = docs.get(doc_id)
            if doc is None:
                deletes.append(doc_id)
            elif doc.get("_id") != doc_id:
                refused[doc_id] = f"the source gave a document with _id {doc.get('_id')!r}"
            else:
                upserts.append(doc)
        return WriteBatch(upserts=upserts, deletes=deletes), refused

    def _put_back(self) -> None:
        """Returns the failed batch's ids to the pending set; newer marks keep precedence."""
        pending = self._pending
        for doc_id, deleted in self._inflight.items():
            pending.setdefault(doc_id, deleted)
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
        rejected = {**refused, **result.rejected}
        if rejected:
            self._rejected += len(rejected)
            for n, (doc_id, reason) in enumerate(rejected.items()):
                if n == _MAX_REJECTIONS_LOGGED:
                    logger.error("... and %d more objects refused", len(rejected) - n)
                    break
                logger.error("store refused object %r for good, not written: %s", doc_id, reason)

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
