"""The world: every object by id and by key, and the turn of one tick's changes into batches.

Changes between ticks only record what changed. `World.commit` ends a tick: it
finds what moved and which cells were crossed for all objects at once (numpy
over the position columns), builds the per-object outcomes of docs/protocol.md for
the few objects that need them, bumps versions, and encodes one batch per
touched key.
"""

from __future__ import annotations

import base64
import itertools
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, overload

import numpy as np
import numpy.typing as npt

from synkworld._batch import BatchBuilder, Motion, TickBatches, encode_snapshot
from synkworld._batch_v2 import BatchBuilderV2, BothBuilders, V2Batches, state_array
from synkworld._cell_slots import CellSlots
from synkworld._columns import UNPUBLISHED, Columns, position_limit
from synkworld._errors import (
    DocumentError,
    DuplicateIdError,
    FieldError,
    UnknownObjectError,
    WorldError,
)
from synkworld._grid import Grid, GridMap, cell_order, key_problem, looks_like_grid_key
from synkworld._objects import Binding, SynkObject, object_type
from synkworld._wire_v2 import KeyCodes, packed, type_table

__all__ = ["Handover", "Ownership", "TickChanges", "World", "WorldStatistics"]

_CHANNEL_KEY_MAX = 128
# Document fields that are not the object's state: `ep` is the fencing epoch of
# the process that wrote it, when several processes share one map.
_RESERVED_FIELDS = frozenset(("_id", "t", "key", "v", "owner", "ep"))


_O = TypeVar("_O", bound=SynkObject)


@dataclass(frozen=True, slots=True)
class TickChanges:
    """What one tick changed: the encoded batches, and the ids a store must write.

    `changed_ids`, `deleted_ids` and `created_ids` name persisted objects only
    (not those of a type declared with ``persist=False``); `created_ids` are
    the new objects among `changed_ids`, whose first write must not overwrite
    a stored document.
    """

    tick: int
    batches: TickBatches
    changed_ids: list[str]
    deleted_ids: list[str]
    created_ids: list[str] = field(default_factory=list)
    outgoing: list[Handover] = field(default_factory=list)
    """Objects that entered keys another process owns: their `add` and their document."""
    released_ids: list[str] = field(default_factory=list)
    """The ids of `outgoing`, no longer in this world (nor to be written by it)."""
    batches_v2: V2Batches | None = None
    """Protocol v2's batches of the tick, encoded as frames ask; None while the world
    does not record them (`World.record_v2`)."""


@dataclass(frozen=True, slots=True)
class Handover:
    """An object leaving this world for a key another process owns (moved or created there).

    `entry` is its `add` for the destination key's batch (with ``from`` when it
    moved there from a key of this world); `document` is its full stored state.
    """

    id: str
    key: str
    entry: dict[str, Any]
    document: dict[str, Any]


class Ownership(Protocol):
    """Which keys a world's objects may stand under (several processes share one map)."""

    def owns(self, key: str) -> bool:
        """Tells whether this process owns the key (its objects live in this world)."""
        ...

    def can_enter(self, key: str) -> bool:
        """Tells whether an object may be handed over into a key owned elsewhere now."""
        ...


class Flusher(Protocol):
    """What makes a world's changes durable (its persistence)."""

    async def flush(self) -> None:
        """Returns when everything changed so far is durable."""

    async def flush_recent(self) -> None:
        """Returns when what changed since the last tick is durable."""


@dataclass(frozen=True, slots=True)
class WorldStatistics:
    """A snapshot of the world's size."""

    tick: int
    objects: int
    keys: int
    pending_changes: int


def _default_id_factory() -> Callable[[], str]:
    # 64 random bits per process (11 characters): over a million process starts
    # the chance that two share a prefix is about 3e-8. A collision with a
    # stored document is still caught by the store (an insert never overwrites).
    prefix = base64.urlsafe_b64encode(os.urandom(8)).rstrip(b"=").decode()
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter):x}"


