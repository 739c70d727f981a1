"""A tick loop's end of a bus that several processes share: one world per process.

Each process's world holds the objects of the regions it owns (`owned`). Tick
n on a process:

1. `begin_tick`: regions taken over (loaded from the store) start here.
2. Simulate and commit (the world hands over objects entering foreign keys).
3. `publish`: one entry per owned region, appended in one round trip, each
   fenced by the region's lease. The append is the commit point of the
   handovers in it; those whose append failed come back to the border.
4. `delivery`: reads the other regions' entries up to a deadline, joins their
   batches with this process's (the incoming adds into each key's batch), and
   serves snapshots: this world's for owned keys, the owners' in-band ones
   for the others.
5. Frames, then `after_frames`: adopts the objects handed over to owned keys
   (and whole regions handed to this process), and asks the owners for the
   snapshots the sessions will need at the next tick.

A region whose entry of a tick does not arrive by the deadline is late: the
sessions holding its cells are owed a resync (`Session.resync_owed`), which
they get once every key they hold has a snapshot again; until then they get no
frames, so that no cache is ever wrong, only late.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from synkworld._bus import BusPort, TickDelivery
from synkworld._bus_backend import Append, AppendStatus, BusBackend, Lease
from synkworld._cluster._entries import Entry, EntryBuilder, join_batch, join_snapshot
from synkworld._cluster._frames import ClusterFrames
from synkworld._errors import BusUnavailableError, DocumentError
from synkworld._objects import SynkObject
from synkworld._regions import RegionMap
from synkworld._sessions import Session
from synkworld._world import Handover, TickChanges, World

__all__ = ["ClusterPort", "ClusterStatistics"]

log = logging.getLogger("synkworld.cluster")

_EMPTY: Mapping[str, bytes] = {}


@dataclass(slots=True)
class _Sent:
    """A handover not yet acknowledged by its adopter."""

    doc: dict[str, Any]
    key: str
    tick: int
    dest_epoch: int | None
    sent_at: float
    src_region: str
    """The region whose entry carried it: what an acknowledgement names, with `tick`."""
    resends: int = 0
    shown: bool = True
    """Its add was in frames (False: its append's fate was unknown, then taken as landed)."""


@dataclass(slots=True)
class _Takeover:
    region: str
    epoch: int
    write_epoch: int
    docs: list[dict[str, Any]]


@dataclass(slots=True)
class _Published:
    tick: int
    batches: Mapping[str, bytes]
    incoming: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    fenced: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class ClusterStatistics:
    """Counters of one process's part in a shared map."""

    regions_owned: int
    regions_late: int
    appends: int
    append_failures: int
    append_seconds: float
    reads: int
    read_seconds: float
    bytes_appended: int
    bytes_read: int
    resyncs_owed: int
    handovers_sent: int
    handovers_adopted: int
    handovers_resent: int
    outbox: int
    regions_lost: int
    gaps: int


class ClusterPort(BusPort):
    """Publishes this world's regions and joins the others' into frames (see the module)."""

    def __init__(
        self,
        world: World,
        backend: BusBackend,
        regions: RegionMap,
        *,
        node: str,
        sessions: Callable[[], Iterable[Session]] = tuple,
        clock: Callable[[], float] = time.monotonic,
        deadline: Callable[[int], float] | None = None,
        lease_ttl_ms: int = 5000,
        resend_after_s: float = 5.0,
        forget: Callable[[list[str]], None] | None = None,
        snapshot_budget: int = 128,
    ) -> None:
        self.world = world
        self.backend = backend
        self.regions = regions
        self.node = node
        self.sessions = sessions
        self.clock = clock
        # When waiting for other regions' entries of tick n ends (default: at once).
        self.deadline = deadline or (lambda tick: clock())
        self.lease_ttl_ms = lease_ttl_ms
        self.resend_after_s = resend_after_s
        # Snapshots asked of other owners per tick, beyond which resyncs wait their turn.
        self.snapshot_budget = snapshot_budget
        # Tells the write-behind to drop what it owes for objects gone elsewhere.
        self.forget = forget or (lambda ids: None)
        # Tells the write-behind to write these again (a handover decided after its
        # tick: its `departed` document is known only now).
        self.rewrite: Callable[[list[str]], None] = lambda ids: None
        self.schedule: Callable[[float], tuple[int, float]] | None = None
        world.ownership = self

        self.owned: dict[str, int] = {}  # region -> lease epoch
        self.write_epoch: dict[str, int] = {}  # region -> the `ep` its store writes carry
        self.object_epoch: dict[str, int] = {}  # id -> the `ep` it came with
        self.holders: dict[str, Lease] = {}  # every region's holder, as last known
        self.bus_up = True
        self._migrating: dict[str, str] = {}  # region -> the node it goes to, at the next publish
        self._takeovers: list[_Takeover] = []
        self._acks: dict[str, list[tuple[str, str, str, int]]] = {}
        self._outbox: dict[str, _Sent] = {}
        self.unheld: set[str] = set()  # owned regions whose lease an append found nobody's
        self._unshown: set[str] = set()
        # The documents objects left with in handovers, for this process's last write of
        # them: the store then has them in their new region, should their adopter die
        # before writing them (a takeover loads that region).
        self.departed: dict[str, dict[str, Any]] = {}
        # The epochs of the objects the tick being published deleted (see publish).
        self.deleted_epochs: dict[str, int] = {}
        # Until when each owned region's lease is surely still ours (store writes wait after).
        self.valid_until: dict[str, float] = {}
        # id -> (when, version) of objects handed away, to tell old resends from new ones.
        self._released_recently: dict[str, tuple[float, int]] = {}
        # Handovers in appends whose outcome is unknown (the bus went during the call).
        self._limbo: dict[tuple[str, int], list[Handover]] = {}
        # The lease's epoch and the medium's losses when each was appended.
        self._limbo_epoch: dict[tuple[str, int], tuple[int, int]] = {}

        self._cursor: dict[str, int] = {}
        self._queued: dict[str, deque[Entry]] = {}
        self._epochs: dict[str, int] = {}
        self._expect: dict[str, int] = {}
        self._late: set[str] = set()
        self._missed: set[tuple[str, int]] = set()
        self._missed_order: deque[tuple[str, int]] = deque()
        self._start_tick: int | None = None

        self._published = _Published(0, _EMPTY)
        self._tick = 0
        # The tick whose frames are being built (below the world's for a skipped tick).
        self._framing = 0
        self._snaps: dict[str, bytes] = {}
        self._incoming: dict[str, list[dict[str, Any]]] = {}
        # Objects handed into keys owned elsewhere (by any process) that their owner
        # has not acknowledged yet, by key, with the tick they left: their add went
        # out in frames, and until the owner's entry says it adopted them, its
        # snapshots of the key may not show them (it read the handover late).
        self._transit: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {}
        # Adoptions acknowledged lately, (id, source region, source tick), oldest first:
        # a reader that reads the source's region late can read the acknowledgement
        # before the handover, which is then not on its way any more.
        self._acknowledged: dict[tuple[str, str, int], None] = {}
        self._adopt: list[tuple[dict[str, Any], str, str, int, bool, bool]] = []
        self._arrivals: list[Entry] = []
        self._wants: dict[str, set[str]] = {}
        self._asked: dict[str, dict[str, int]] = {}  # sid -> key -> tick first wanted

        self._appends = self._append_failures = self._reads = 0
        self._append_s = self._read_s = 0.0
        self._bytes_out = self._bytes_in = 0
        self._owed = self._sent = self._adopted_n = self._resent = self._lost = self._gaps = 0

    # -- the world's ownership ---------------------------------------------------------

    def owns(self, key: str) -> bool:
        """Tells whether the key's region is owned here (its objects live in this world)."""
        return self.regions.region_of(key) in self.owned

    def can_enter(self, key: str) -> bool:
        """Tells whether an object may be handed over into a key owned elsewhere now."""
        if not self.bus_up or not self.owned:
            return False
        holder = self.holders.get(self.regions.region_of(key))
        return holder is not None and holder.node != self.node

    # -- regions coming and going (the node calls these) --------------------------------------

    def take_over(
        self, region: str, epoch: int, docs: list[dict[str, Any]], write_epoch: int
    ) -> None:
        """Starts owning a region at the next tick, with the objects loaded from the store."""
        self._takeovers.append(_Takeover(region, epoch, write_epoch, docs))

    def hand_over(self, region: str, to: str) -> None:
        """Hands an owned region, with every object in it, to another node at the next tick."""
        if region in self.owned:
            self._migrating[region] = to

    def renewed(self, epochs: Mapping[str, int]) -> None:
        """Takes note of leases re-acquired at new epochs (after the medium lost them)."""
        self.unheld.difference_update(epochs)
        for region, epoch in epochs.items():
            if region in self.owned:
                self.owned[region] = epoch
                self.write_epoch[region] = max(self.write_epoch.get(region, 0), epoch)
                self.holders[region] = Lease(self.node, epoch)

    def lose(self, regions: Collection[str], why: str) -> None:
        """Drops regions whose lease is gone: their objects are another process's now."""
        lost = [r for r in regions if r in self.owned]
        if not lost:
            return
        gone = set(lost)
        objs = [o for o in self.world if (k := self._standing(o)) and self._region(k) in gone]
        self.world.release(objs)
        ids = [o.id for o in objs]
        self.forget(ids)
        for oid in ids:
            self.object_epoch.pop(oid, None)
        for region in lost:
            self._acks.pop(region, None)
            self.unheld.discard(region)
            self.valid_until.pop(region, None)
            del self.owned[region]
            self.write_epoch.pop(region, None)
            self._migrating.pop(region, None)
            # Read from this process's last entry on: the new owner's entries since its
            # takeover acknowledge what it took back from its outbox, and a handover
            # into the region read late from another region's stream would otherwise
            # count as on its way there for good.
            self._cursor[region] = self._published.tick
            self._owe_region(region)
        self._lost += len(lost)
        log.warning("lost %d regions (%s): %s", len(lost), why, ", ".join(sorted(lost)))

    def _standing(self, obj: SynkObject) -> str | None:
        """The key an object stands under here: its published key, pinned at a border."""
        return self.world.published_key(obj) or obj.key

    def _region(self, key: str) -> str:
        return self.regions.region_of(key)

    # -- the tick ----------------------------------------------------------------------

    @property
    def tick(self) -> int:
        """The last tick this process published."""
        return self._tick

    def next_tick(self, now: float) -> tuple[int, float] | None:
        if self.schedule is None:
            return None
        return self.schedule(now)

    def catch_up_first(self) -> bool:
        # A process that stalled past a lease learns what it lost from its next
        # append: before then, its regions' snapshots and cursors are not to be trusted.
        now = self.clock()
        return all(self.valid_until.get(r, now) > now for r in self.owned)

    async def begin_tick(self, tick: int) -> None:
        if self._start_tick is None:
            self._start_tick = tick
            for region in self.regions.regions():
                if region not in self.owned:
                    self._cursor.setdefault(region, tick - 1)
        if self._limbo:
            await self._settle_limbo()
        takeovers, self._takeovers = self._takeovers, []
        for t in takeovers:
            self._start_owning(t)

    def _unacknowledged_into(self, region: str, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`docs` with this process's handovers into `region` that nobody adopted.

        A region taken over (or handed here) may be where this process sent
        objects its owner never acknowledged (it crashed): they come back from
        the outbox, which is newer than the store unless the store says otherwise.
        """
        mine = {
            oid: sent.doc for oid, sent in self._outbox.items() if self._region(sent.key) == region
        }
        if not mine:
            return docs
        unshown = {oid for oid in mine if not self._outbox[oid].shown}
        # Acknowledged as adopted (it is, here, now or from the store): readers that
        # count it as on its way into the region, whose snapshots would show it as it
        # left, learn it arrived; the adopter that never acknowledged it is gone.
        acks = self._acks.setdefault(region, [])
        for oid in mine:
            sent = self._outbox.pop(oid)
            acks.append((oid, sent.key, sent.src_region, sent.tick))
        out = []
        for doc in docs:
            theirs = mine.get(doc.get("_id"))  # type: ignore[arg-type]
            if theirs is not None and int(theirs.get("v", 0)) > int(doc.get("v", 0)):
                continue
            if theirs is not None:
                del mine[doc["_id"]]
            out.append(doc)
        # Those that come back from the outbox with an add no frame showed (their
        # append's fate was unknown) are announced where no resync follows.
        self._unshown = unshown & set(mine)
        return out + list(mine.values())

    def _start_owning(self, t: _Takeover) -> None:
        world = self.world
        adopted = 0
        for doc in self._unacknowledged_into(t.region, t.docs):
            ep = doc.get("ep", 0)
            oid = doc.get("_id")
            if not isinstance(oid, str) or oid in world:
                continue
            try:
                world.adopt(doc)
            except DocumentError as e:
                log.warning("region %s: skipped document %r: %s", t.region, e.doc_id, e)
                continue
            self.object_epoch[oid] = int(ep) if isinstance(ep, int) else 0
            adopted += 1
        self.owned[t.region] = t.epoch
        self.write_epoch[t.region] = t.write_epoch
        self.holders[t.region] = Lease(self.node, t.epoch)
        self._cursor.pop(t.region, None)
        self._queued.pop(t.region, None)
        self._late.discard(t.region)
        # Whatever its holders here saw came from the previous owner.
        self._owe_region(t.region)
        log.info("owning region %s at epoch %d: %d objects", t.region, t.epoch, adopted)

    async def publish(self, changes: TickChanges) -> None:
        n = changes.tick
        self._tick = n
        # Deletes are fenced at the store as writes are: a stalled owner's delete,
        # made before it learns that its regions are another's, must not remove
        # the document its successor wrote. The write-behind takes them at its mark.
        self.deleted_epochs = {oid: self.object_epoch.pop(oid, 0) for oid in changes.deleted_ids}
        owned = self.owned
        builders = {r: EntryBuilder(self.node, e) for r, e in owned.items()}
        wanted: dict[str, set[str]] = {}
        if owned:
            try:
                wanted = await self.backend.take_wanted(list(owned))
            except BusUnavailableError:
                self.bus_up = False
        region_of = self._region
        for key, data in changes.batches.data.items():
            b = builders.get(region_of(key))
            if b is not None:
                b.batches[key] = data
        first = min(owned) if owned else None
        by_region: dict[str, list[Handover]] = {}
        for h in changes.outgoing:
            moved_from = h.entry.get("from")
            src = region_of(moved_from) if isinstance(moved_from, str) else first
            if src not in builders:
                src = first
            assert src is not None  # an object only leaves a world that owns something
            b = builders[src]
            b.incoming.setdefault(h.key, []).append(h.entry)
            doc = dict(h.document)
            doc["ep"] = self.epoch_of(h.id, h.key, moved_from)
            b.handovers.append(doc)
            by_region.setdefault(src, []).append(h)
        for region, b in builders.items():
            b.adopted = self._acks.pop(region, [])
            for key in wanted.get(region, ()):
                if region_of(key) == region:
                    b.snapshots[key] = self.world.snapshot(key)
        if first is not None:
            builders[first].resent = self._due_resends()
        migrating: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        for region, to in list(self._migrating.items()):
            if region not in builders:
                continue  # lost since it was asked to migrate: nothing to hand over
            objs = [o for o in self.world if (k := self._standing(o)) and region_of(k) == region]
            docs = self.world.release(objs)
            for doc in docs:
                doc["ep"] = self.epoch_of(doc["_id"], doc["key"], None)
            builders[region].migrated = docs
            builders[region].handed_to = to
            migrating[region] = (to, docs)
        self._migrating.clear()

        appends = [
            Append(
                r,
                b.epoch,
                n,
                b.fields(),
                migrating[r][0] if r in migrating else None,
                self.lease_ttl_ms,
            )
            for r, b in builders.items()
        ]
        self._bytes_out += sum(len(k) + len(v) for a in appends for k, v in a.fields.items())
        statuses: list[AppendStatus | None]
        epochs: list[int | None]
        holders: list[str | None]
        started = self.clock()
        if appends:
            self._appends += 1
            try:
                results = await self.backend.append(self.node, appends)
                statuses = [r.status for r in results]
                epochs = [r.epoch for r in results]
                holders = [r.holder for r in results]
                self.bus_up = True
            except BusUnavailableError as e:
                if self.bus_up:
                    log.warning("the bus is away, objects wait at region borders: %s", e)
                self.bus_up = False
                self._append_failures += 1
                statuses = [None] * len(appends)
                epochs = [None] * len(appends)
                holders = [None] * len(appends)
            self._append_s += self.clock() - started
        else:
            statuses, epochs, holders = [], [], []

        published = _Published(n, changes.batches.data)
        failed: set[str] = set()
        retaken: dict[str, int] = {}
        for a, status, epoch, holder in zip(appends, statuses, epochs, holders, strict=True):
            r = a.region
            sent = by_region.get(r, [])
            if status is AppendStatus.OK:
                docs_by_id = {d["_id"]: d for d in builders[r].handovers}
                now = self.clock()
                for h in sent:
                    published.incoming.setdefault(h.key, []).append(h.entry)
                    self._transit.setdefault(h.key, {})[h.id] = (n, h.entry)
                    self._sent += 1
                    dest = self.holders.get(region_of(h.key))
                    self._outbox[h.id] = _Sent(
                        docs_by_id[h.id], h.key, n, dest.epoch if dest else None, now, r
                    )
                    self._released_recently[h.id] = (now, int(h.document.get("v", 0)))
                    self.departed[h.id] = docs_by_id[h.id]
                if r in migrating:
                    to, docs = migrating[r]
                    ids = [d["_id"] for d in docs]
                    changes.released_ids.extend(ids)
                    for oid in ids:
                        self.object_epoch.pop(oid, None)
                    del self.owned[r]
                    self.write_epoch.pop(r, None)
                    assert epoch is not None
                    self.holders[r] = Lease(to, epoch)
                    self._expect[r] = epoch
                    self._epochs[r] = epoch
                    self._cursor[r] = n
                    log.info("handed region %s to %s at tick %d: %d objects", r, to, n, len(ids))
            elif status is None:
                # Unknown: the append may have gone through. Decided once the bus is back.
                if sent:
                    self._limbo[r, n] = sent
                    self._limbo_epoch[r, n] = (a.epoch, self.backend.losses)
                failed.update(h.id for h in sent)
                if r in migrating:
                    self._limbo_migration(r, migrating[r][1])
            else:
                failed.update(h.id for h in sent)
                if r in migrating:
                    self._undo_migration(migrating[r][1])
                if status is AppendStatus.FENCED and holder == self.node and epoch:
                    # This process took the lease again (upkeep, after the medium lost
                    # it) while the append was on its way: still ours, at a new epoch.
                    retaken[r] = epoch
                elif status is AppendStatus.UNHELD:
                    # Nobody's lease: the medium lost it, or it ran out while this
                    # process stalled. The world is still right; upkeep takes it again
                    # (or loses it to a takeover). Readers see a gap meanwhile.
                    if r not in self.unheld:
                        log.warning("region %s: the lease is nobody's; taking it again", r)
                    self.unheld.add(r)
                else:
                    published.fenced.add(r)
            if status is not AppendStatus.OK and builders[r].adopted:
                # The acknowledgements go in the region's next entry (their sources and
                # the readers wait for them; a second one is harmless).
                self._acks[r] = builders[r].adopted + self._acks.get(r, [])
        if first is not None and builders[first].resent:
            carried = dict(zip((a.region for a in appends), statuses, strict=True)).get(first)
            if carried is not AppendStatus.OK:
                # The entry that carried them did not land: they go again next tick.
                for doc in builders[first].resent:
                    again = self._outbox.get(doc["_id"])
                    if again is not None:
                        again.sent_at -= self.resend_after_s
                        again.resends -= 1
        if len(self._released_recently) > 10_000 or n % 200 == 0:
            horizon = self.clock() - 60.0
            self._released_recently = {
                i: t for i, t in self._released_recently.items() if t[0] >= horizon
            }
            self.departed = {i: d for i, d in self.departed.items() if i in self._released_recently}
            self._forget_old_transit(n)
        # Objects in limbo stay out of the world until their append's fate is known.
        limbo_ids = {h.id for hs in self._limbo.values() for h in hs}
        restored = self.world.settle_handovers(failed - limbo_ids, limbo_ids)
        for obj in restored:
            if (k := self._standing(obj)) is not None:
                self._owe_keys({k})
        for h in changes.outgoing:
            if h.id in failed:
                self._owe_keys({h.key, *(k for k in [h.entry.get("from")] if k)})
        if retaken:
            self.renewed(retaken)
        fenced = [r for r in published.fenced if r in self.owned]
        if fenced:
            self.lose(fenced, "fenced: another process holds the lease")
        self._published = published

    def epoch_of(self, oid: str, key: str, also: str | None) -> int:
        """The fencing epoch a store write of this object carries (`ep`).

        Never lower than one this process wrote it with: regions hold their leases
        at different epochs, and an object moving to a region with an older lease
        must not be fenced by its own earlier writes.
        """
        ep = max(self.write_epoch.get(self._region(key), 0), self.object_epoch.get(oid, 0))
        if also is not None:
            ep = max(ep, self.write_epoch.get(self._region(also), 0))
        if oid in self.world:
            self.object_epoch[oid] = ep
        return ep

    def _undo_migration(self, docs: list[dict[str, Any]]) -> None:
        for doc in docs:
            self.world.adopt(doc)

    def _limbo_migration(self, region: str, docs: list[dict[str, Any]]) -> None:
        # Taken back at once: if the append did go through, the lease is the other
        # node's now, and the next append here is fenced, which drops the region.
        self._undo_migration(docs)

    async def _settle_limbo(self) -> None:
        limbo = dict(self._limbo)
        try:
            landed = {(r, t): await self.backend.has_entry(r, t) for r, t in limbo}
        except BusUnavailableError:
            return
        self.bus_up = True
        for (region, tick), handovers in limbo.items():
            del self._limbo[region, tick]
            epoch, losses = self._limbo_epoch.pop((region, tick), (None, None))
            ids = [h.id for h in handovers]
            # No entry says it did not land only if the medium kept its data: with the
            # lease at the same epoch, it did. Otherwise (Redis restarted empty) the
            # entry may have been read, and its objects adopted, before it was lost:
            # taking them back would put them in two worlds. They go to the outbox
            # instead, and reach their adopter by a resend if they never did.
            lost_since = self.backend.losses != losses or self.owned.get(region) != epoch
            if landed[region, tick] or lost_since:
                now = self.clock()
                for h in handovers:
                    dest = self.holders.get(self._region(h.key))
                    doc = dict(h.document)
                    doc["ep"] = self.epoch_of(h.id, h.key, h.entry.get("from"))
                    # Written as it left, as a handover decided at its tick is: should
                    # its adopter die before writing it, a takeover finds it there.
                    self.departed[h.id] = doc
                    self._released_recently[h.id] = (now, int(h.document.get("v", 0)))
                    # Sent again at the next tick: if it never reached its adopter, it
                    # should not wait a resend interval out of every world.
                    self._outbox[h.id] = _Sent(
                        doc,
                        h.key,
                        tick,
                        dest.epoch if dest else None,
                        self.clock() - self.resend_after_s,
                        region,
                        shown=False,
                    )
                self.world.decide_handovers(ids, landed=True)
                self.rewrite(ids)
                continue
            restored = self.world.decide_handovers(ids, landed=False)
            # Back at the border, unless the region was lost meanwhile: then its new
            # owner has the object (from the store), and it is not this world's.
            foreign = [o for o in restored if (k := self._standing(o)) and not self.owns(k)]
            if foreign:
                self.world.release(foreign)
                self.forget([o.id for o in foreign])
            for obj in restored:
                if (k := self._standing(obj)) is not None:
                    self._owe_keys({k})

    def _due_resends(self) -> list[dict[str, Any]]:
        """Handovers that no adopter acknowledged in time, to send again."""
        now = self.clock()
        out = []
        for oid, sent in list(self._outbox.items()):
            if now - sent.sent_at < self.resend_after_s:
                continue
            dest = self.holders.get(self._region(sent.key))
            if sent.resends >= 3:
                log.error(
                    "object %r handed over into %s at tick %d was never acknowledged; "
                    "given up after %d resends",
                    oid,
                    sent.key,
                    sent.tick,
                    sent.resends,
                )
                del self._outbox[oid]
                continue
            if dest is None or dest.node == self.node:
                continue
            sent.resends += 1
            sent.sent_at = now
            sent.dest_epoch = dest.epoch
            self._resent += 1
            out.append(sent.doc)
        return out

    # -- reading the other regions --------------------------------------------------------

    async def delivery(self, tick: int) -> TickDelivery:
        self._framing = tick
        await self._read_until(tick)
        pub = self._published
        own = pub.batches if pub.tick == tick else _EMPTY
        merged: dict[str, bytes] | Mapping[str, bytes] = own
        if pub.fenced and own:
            merged = {k: v for k, v in own.items() if self._region(k) not in pub.fenced}
        incoming: dict[str, list[dict[str, Any]]] = {
            k: list(v) for k, v in (pub.incoming.items() if pub.tick == tick else ())
        }
        snaps: dict[str, bytes] = {}
        self._adopt = []
        self._arrivals = []
        for region in list(self._queued):
            queue = self._queued[region]
            while queue and queue[0].tick <= tick:
                entry = queue.popleft()
                on_time = entry.tick == tick
                if not on_time and (region, entry.tick) not in self._missed:
                    self._miss(region, entry.tick)  # its tick's frames went without it
                self._consume(entry, on_time)
                if not on_time:
                    continue
                if self._late and region in self._late:
                    self._late.discard(region)
                if entry.batches:
                    if merged is own:
                        merged = dict(own)
                    assert isinstance(merged, dict)
                    merged.update(entry.batches)
                for key, adds in entry.incoming.items():
                    incoming.setdefault(key, []).extend(adds)
                snaps.update(entry.snapshots)
            if not queue:
                del self._queued[region]
        for region in self._waited():
            if self._cursor.get(region, tick) < tick:
                self._miss(region, tick)
        if incoming:
            if merged is own:
                merged = dict(own)
            assert isinstance(merged, dict)
            for key, adds in incoming.items():
                merged[key] = join_batch(key, merged.get(key), adds)
        self._snaps = snaps
        self._incoming = incoming
        self._tick = max(self._tick, tick)
        return TickDelivery(tick, merged, self, ClusterFrames(merged, self))

    def _waited(self) -> list[str]:
        """The regions whose entry of a tick frames wait for (until the deadline): held elsewhere.

        Late ones too: a late region recovers with its first entry on time, and a
        reader that did not wait for it would read before its owner appended, for
        ever (a gateway, with nothing to append, reads at the very start of a tick).
        """
        me = self.node
        return [r for r, lease in self.holders.items() if lease.node != me and r not in self.owned]

    async def _read_until(self, tick: int) -> None:
        deadline = self.deadline(tick)
        while True:
            missing = [r for r in self._waited() if self._cursor.get(r, tick) < tick]
            cursors = {r: c for r, c in self._cursor.items() if r not in self.owned}
            left = deadline - self.clock()
            if not cursors:
                return
            started = self.clock()
            try:
                result = await self.backend.read(cursors, max(0.0, left) if missing else 0.0)
            except BusUnavailableError:
                self.bus_up = False
                return
            self._reads += 1
            self._read_s += self.clock() - started
            for region in result.gaps:
                self._gap(region)
            for record in result.records:
                self._cursor[record.region] = max(self._cursor.get(record.region, -1), record.tick)
                self._bytes_in += sum(len(k) + len(v) for k, v in record.fields.items())
                try:
                    entry = Entry.decode(record)
                except ValueError as e:
                    log.error("%s", e)
                    continue
                self._queued.setdefault(record.region, deque()).append(entry)
            missing = [r for r in self._waited() if self._cursor.get(r, tick) < tick]
            if not missing or self.clock() >= deadline:
                return

    def _consume(self, entry: Entry, on_time: bool) -> None:
        region = entry.region
        known = self._epochs.get(region)
        if known is not None and entry.epoch != known and entry.epoch != self._expect.get(region):
            log.info(
                "region %s changed owner without a handover (epoch %d -> %d): resyncs",
                region,
                known,
                entry.epoch,
            )
            self._owe_region(region)
        self._epochs[region] = entry.epoch
        holder = self.holders.get(region)
        if holder is None or holder.epoch <= entry.epoch:
            self.holders[region] = Lease(entry.node, entry.epoch)
        acknowledged = self._acknowledged
        for oid, key, src_region, src_tick in entry.adopted:
            self._outbox.pop(oid, None)
            acknowledged[oid, src_region, src_tick] = None
            in_key = self._transit.get(key)
            if in_key is not None and in_key.pop(oid, None) is not None and not in_key:
                del self._transit[key]
            if (src_region, src_tick) in self._missed:
                # Adopted from an entry that came late here: its add was not delivered.
                self._owe_keys({key})
        if not on_time and entry.incoming:
            self._owe_keys(set(entry.incoming))
        if len(acknowledged) > 4096:
            for old in list(itertools.islice(acknowledged, len(acknowledged) - 4096)):
                del acknowledged[old]
        for key, adds in entry.incoming.items():
            if self._region(key) not in self.owned:
                waiting = [a for a in adds if (a["id"], region, entry.tick) not in acknowledged]
                if waiting:
                    in_key = self._transit.setdefault(key, {})
                    for add in waiting:
                        in_key[add["id"]] = (entry.tick, add)
        for doc in entry.handovers:
            self._adopt.append((doc, doc["key"], region, entry.tick, False, not on_time))
        for doc in entry.resent:
            self._adopt.append((doc, doc["key"], region, entry.tick, True, not on_time))
        if entry.handed_to is not None and entry.new_epoch is not None:
            self._expect[region] = entry.new_epoch
            self.holders[region] = Lease(entry.handed_to, entry.new_epoch)
            if entry.handed_to == self.node:
                self._arrivals.append(entry)

    def _miss(self, region: str, tick: int) -> None:
        self._missed.add((region, tick))
        self._missed_order.append((region, tick))
        while len(self._missed_order) > 4096:
            self._missed.discard(self._missed_order.popleft())
        if region not in self._late:
            self._late.add(region)
            self._owe_region(region)

    def _gap(self, region: str) -> None:
        """Entries of a region were lost before this process read them."""
        self._gaps += 1
        self._late.add(region)
        # A lost entry may have carried the acknowledgement of a handover: what was in
        # transit may have been adopted (and gone on) since. Everyone resyncs anyway.
        self._transit.clear()
        log.warning("entries of region %s were lost before they were read: a resync", region)
        # Lost entries may have carried incoming adds into any key: resync everyone.
        self._owe_keys(None)

    # -- resyncs ------------------------------------------------------------------------

    def _owe_region(self, region: str) -> None:
        region_of = self._region
        for s in self.sessions():
            if not s.resync_owed and any(region_of(k) == region for k in s.held):
                s.resync_owed = True
                self._owed += 1

    def _owe_keys(self, keys: set[str] | None) -> None:
        for s in self.sessions():
            if not s.resync_owed and s.held and (keys is None or not s.held.isdisjoint(keys)):
                s.resync_owed = True
                self._owed += 1

    # -- snapshots (the frames' source) ----------------------------------------------------------

    def snapshot(self, key: str) -> bytes | None:
        return self.snapshot_now(key)

    def snapshot_now(self, key: str, ask: bool = True) -> bytes | None:
        region = self._region(key)
        if region in self.owned:
            if self.world.tick != self._framing:
                # The frames of a tick this process skipped: its world may hold changes
                # since its last commit, which the next tick's batches carry.
                return None
            snap: bytes | None = self.world.snapshot(key)
        else:
            snap = self._snaps.get(key)
            if snap is None or region in self._late:
                if ask:
                    self.want_next(key)
                return None
        adds = self._incoming.get(key)
        if adds and snap is not None:
            snap = join_snapshot(snap, adds)
        in_transit = self._transit.get(key)
        if in_transit and snap is not None and region not in self.owned:
            # Handed into the key and not adopted as of the owner's snapshot: as it left.
            snap = join_snapshot(snap, [a for _, a in in_transit.values()], keep=True)
        return snap

    def _forget_old_transit(self, tick: int) -> None:
        """Drops handovers never acknowledged (their adopter went): a takeover reloads them."""
        horizon = tick - 1200
        for key in list(self._transit):
            kept = {i: v for i, v in self._transit[key].items() if v[0] >= horizon}
            if kept:
                self._transit[key] = kept
            else:
                del self._transit[key]

    def want_next(self, key: str) -> None:
        region = self._region(key)
        if region not in self.owned:
            self._wants.setdefault(region, set()).add(key)

    def may_ask(self, keys: list[str]) -> bool:
        wants = self._wants
        asked = sum(map(len, wants.values()))
        if not asked:
            return True
        owned, region_of = self.owned, self._region
        new = 0
        for key in keys:
            region = region_of(key)
            if region not in owned and key not in wants.get(region, ()):
                new += 1
        return asked + new <= self.snapshot_budget

    def asked_at(self, session: Session, pending: list[str], tick: int) -> list[int]:
        before = self._asked.get(session.sid, {})
        now = {key: before.get(key, tick) for key in pending}
        if now:
            self._asked[session.sid] = now
        else:
            self._asked.pop(session.sid, None)
        return list(now.values())

    # -- after the frames --------------------------------------------------------------------

    async def after_frames(self, tick: int) -> None:
        for entry in self._arrivals:
            self._arrive(entry)
        self._arrivals = []
        world = self.world
        for doc, key, src_region, src_tick, resent, late in self._adopt:
            dest = self._region(key)
            if dest not in self.owned:
                continue
            oid = doc["_id"]
            ack = self._acks.setdefault(dest, [])
            # A resent handover of an object that came here and went on since is old news.
            released = self._released_recently.get(oid)
            old_news = released is not None and int(doc.get("v", 0)) <= released[1]
            if oid in world or (resent and old_news):
                ack.append((oid, key, src_region, src_tick))
                continue
            ep = doc.get("ep", 0)
            try:
                world.adopt(doc, announce=resent)
            except DocumentError as e:
                log.error("could not adopt object %r handed over into %s: %s", oid, key, e)
                continue
            # Above the source's: its last write of the object (`departed`) may land after
            # this process's first, and must then be fenced.
            self.object_epoch[oid] = int(ep) + 1
            self.departed.pop(oid, None)
            if late:
                # Its add came too late for this tick's frames, and a resync of its key
                # this tick could not show it yet: the next one does.
                self._owe_keys({key})
            self._adopted_n += 1
            ack.append((oid, key, src_region, src_tick))
        self._adopt = []
        if len(self._asked) > 10_000:
            live = {s.sid for s in self.sessions()}
            self._asked = {sid: keys for sid, keys in self._asked.items() if sid in live}
        wants, self._wants = self._wants, {}
        if wants:
            try:
                await self.backend.want(wants)
            except BusUnavailableError:
                self.bus_up = False

    def _arrive(self, entry: Entry) -> None:
        """A region handed to this process: its objects live here from the next tick."""
        region = entry.region
        assert entry.new_epoch is not None
        ep = 0
        self._unshown = set()
        for doc in self._unacknowledged_into(region, list(entry.migrated)):
            oid = doc["_id"]
            obj_ep = int(doc.get("ep", 0))
            ep = max(ep, obj_ep)
            if oid in self.world:
                continue
            self.world.adopt(doc, announce=oid in self._unshown)
            self.object_epoch[oid] = obj_ep
        self.owned[region] = entry.new_epoch
        # The lease was handed over with the entry, for a whole TTL from about now.
        self.valid_until[region] = self.clock() + 0.9 * self.lease_ttl_ms / 1000
        self.write_epoch[region] = max(entry.new_epoch, ep)
        self.holders[region] = Lease(self.node, entry.new_epoch)
        self._cursor.pop(region, None)
        self._queued.pop(region, None)
        self._late.discard(region)
        log.info(
            "region %s handed over by %s: %d objects, epoch %d",
            region,
            entry.node,
            len(entry.migrated),
            entry.new_epoch,
        )

    # -- statistics ----------------------------------------------------------------------

    def statistics(self) -> ClusterStatistics:
        """Counters since the start."""
        return ClusterStatistics(
            regions_owned=len(self.owned),
            regions_late=len(self._late),
            appends=self._appends,
            append_failures=self._append_failures,
            append_seconds=self._append_s,
            reads=self._reads,
            read_seconds=self._read_s,
            bytes_appended=self._bytes_out,
            bytes_read=self._bytes_in,
            resyncs_owed=self._owed,
            handovers_sent=self._sent,
            handovers_adopted=self._adopted_n,
            handovers_resent=self._resent,
            outbox=len(self._outbox),
            regions_lost=self._lost,
            gaps=self._gaps,
        )