class World:
    """Holds the objects of one or more maps and turns their changes into batches."""

    def __init__(
        self,
        grid: Grid | GridMap | Iterable[GridMap],
        *,
        id_factory: Callable[[], str] | None = None,
        initial_capacity: int = 1024,
    ) -> None:
        self.grid = grid if isinstance(grid, Grid) else Grid(grid)
        self.tick = 0
        self._new_id = id_factory or _default_id_factory()
        self._objects: dict[str, SynkObject] = {}
        self._by_key: dict[str, dict[str, SynkObject]] = {}
        self._cols = Columns(initial_capacity)
        # Changes since the last tick.
        self._dirty: dict[SynkObject, set[str]] = {}
        self._created: dict[str, SynkObject] = {}
        self._deleted: dict[str, str] = {}  # id -> the key clients know it under
        # Created objects that are not new to the store: loaded from it and
        # announced, or already reported by `take_uncommitted_ids`.
        self._from_store: set[str] = set()
        # Live objects of types declared with persist=False, and those deleted this tick.
        self._transient: set[str] = set()
        # With several processes on one map: which keys this world holds objects of.
        self.ownership: Ownership | None = None
        # Objects kept in their cell at a border while they cannot be handed over.
        self._pinned: set[SynkObject] = set()
        # Objects adopted since the last tick: the store writes them from here on.
        self._adopted: list[str] = []
        # Objects handed over by the last commit, until `settle_handovers`: (object, key).
        self._leaving: dict[str, tuple[SynkObject, str | None]] = {}
        # Handovers whose commit point (the bus) may or may not have passed: out of
        # the world, their slots kept, until `decide_handovers`.
        self._undecided: dict[str, tuple[SynkObject, str | None]] = {}
        self._snapshots: dict[str, bytes] = {}
        self._snapshots_v2: dict[str, bytes] = {}
        # Protocol v2: each object's slot in its key, and keys as v2 writes them.
        self._cell_slots = CellSlots()
        self._keycodes = KeyCodes(self.grid)
        self._deleted_slots: dict[str, int] = {}
        # Which encodings `commit` makes; the tick loop sets them from its sessions.
        self.encode_v1 = True
        self.record_v2 = False
        # Each key's `{"k":"<key>","mv":[[`, made once (BatchBuilder.mv_prefixes).
        self._mv_prefix: dict[str, bytes] = {}
        self._flushers: list[Flusher] = []

    # -- reading ---------------------------------------------------------------

    @overload
    def get(self, obj_id: str) -> SynkObject | None: ...

    @overload
    def get(self, obj_id: str, kind: type[_O]) -> _O: ...

    def get(self, obj_id: str, kind: type[_O] | None = None) -> SynkObject | None:
        """The object with that id, or None; with `kind`, an object of that type, or an error.

        `world.get("boat1", Boat)` is typed `Boat`, for handlers that name the
        type they expect: no id is `UnknownObjectError`, another type `TypeError`.
        """
        obj = self._objects.get(obj_id)
        if kind is None:
            return obj
        if obj is None:
            raise UnknownObjectError(f"no object {obj_id!r} in the world")
        if not isinstance(obj, kind):
            raise TypeError(f"object {obj_id!r} is a {type(obj).__name__}, not a {kind.__name__}")
        return obj

    def __getitem__(self, obj_id: str) -> SynkObject:
        try:
            return self._objects[obj_id]
        except KeyError:
            raise UnknownObjectError(f"no object {obj_id!r} in the world") from None

    def __contains__(self, obj_id: object) -> bool:
        return obj_id in self._objects

    def __len__(self) -> int:
        return len(self._objects)

    def __iter__(self) -> Iterator[SynkObject]:
        return iter(list(self._objects.values()))

    @property
    def key_codes(self) -> KeyCodes:
        """Keys as protocol v2 writes them (kept per world)."""
        return self._keycodes

    def published_key(self, obj: SynkObject) -> str | None:
        """The key subscribers see the object under (None before its first tick).

        It differs from `obj.key` while the object waits at a border (pinned to
        its old key) and between a move and the next tick.
        """
        binding = obj._binding
        if binding is None or obj.world is not self:
            return None
        if binding.channel is None and self._cols.code[binding.slot] == UNPUBLISHED:
            return None
        return self._published_key(obj)

    def objects_under(self, key: str) -> list[SynkObject]:
        """The objects under a key as of the last tick (what its subscribers hold)."""
        return list(self._by_key.get(key, {}).values())

    def keys(self) -> list[str]:
        """Every key that holds at least one object as of the last tick."""
        return list(self._by_key)

    def statistics(self) -> WorldStatistics:
        """Sizes of the world now."""
        pending = len(self._dirty) + len(self._created) + len(self._deleted)
        return WorldStatistics(self.tick, len(self._objects), len(self._by_key), pending)

    # -- changing ----------------------------------------------------------------

    def create(self, obj: SynkObject, *, map: str | None = None, key: str | None = None) -> Any:
        """Puts a new object in the world; returns it.

        A positioned object goes on `map` (the first map by default); a channel
        object needs its `key`. It reaches clients at the next tick.
        """
        if obj._binding is not None:
            raise WorldError(f"object {obj.id!r} is already in a world")
        cls = type(obj)
        pos = cls.synk_position
        gmap: GridMap | None = None
        if pos is not None:
            if key is not None:
                raise WorldError(f"{cls.synk_type} objects are positioned; their key is their cell")
            gmap = self.grid.map(map) if map is not None else self.grid.default_map
            if gmap.pos_fields != pos:
                raise WorldError(
                    f"map {gmap.name!r} places objects by {gmap.pos_fields}, "
                    f"but {cls.synk_type} declares position {pos}"
                )
        else:
            if key is None:
                raise WorldError(f"{cls.synk_type} objects have no position; give a channel key")
            _check_channel_key(key)
        if not obj.id:
            obj.id = self._new_id()
        oid = obj.id
        if oid in self._objects:
            raise DuplicateIdError(f"an object {oid!r} is already in the world")
        if oid in self._deleted:
            raise DuplicateIdError(f"object {oid!r} was deleted in this tick; reuse its id later")

        cols = self._cols
        limit = 0.0
        if gmap is not None and pos is not None:
            x, y = obj._values[pos[0]], obj._values[pos[1]]
            limit = position_limit(gmap.cell_size, gmap.origin)
            if abs(x) > limit or abs(y) > limit:
                raise FieldError(
                    f"position ({x}, {y}) is outside the range map {gmap.name!r} indexes"
                )
        slot = cols.alloc(oid)
        if gmap is not None and pos is not None:
            cols.pos[0][slot] = x
            cols.pos[1][slot] = y
            cols.map_index[slot] = gmap.index
            cols.scale[slot] = 10.0**gmap.precision
            cols.limit[slot] = limit
        cols.ver[slot] = max(obj.version, 0)
        obj._bind(Binding(self, cols, slot, gmap, key if gmap is None else None))
        self._objects[oid] = obj
        self._created[oid] = obj
        if not cls.synk_persist:
            self._transient.add(oid)
        return obj

    def delete(self, obj: SynkObject | str) -> None:
        """Removes an object from the world; its subscribers see it go at the next tick."""
        target = self._objects.get(obj) if isinstance(obj, str) else obj
        if target is None or target.world is not self:
            raise UnknownObjectError(
                f"no object {obj if isinstance(obj, str) else obj.id!r} in the world"
            )
        oid = target.id
        if self._created.pop(oid, None) is None:
            key = self._deleted[oid] = self._published_key(target)
            slot = self._exit(key, target)
            if slot is not None:
                self._deleted_slots[oid] = slot
        self._dirty.pop(target, None)
        del self._objects[oid]
        self._detach(target)

    def move(self, obj: SynkObject, x: float, y: float) -> None:
        """Sets both position fields of a positioned object."""
        pos = type(obj).synk_position
        if pos is None:
            raise WorldError(f"{obj.synk_type} objects have no position")
        setattr(obj, pos[0], x)
        setattr(obj, pos[1], y)

    # -- bulk motion -------------------------------------------------------------------

    def slots(self, objs: Iterable[SynkObject]) -> npt.NDArray[np.int64]:
        """The column slots of positioned objects, for `positions` and `set_positions`.

        A slot stays the same for as long as its object is in the world.
        """
        out = []
        for o in objs:
            b = o._binding
            if b is None or b.host is not self or b.map is None:
                raise WorldError(f"object {o.id!r} is not a positioned object of this world")
            out.append(b.slot)
        return np.asarray(out, dtype=np.int64)

    def positions(
        self, slots: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """The current positions of the objects in `slots` (copies)."""
        cols = self._cols
        return cols.pos[0][slots], cols.pos[1][slots]

    def set_positions(
        self,
        slots: npt.NDArray[np.int64],
        xs: npt.NDArray[np.float64],
        ys: npt.NDArray[np.float64],
    ) -> None:
        """Moves many objects at once; what moved is found at the tick, vectorised."""
        cols = self._cols
        xs = np.asarray(xs, dtype=np.float64)
        ys = np.asarray(ys, dtype=np.float64)
        if xs.shape != slots.shape or ys.shape != slots.shape:
            raise ValueError("slots, xs and ys must have the same shape")
        lim = cols.limit[slots]
        ok = np.isfinite(xs) & np.isfinite(ys) & (np.abs(xs) <= lim) & (np.abs(ys) <= lim)
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            raise FieldError(
                f"position ({xs[bad]}, {ys[bad]}) of object {cols.ids[slots[bad]]!r} "
                "is not finite or outside the range its map indexes"
            )
        cols.pos[0][slots] = xs
        cols.pos[1][slots] = ys

    # -- the tick ------------------------------------------------------------------------

    def commit(self, tick: int | None = None) -> TickChanges:
        """Ends a tick: turns every change since the last one into encoded batches.

        `tick` is the tick's number when several processes share one clock
        (default: one more than the last). With an `ownership`, objects that
        enter keys owned elsewhere leave this world (`TickChanges.outgoing`),
        or wait at the border while they cannot (`Ownership.can_enter`).
        """
        tick = self.tick + 1 if tick is None else tick
        if self._leaving:
            self.settle_handovers()
        cols = self._cols
        grid = self.grid
        v1 = self._batch_builder(tick) if self.encode_v1 or not self.record_v2 else None
        v2 = (
            BatchBuilderV2(tick, self._keycodes, self._type_of, self._cell_slots.counts)
            if self.record_v2
            else None
        )
        out: _Builder = v2 if v1 is None else v1 if v2 is None else BothBuilders(v1, v2)  # type: ignore[assignment]
        changed_ids: list[str] = []

        # 1. Motion of every published positioned object, found by array comparison.
        top = cols.top
        xs, ys = cols.pos[0][:top], cols.pos[1][:top]
        moved_mask = cols.tracked[:top] & ((xs != cols.prev[0][:top]) | (ys != cols.prev[1][:top]))
        pinned = self._pinned
        if pinned:
            # Waiting at a border: tried again every tick, moved or not.
            self._pinned = set()
            live = [o._binding.slot for o in pinned if o._binding is not None]
            moved_mask[live] = True
        moved = np.flatnonzero(moved_mask)
        new_codes = grid.codes_of(cols.map_index[moved], xs[moved], ys[moved])
        crossed = new_codes != cols.code[moved]
        plain_mask = ~crossed
        dirty = self._dirty
        if dirty:
            special = np.zeros(top, dtype=bool)
            special[[o._binding.slot for o in dirty]] = True  # type: ignore[union-attr]
            plain_mask &= ~special[moved]
        plain = moved[plain_mask]
        plain_codes = new_codes[plain_mask]
        # Objects that crossed a cell and have no other change also go the per-object way.
        crossed_ids = cols.ids[moved[crossed]].tolist()

        # 2. Deletions: a `rem` under the key clients know the object by.
        deleted_slots = self._deleted_slots
        for oid, key in self._deleted.items():
            out.rem(key, oid, slot=deleted_slots.get(oid, -1))
        deleted_ids = list(self._deleted)

        # 3. Creations: an `add` with the full state, version 1.
        own = self.ownership
        outgoing: list[Handover] = []
        released: list[SynkObject] = []
        held_back: dict[str, SynkObject] = {}
        for oid, obj in self._created.items():
            slot = obj._binding.slot  # type: ignore[union-attr]
            if cols.ver[slot] <= 0:
                cols.ver[slot] = 1
            if own is not None:
                key = self._key_now(obj)
                if not own.owns(key):
                    if own.can_enter(key):
                        outgoing.append(self._handover(obj, key, None))
                        released.append(obj)
                    else:
                        held_back[oid] = obj  # created in a key nobody can take yet
                    continue
            key = self._publish(obj)
            out.add(
                key,
                oid,
                obj.synk_type,
                int(cols.ver[slot]),
                obj.wire_state(),
                slot=int(cols.cell_slot[slot]),
            )
            changed_ids.append(oid)

        # 4. Objects with changed fields, and objects that crossed into another cell.
        per_object: list[tuple[SynkObject, set[str]]] = [
            (o, names) for o, names in dirty.items() if o.id not in self._created
        ]
        for oid in crossed_ids:
            obj = self._objects[oid]
            if obj not in dirty:
                per_object.append((obj, set()))
        if per_object:
            self._per_object(
                out, per_object, moved_mask, moved, new_codes, changed_ids, outgoing, released
            )

        created_ids = [
            oid for oid in self._created if oid not in self._from_store and oid not in held_back
        ]
        if self._adopted:
            changed_ids.extend(self._adopted)
            self._adopted = []
        released_ids = [o.id for o in released]
        if released:
            # Before the plain motion's ids go in: those stayed in their cell, so none
            # left, and they are most of a tick's ids.
            gone = set(released_ids)
            changed_ids = [i for i in changed_ids if i not in gone]
            created_ids = [i for i in created_ids if i not in gone]

        # 5. Plain motion inside a cell: the compact `mv` arrays, one group per cell.
        if len(plain):
            self._plain_motion(out, plain, plain_codes)
            changed_ids.extend(cols.ids[plain].tolist())
        for obj in released:
            self._leave(obj)
        if self._transient:
            changed_ids, deleted_ids, created_ids = self._persisted(
                changed_ids, deleted_ids, created_ids
            )
        self._dirty = {}
        self._created = held_back
        self._deleted = {}
        self._deleted_slots = {}
        self._from_store = set()
        batches = v1.encode() if v1 is not None else TickBatches(tick, {})
        batches_v2 = v2.finish() if v2 is not None else None
        forget = self._forget_snapshots
        for key in batches.data:
            forget(key)
        if batches_v2 is not None:
            for key in batches_v2.touched:
                forget(key)
        self.tick = tick
        return TickChanges(
            tick,
            batches,
            changed_ids,
            deleted_ids,
            created_ids,
            outgoing,
            released_ids,
            batches_v2,
        )

    def _type_of(self, obj_id: str) -> str:
        return self._objects[obj_id].synk_type

    def _key_now(self, obj: SynkObject) -> str:
        """The key an object stands under by its position now (not as published)."""
        binding = obj._binding
        assert binding is not None
        if binding.channel is not None:
            return binding.channel
        slot = binding.slot
        cols = self._cols
        assert binding.map is not None
        return binding.map.key_of(float(cols.pos[0][slot]), float(cols.pos[1][slot]))

    def _handover(self, obj: SynkObject, key: str, moved_from: str | None) -> Handover:
        """The `add` and the document of an object entering `key`, owned elsewhere."""
        version = obj.version or 1
        entry: dict[str, Any] = {
            "id": obj.id,
            "t": obj.synk_type,
            "v": version,
            "s": obj.wire_state(),
        }
        if moved_from is not None:
            entry["from"] = moved_from
        doc = self.document(obj)
        doc["key"] = key
        doc["v"] = version
        return Handover(obj.id, key, entry, doc)

    def _leave(self, obj: SynkObject) -> None:
        """Takes a handed-over object out of its key and lookups; its slot stays until settled."""
        self._leaving[obj.id] = (obj, self._unlist(obj))

    def _unlist(self, obj: SynkObject) -> str | None:
        """Takes an object out of its key and the lookups; returns the key it stood under."""
        binding = obj._binding
        assert binding is not None
        key: str | None = None
        if binding.channel is not None or self._cols.code[binding.slot] != UNPUBLISHED:
            key = self._published_key(obj)
            self._exit(key, obj)
        self._objects.pop(obj.id, None)
        self._dirty.pop(obj, None)
        return key

    def settle_handovers(
        self, failed: Collection[str] = (), undecided: Collection[str] = ()
    ) -> list[SynkObject]:
        """Ends the handovers of the last commit: gone for good, or back where they were.

        The commit point of a handover is the bus carrying it. Those whose
        entry could not be appended (ids in `failed`) come back: an object
        that moved waits in its old key at the border (tried again every
        tick); one created in a foreign key waits unpublished. Those whose
        append's outcome is unknown (`undecided`) stay out of the world until
        `decide_handovers`. Returns those that came back. The next commit
        settles what is left as gone.
        """
        leaving, self._leaving = self._leaving, {}
        restored: list[SynkObject] = []
        for oid, (obj, key) in leaving.items():
            if oid in undecided:
                self._undecided[oid] = (obj, key)
            elif oid in failed:
                self._come_back(obj, key)
                restored.append(obj)
            else:
                self._transient.discard(oid)
                self._detach(obj)
        return restored

    def decide_handovers(self, ids: Collection[str], *, landed: bool) -> list[SynkObject]:
        """Ends undecided handovers: gone (their entry `landed`) or back at the border."""
        restored: list[SynkObject] = []
        for oid in ids:
            held = self._undecided.pop(oid, None)
            if held is None:
                continue
            obj, key = held
            if landed:
                self._transient.discard(oid)
                self._detach(obj)
            else:
                self._come_back(obj, key)
                restored.append(obj)
        return restored

    def _come_back(self, obj: SynkObject, key: str | None) -> None:
        oid = obj.id
        self._objects[oid] = obj
        if key is None:
            self._created[oid] = obj
        else:
            self._enter(key, obj)
            self._forget_snapshots(key)
            self._pinned.add(obj)

    def _release(self, obj: SynkObject) -> None:
        """Takes an object out of this world without a `rem` (it lives on elsewhere)."""
        self._unlist(obj)
        self._transient.discard(obj.id)
        self._detach(obj)

    def _persisted(
        self, changed: list[str], deleted: list[str], created: list[str]
    ) -> tuple[list[str], list[str], list[str]]:
        """The ids of a tick without those of transient objects (which a store never sees)."""
        transient = self._transient
        kept = (
            [i for i in changed if i not in transient],
            [i for i in deleted if i not in transient],
            [i for i in created if i not in transient],
        )
        transient.difference_update(deleted)
        return kept

    def _batch_builder(self, tick: int) -> BatchBuilder:
        """What turns this tick's outcomes into batches: protocol v1's encoder.

        A subclass may return another builder with the same methods (the
        bench's naive baseline keeps messages instead of bytes).
        """
        return BatchBuilder(tick, self._mv_prefix)

    def _per_object(
        self,
        out: _Builder,
        per_object: list[tuple[SynkObject, set[str]]],
        moved_mask: npt.NDArray[np.bool_],
        moved: npt.NDArray[np.int64],
        new_codes: npt.NDArray[np.int64],
        changed_ids: list[str],
        outgoing: list[Handover],
        released: list[SynkObject],
    ) -> None:
        """A `mod` for each object (and an `add` where it crossed into another cell)."""
        cols = self._cols
        # The columns are read and written for all of them at once: numpy's
        # per-element access costs more than the rest of an object's outcome.
        # (Every live object's slot is below `top`, the length of `moved_mask`.)
        slots = np.fromiter(
            (o._binding.slot for o, _ in per_object),  # type: ignore[union-attr]
            dtype=np.int64,
            count=len(per_object),
        )
        did_move = moved_mask[slots]
        code_after = np.zeros(len(moved_mask), dtype=np.int64)
        code_after[moved] = new_codes
        old_codes = cols.code[slots]
        codes = np.where(did_move, code_after[slots], old_codes)
        # A pinned object that did not move since: nothing to say, unless it can go now.
        unmoved = (cols.pos[0][slots] == cols.prev[0][slots]) & (
            cols.pos[1][slots] == cols.prev[1][slots]
        )
        versions = cols.ver[slots] + 1
        cols.ver[slots] = versions
        # Each one's slot in the key clients know it under (protocol v2).
        cell_slots = cols.cell_slot[slots].tolist()
        went = slots[did_move]
        cols.prev[0][went] = cols.pos[0][went]
        cols.prev[1][went] = cols.pos[1][went]
        cols.code[went] = codes[did_move]
        key_for_code = self.grid.key_for_code
        own = self.ownership
        rows = zip(
            per_object,
            did_move.tolist(),
            cols.pos[0][slots].tolist(),
            cols.pos[1][slots].tolist(),
            old_codes.tolist(),
            codes.tolist(),
            versions.tolist(),
            unmoved.tolist(),
            cell_slots,
            strict=True,
        )
        for (obj, names), obj_moved, x, y, old_code, code, ver, still, cs in rows:
            t = obj.synk_type
            values = obj._values
            diff = {n: values[n] for n in names}
            binding = obj._binding
            assert binding is not None
            channel = binding.channel
            old_key = channel if channel is not None else key_for_code(old_code)
            gmap = binding.map
            if gmap is None or not obj_moved:
                out.mod(old_key, obj.id, ver, diff, slot=cs, type_key=t)
                changed_ids.append(obj.id)
                continue
            px, py = gmap.pos_fields
            rx, ry = gmap.round_pos(x), gmap.round_pos(y)
            diff[px] = rx
            diff[py] = ry
            if code == old_code:
                out.mod(old_key, obj.id, ver, diff, slot=cs, type_key=t)
                changed_ids.append(obj.id)
                continue
            new_key = key_for_code(code)
            if own is not None and not own.owns(new_key):
                slot = binding.slot
                if not own.can_enter(new_key):
                    # Waits in its cell at the border, its position beyond it.
                    cols.code[slot] = old_code
                    self._pinned.add(obj)
                    if still and not names:
                        cols.ver[slot] = ver - 1
                        continue
                    out.mod(old_key, obj.id, ver, diff, slot=cs, type_key=t)
                    changed_ids.append(obj.id)
                    continue
                out.mod(old_key, obj.id, ver, diff, moved_to=new_key, slot=cs, type_key=t)
                outgoing.append(self._handover(obj, new_key, old_key))
                # Still published under its old key until it is released.
                cols.code[slot] = old_code
                released.append(obj)
                continue
            self._rekey(obj, old_key, new_key)
            out.mod(old_key, obj.id, ver, diff, moved_to=new_key, slot=cs, type_key=t)
            # The full state, as `wire_state` writes it.
            state = {**values, px: rx, py: ry}
            out.add(
                new_key,
                obj.id,
                t,
                ver,
                state,
                moved_from=old_key,
                slot=int(cols.cell_slot[binding.slot]),
            )
            changed_ids.append(obj.id)

    def _plain_motion(
        self,
        out: _Builder,
        slots: npt.NDArray[np.int64],
        codes: npt.NDArray[np.int64],
    ) -> None:
        cols = self._cols
        cols.ver[slots] += 1
        order = cell_order(codes)
        slots = slots[order]
        codes = codes[order]
        xs = cols.pos[0][slots]
        ys = cols.pos[1][slots]
        scale = cols.scale[slots]
        prev_rx = prev_ry = None
        if self.record_v2:
            # What clients hold: v2 sends the change of these rounded positions.
            prev_rx = np.rint(cols.prev[0][slots] * scale)
            prev_ry = np.rint(cols.prev[1][slots] * scale)
        cols.prev[0][slots] = xs
        cols.prev[1][slots] = ys
        # np.rint(v * s) / s is what `GridMap.round_pos` computes for one value.
        rx = np.rint(xs * scale)
        ry = np.rint(ys * scale)
        firsts = np.flatnonzero(np.diff(codes, prepend=-1))
        counts = np.diff(firsts, append=len(codes))
        group_codes = codes[firsts]
        maps = self.grid.maps
        out.motion(
            Motion(
                keys=self.grid.keys_for_codes(group_codes.tolist()),
                counts=counts,
                map_of=group_codes >> 48,
                precisions={m.index: m.precision for m in maps.values()},
                slots=slots,
                rx=rx,
                ry=ry,
                scale=scale,
                cols=cols,
                prev_rx=prev_rx,
                prev_ry=prev_ry,
                codes=group_codes,
            )
        )

    # -- snapshots -----------------------------------------------------------------------

    def snapshot(self, key: str) -> bytes:
        """The encoded snapshot of a key as of the last tick; encoded once until the key changes."""
        data = self._snapshots.get(key)
        if data is None:
            data = encode_snapshot(self.snapshot_message(key))
            # Only keys that hold objects are kept: clients choose the keys they
            # ask for, and an empty one's snapshot costs next to nothing anyway.
            if key in self._by_key:
                self._snapshots[key] = data
        return data

    def snapshot_v2(self, key: str) -> bytes:
        """The protocol v2 snapshot of a key as of the last tick; encoded once until it changes.

        Positions are those last published (the columns' `prev`): the next
        batch's motion deltas start from them.
        """
        data = self._snapshots_v2.get(key)
        if data is not None:
            return data
        code = self._keycodes.binary(key)
        members = self._by_key.get(key)
        if not members:
            return code + packed([])
        table = type_table()
        cols = self._cols
        objs = sorted(members.values(), key=_by_id)
        slots = [o._binding.slot for o in objs]  # type: ignore[union-attr]
        versions = cols.ver.take(slots).tolist()
        cell_slots = cols.cell_slot.take(slots).tolist()
        number = table.number
        names = table.names
        positions = table.positions
        gmap = objs[0]._binding.map  # type: ignore[union-attr]
        if gmap is None:
            entries = [
                [cs, o.id, number[o.synk_type], v, state_array(table, o.synk_type, o._values, 1.0)]
                for o, v, cs in zip(objs, versions, cell_slots, strict=True)
            ]
        else:
            # The positions last published, as the integers v2 sends.
            scales = cols.scale.take(slots)
            xs = np.rint(cols.prev[0].take(slots) * scales).astype(np.int64).tolist()
            ys = np.rint(cols.prev[1].take(slots) * scales).astype(np.int64).tolist()
            entries = []
            for o, v, cs, x, y in zip(objs, versions, cell_slots, xs, ys, strict=True):
                t = o.synk_type
                values = o._values
                state = [values.get(n) for n in names[t]]
                ix, iy = positions[t]  # type: ignore[misc]
                state[ix] = x
                state[iy] = y
                entries.append([cs, o.id, number[t], v, state])
        data = code + packed(entries)
        self._snapshots_v2[key] = data
        return data

    def snapshot_message(self, key: str) -> dict[str, Any]:
        """The snapshot of a key as of the last tick, not encoded."""
        members = self._by_key.get(key)
        if not members:
            return {"k": key, "objs": []}
        # In id order: every process that mirrors the key writes the same bytes.
        objs = sorted(members.values(), key=_by_id)
        cols = self._cols
        bindings = [o._binding for o in objs]
        slots = [b.slot for b in bindings]  # type: ignore[union-attr]
        versions = cols.ver.take(slots).tolist()
        gmap = bindings[0].map  # type: ignore[union-attr]
        if gmap is None:
            entries = [
                {"id": o.id, "t": o.synk_type, "v": v, "s": o.wire_state()}
                for o, v in zip(objs, versions, strict=True)
            ]
        else:
            # Every object of a cell stands on its map, whose fields name its position.
            px, py = gmap.pos_fields
            scale = 10.0**gmap.precision
            xs = cols.pos[0].take(slots).tolist()
            ys = cols.pos[1].take(slots).tolist()
            entries = [
                {
                    "id": o.id,
                    "t": o.synk_type,
                    "v": v,
                    # What `GridMap.round_pos` computes, inlined.
                    "s": {**o._values, px: round(x * scale) / scale, py: round(y * scale) / scale},
                }
                for o, v, x, y in zip(objs, versions, xs, ys, strict=True)
            ]
        return {"k": key, "objs": entries}

    # -- documents -----------------------------------------------------------------------

    def document(self, obj: SynkObject) -> dict[str, Any]:
        """The object as a stored document: ``{_id, t, key, v, ...state}``."""
        # A created object not yet through a tick is version 1 once it is.
        version = obj.version or 1
        doc: dict[str, Any] = {"_id": obj.id, "t": obj.synk_type, "key": obj.key, "v": version}
        doc.update(obj.state())
        return doc

    def documents(self, ids: Collection[str]) -> dict[str, dict[str, Any] | None]:
        """The current document of each id, None for ids no longer in the world."""
        get = self._objects.get
        out: dict[str, dict[str, Any] | None] = {}
        for oid in ids:
            obj = get(oid)
            out[oid] = None if obj is None else self.document(obj)
        return out

    def load(self, doc: Mapping[str, Any], *, announce: bool = False) -> SynkObject:
        """Puts an object back from its stored document, with its version and key.

        A loaded object is already durable and, at start-up, seen by nobody, so
        by default it is published at once: no batch, no write. With `announce`
        it reaches subscribers at the next tick like a created object.
        """
        oid = doc.get("_id")
        if not isinstance(oid, str) or not oid:
            raise DocumentError(f"document {oid!r}: _id must be a non-empty str", doc_id=oid)
        type_key = doc.get("t")
        try:
            cls = object_type(type_key) if isinstance(type_key, str) else None
        except KeyError:
            cls = None
        if cls is None:
            raise DocumentError(f"document {oid!r}: unknown type {type_key!r}", doc_id=oid)
        version = doc.get("v", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise DocumentError(f"document {oid!r}: v must be a positive int", doc_id=oid)
        key = doc.get("key")
        state = {k: v for k, v in doc.items() if k not in _RESERVED_FIELDS}
        obj = cls.from_state(oid, state, version=version)
        map_name: str | None = None
        channel: str | None = None
        if cls.synk_position is None:
            if not isinstance(key, str):
                raise DocumentError(f"document {oid!r}: a channel object needs its key", doc_id=oid)
            channel = key
        elif isinstance(key, str):
            parsed = self.grid.parse_key(key)
            map_name = parsed[0].name if parsed else None
        self.create(obj, map=map_name, key=channel)
        if not announce:
            del self._created[oid]
            self._publish(obj)
        else:
            self._from_store.add(oid)
        return obj

    # -- several processes on one map ----------------------------------------------------------

    def adopt(self, doc: Mapping[str, Any], *, announce: bool = False) -> SynkObject | None:
        """Takes in an object handed over by another process, published at once, unannounced.

        Its `add` went to the clients already, in the other process's batches
        (with `announce`, it goes to them at the next tick, as a creation's).
        The store writes it from this world from the next tick on. Adopting an
        id this world holds already changes nothing (adoption is idempotent);
        returns the object, or None then.
        """
        oid = doc.get("_id")
        if isinstance(oid, str) and oid in self._objects:
            return None
        obj = self.load(doc, announce=announce)
        self._adopted.append(obj.id)
        key = obj.key
        if key is not None:
            self._forget_snapshots(key)
        return obj

    def release(self, objs: Iterable[SynkObject]) -> list[dict[str, Any]]:
        """Takes objects out of this world without a `rem`; returns their documents.

        For a region that migrates to another process, which adopts them: its
        clients see nothing. Changes made since the last tick are in the
        documents (call it right after a tick for them to be in the batches too).
        """
        docs = []
        for obj in list(objs):
            if obj.world is not self:
                raise UnknownObjectError(f"no object {obj.id!r} in the world")
            doc = self.document(obj)
            published = obj.id not in self._created
            key = self._published_key(obj) if published else None
            docs.append(doc)
            self._created.pop(obj.id, None)
            if key is not None:
                self._forget_snapshots(key)
            self._release(obj)
        return docs

    # -- durability --------------------------------------------------------------------------

    def add_flusher(self, flusher: Flusher) -> None:
        """Registers what `flush` and `flush_recent` wait for (the persistence)."""
        self._flushers.append(flusher)

    async def flush(self) -> None:
        """Returns when everything changed so far is durable (at once without a store)."""
        for flusher in self._flushers:
            await flusher.flush()

    async def flush_recent(self) -> None:
        """Returns when what changed since the last tick is durable (at once without a store).

        Cheaper than `flush` when much is pending from earlier ticks (a world
        written once a second): those changes are not waited for.
        """
        for flusher in self._flushers:
            await flusher.flush_recent()

    def take_uncommitted_ids(self) -> tuple[list[str], list[str], list[str]]:
        """The persisted ids changed, deleted and created since the last tick.

        For a flush before the tick: the created ids are reported once, here,
        and the tick then reports them as changed only (the store was told to
        insert them already).
        """
        changed = {o.id for o in self._dirty}
        changed.update(self._created)
        cols = self._cols
        top = cols.top
        moved = cols.tracked[:top] & (
            (cols.pos[0][:top] != cols.prev[0][:top]) | (cols.pos[1][:top] != cols.prev[1][:top])
        )
        changed.update(cols.ids[:top][moved].tolist())
        created = {oid for oid in self._created if oid not in self._from_store}
        self._from_store.update(created)
        transient = self._transient
        return (
            sorted(changed - transient),
            sorted(oid for oid in self._deleted if oid not in transient),
            sorted(created - transient),
        )

    # -- internals -------------------------------------------------------------------------

    def field_changed(self, obj: SynkObject, name: str) -> None:
        """Records that a field of `obj` changed (objects call it; see `SynkObject.touch`)."""
        names = self._dirty.get(obj)
        if names is None:
            self._dirty[obj] = {name}
        else:
            names.add(name)

    def changed_fields(self, obj: SynkObject) -> list[str]:
        """The fields of `obj` changed since the last tick (`SynkObject.diff` asks)."""
        names = set(self._dirty.get(obj, ()))
        pos = type(obj).synk_position
        cols = self._cols
        slot = obj._binding.slot  # type: ignore[union-attr]
        if (
            pos is not None
            and cols.tracked[slot]
            and (cols.pos[0][slot] != cols.prev[0][slot] or cols.pos[1][slot] != cols.prev[1][slot])
        ):
            names.update(pos)
        return sorted(names)

    def _published_key(self, obj: SynkObject) -> str:
        binding = obj._binding
        assert binding is not None
        if binding.channel is not None:
            return binding.channel
        return self.grid.key_for_code(int(self._cols.code[binding.slot]))

    def _publish(self, obj: SynkObject) -> str:
        cols = self._cols
        binding = obj._binding
        assert binding is not None
        slot = binding.slot
        gmap = binding.map
        if gmap is not None:
            x, y = float(cols.pos[0][slot]), float(cols.pos[1][slot])
            cols.code[slot] = self.grid.code_of(gmap, x, y)
            cols.prev[0][slot] = x
            cols.prev[1][slot] = y
            cols.tracked[slot] = True
        key = self._published_key(obj)
        self._enter(key, obj)
        return key

    def _rekey(self, obj: SynkObject, old_key: str, new_key: str) -> None:
        self._exit(old_key, obj)
        self._enter(new_key, obj)

    def _enter(self, key: str, obj: SynkObject) -> None:
        """Lists an object under a key, in the smallest free slot of the key."""
        members = self._by_key.get(key)
        if members is None:
            members = self._by_key[key] = {}
        elif obj.id in members:
            return
        members[obj.id] = obj
        self._cols.cell_slot[obj._binding.slot] = self._cell_slots.take(key)  # type: ignore[union-attr]

    def _exit(self, key: str, obj: SynkObject) -> int | None:
        """Takes an object out of a key's list; returns the slot it gives back, if listed."""
        members = self._by_key.get(key)
        if members is None or members.get(obj.id) is not obj:
            return None
        del members[obj.id]
        if not members:
            del self._by_key[key]
        cols = self._cols
        col = obj._binding.slot  # type: ignore[union-attr]
        slot = int(cols.cell_slot[col])
        cols.cell_slot[col] = -1
        self._cell_slots.give(key, slot)
        return slot

    def _forget_snapshots(self, key: str) -> None:
        self._snapshots.pop(key, None)
        self._snapshots_v2.pop(key, None)

    def _detach(self, obj: SynkObject) -> None:
        binding = obj._binding
        assert binding is not None
        slot = binding.slot
        obj._unbind()
        self._cols.free(slot)


_Builder = BatchBuilder | BatchBuilderV2 | BothBuilders


def _by_id(obj: SynkObject) -> str:
    return obj.id


def _check_channel_key(key: str) -> None:
    if not isinstance(key, str) or not key or len(key) > _CHANNEL_KEY_MAX:
        raise WorldError(f"a channel key must be a str of 1-{_CHANNEL_KEY_MAX} characters")
    if looks_like_grid_key(key):
        raise WorldError(f"channel key {key!r} looks like a grid key")
    problem = key_problem(key)
    if problem is not None:
        raise WorldError(f"channel {problem}")
