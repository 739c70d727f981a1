"""Protocol v2's batches: one tick's outcomes per key, encoded only for the keys v2 clients hold.

The world records the same outcomes it gives protocol v1's `BatchBuilder`
(with each object's slot in its cell); nothing is encoded then. When the
frames of the tick are built, `V2Batches.prepare` encodes the batches of the
keys that version 2 sessions hold, each once, the motion of all of them in one
numpy pass: slot, zigzag dx, zigzag dy varints (docs/protocol-v2.md).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from synkworld._batch import Motion
from synkworld._grid import _AXIS_BITS, _AXIS_MASK, _BIAS
from synkworld._wire_v2 import (
    BATCH_DENSE,
    BATCH_ENTRIES,
    BATCH_HEAD_SHIFT,
    BATCH_LEAVE,
    BATCH_REM,
    KeyCodes,
    TypeTable,
    packed,
    type_table,
    varint,
)

__all__ = ["BatchBuilderV2", "V2Batches", "encode_varints", "state_array"]

_JUMP = 2**31  # a motion delta this large or larger goes as a mod with both positions


@dataclass(slots=True)
class _Parts:
    rem: list[int] = field(default_factory=list)
    leave: list[tuple[int, str]] = field(default_factory=list)
    add: list[tuple[int, str, str, int, dict[str, Any]]] = field(default_factory=list)
    mod: list[tuple[int, int, str, dict[str, Any]]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Motion:
    keys: list[str]
    counts: npt.NDArray[np.int64]
    slots: npt.NDArray[np.int64]
    dx: npt.NDArray[np.int64]
    dy: npt.NDArray[np.int64]
    dense: npt.NDArray[np.bool_]  # each group's motion is all its cell's other objects'
    codes: npt.NDArray[np.int64]  # each group's cell code


def encode_varints(values: npt.NDArray[np.uint64]) -> tuple[bytes, npt.NDArray[np.int64]]:
    """Every value as a LEB128 varint, concatenated; and each value's length in bytes."""
    n = len(values)
    if n == 0:
        return b"", np.zeros(0, dtype=np.int64)
    big = np.flatnonzero(values >= np.uint64(128))
    if not len(big):  # the common case: every value one byte
        return values.astype(np.uint8).tobytes(), np.ones(n, dtype=np.int64)
    # Only the few values of two bytes or more take the slower path.
    rest = values[big]
    big_lengths = np.full(len(rest), 2, dtype=np.int64)
    for bits in range(14, 64, 7):
        more = rest >= np.uint64(1 << bits)
        if not more.any():
            break
        big_lengths += more
    lengths = np.ones(n, dtype=np.int64)
    lengths[big] = big_lengths
    ends = np.cumsum(lengths)
    starts = ends - lengths
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    out[starts] = (values & np.uint64(0x7F)).astype(np.uint8)
    big_starts = starts[big]
    out[big_starts] |= np.uint8(0x80)
    rest = rest >> np.uint64(7)
    for j in range(1, int(big_lengths.max())):
        at = big_lengths > j
        byte = (rest[at] & np.uint64(0x7F)).astype(np.uint8)
        byte |= (big_lengths[at] > j + 1).astype(np.uint8) << np.uint8(7)
        out[big_starts[at] + j] = byte
        rest = rest >> np.uint64(7)
    return out.tobytes(), lengths


def _zigzag(d: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    return ((d << 1) ^ (d >> 63)).view(np.uint64)


def state_array(
    table: TypeTable, type_key: str, state: Mapping[str, Any], scale: float
) -> list[Any]:
    """An object's state as v2 writes it: values in field order, positions as integers."""
    arr: list[Any] = [state.get(name) for name in table.names[type_key]]
    at = table.positions[type_key]
    if at is not None:
        ix, iy = at
        arr[ix] = round(arr[ix] * scale)
        arr[iy] = round(arr[iy] * scale)
    return arr


class V2Batches(Mapping[str, bytes]):
    """One tick's v2 batches: encoded by `prepare`, for the keys asked for, once each."""

    __slots__ = ("_builder", "data", "tick")

    def __init__(self, builder: BatchBuilderV2) -> None:
        self.tick = builder.tick
        self._builder = builder
        self.data: dict[str, bytes] = {}

    @property
    def touched(self) -> set[str]:
        """Every key something happened under in this tick."""
        return self._builder.touched()

    def prepare(self, keys: Collection[str]) -> None:
        """Encodes the batches of those of `keys` that have one and are not encoded yet."""
        self._builder.encode_into(self.data, keys)

    def __getitem__(self, key: str) -> bytes:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


class BatchBuilderV2:
    """Collects one tick's outcomes per key, with slots; encodes a key's batch when asked."""

    __slots__ = ("_in_cell", "_keys", "_motion", "_parts", "_type_of", "tick")

    def __init__(
        self,
        tick: int,
        keys: KeyCodes,
        type_of: Callable[[str], str],
        in_cell: Mapping[str, int],
    ) -> None:
        self.tick = tick
        self._keys = keys
        self._type_of = type_of  # an id's type key, for the rare motion sent as a mod
        self._in_cell = in_cell  # how many objects each key holds
        self._parts: dict[str, _Parts] = {}
        self._motion: list[_Motion] = []

    def _at(self, key: str) -> _Parts:
        p = self._parts.get(key)
        if p is None:
            p = self._parts[key] = _Parts()
        return p

    # -- outcomes (the world calls these, as it calls v1's BatchBuilder) ----------------------

    def add(
        self,
        key: str,
        obj_id: str,
        type_key: str,
        version: int,
        state: dict[str, Any],
        moved_from: str | None = None,
        *,
        slot: int = -1,
    ) -> None:
        """Records an object that appears under `key` in `slot` (created, or moved here)."""
        self._at(key).add.append((slot, obj_id, type_key, version, state))

    def mod(
        self,
        key: str,
        obj_id: str,
        version: int,
        diff: dict[str, Any],
        moved_to: str | None = None,
        *,
        slot: int = -1,
        type_key: str = "",
    ) -> None:
        """Records changed fields of the object in `slot`, or that it left for `moved_to`."""
        p = self._at(key)
        if moved_to is not None:
            p.leave.append((slot, moved_to))  # its state goes with the add in `moved_to`
        else:
            p.mod.append((slot, version, type_key, diff))

    def rem(self, key: str, obj_id: str, *, slot: int = -1) -> None:
        """Records the deletion of the object in `slot` of `key`."""
        self._at(key).rem.append(slot)

    def motion(self, m: Motion) -> None:
        """Records a tick's plain motion: slots and deltas now, the bytes when asked."""
        assert m.prev_rx is not None and m.prev_ry is not None
        cols = m.cols
        dx = (m.rx - m.prev_rx).astype(np.int64)
        dy = (m.ry - m.prev_ry).astype(np.int64)
        slots = cols.cell_slot[m.slots]
        counts = m.counts
        jumps = (np.abs(dx) >= _JUMP) | (np.abs(dy) >= _JUMP)
        if jumps.any():
            group = np.repeat(np.arange(len(m.keys)), counts)
            for i in np.flatnonzero(jumps).tolist():
                col = int(m.slots[i])
                oid = str(cols.ids[col])
                type_key = self._type_of(oid)
                table = type_table()
                at = table.positions[type_key]
                assert at is not None
                names = table.names[type_key]
                scale = float(m.scale[i])
                diff = {names[at[0]]: m.rx[i] / scale, names[at[1]]: m.ry[i] / scale}
                key = m.keys[int(group[i])]
                self._at(key).mod.append((int(slots[i]), int(cols.ver[col]), type_key, diff))
            keep = ~jumps
            counts = np.bincount(group[keep], minlength=len(m.keys)).astype(np.int64)
            slots, dx, dy = slots[keep], dx[keep], dy[keep]
        # Decided now, the commit's last step (every add and mod of the tick is here): a
        # deletion before the frames must not make a cell look all in motion.
        n = len(m.keys)
        in_cell = np.fromiter(map(self._in_cell.__getitem__, m.keys), dtype=np.int64, count=n)
        others = np.zeros(n, dtype=np.int64)
        if self._parts:
            index = dict(zip(m.keys, range(n), strict=True))
            for key, p in self._parts.items():
                g = index.get(key)
                if g is not None:
                    others[g] = len(p.add) + len(p.mod)
        dense = (counts > 0) & (counts == in_cell - others)
        assert m.codes is not None
        self._motion.append(_Motion(m.keys, counts, slots, dx, dy, dense, m.codes))

    def finish(self) -> V2Batches:
        """The tick's batches, to be encoded as frames need them."""
        return V2Batches(self)

    # -- encoding -----------------------------------------------------------------------

    def touched(self) -> set[str]:
        keys = set(self._parts)
        for m in self._motion:
            keys.update(m.keys)
        return keys

    def encode_into(self, out: dict[str, bytes], wanted: Collection[str]) -> None:
        parts = self._parts
        # The motion of the keys that have other entries too: (count, dense, bytes).
        motion_bytes: dict[str, tuple[int, bool, bytes]] = {}
        for m in self._motion:
            if out:
                chosen = np.fromiter(
                    (k in wanted and k not in out for k in m.keys), dtype=bool, count=len(m.keys)
                )
            else:
                chosen = np.fromiter(
                    map(wanted.__contains__, m.keys), dtype=bool, count=len(m.keys)
                )
            if chosen.any():
                _motion_of(m, chosen, parts, out, motion_bytes)
        todo = [k for k in parts if k in wanted and k not in out]
        if not todo:
            return
        table = type_table()
        keys = self._keys
        binary = keys.binary
        for key in todo:
            p = parts[key]
            mv = motion_bytes.get(key)
            flags = 0
            body: list[bytes] = []
            if p.rem:
                flags |= BATCH_REM
                body.append(varint(len(p.rem)))
                body.extend(map(varint, p.rem))
            if p.leave:
                flags |= BATCH_LEAVE
                body.append(varint(len(p.leave)))
                body.extend(varint(s) + binary(k) for s, k in p.leave)
            if p.add or p.mod:
                flags |= BATCH_ENTRIES
                scale = keys.scale(key)
                adds = [
                    [s, oid, table.number[t], v, state_array(table, t, state, scale)]
                    for s, oid, t, v, state in p.add
                ]
                mods = [[s, v, _diff(table, t, diff, scale)] for s, v, t, diff in p.mod]
                body.append(packed([adds, mods]))
            if mv is not None:
                count, dense, data = mv
                flags |= count << BATCH_HEAD_SHIFT | (BATCH_DENSE if dense else 0)
                body.append(data)
            if flags:
                out[key] = b"".join((binary(key), varint(flags), *body))


def _diff(table: TypeTable, type_key: str, diff: Mapping[str, Any], scale: float) -> dict[int, Any]:
    index = table.fields[type_key]
    out = {index[name]: value for name, value in diff.items()}
    at = table.positions[type_key]
    if at is not None:
        for i in at:
            if i in out:
                out[i] = round(out[i] * scale)
    return out


def _motion_of(
    m: _Motion,
    chosen: npt.NDArray[np.bool_],
    parts: Mapping[str, _Parts],
    out: dict[str, bytes],
    with_parts: dict[str, tuple[int, bool, bytes]],
) -> None:
    """The motion of the chosen groups: whole batches into `out` for keys with nothing
    else, and (count, dense, the entries' bytes) into `with_parts` for the others.

    Entries go in slot order. A group is dense when its entries are every
    object of the cell that the batch's adds and mods leave: they go without
    their slots (the client knows them). Everything, the keys and heads too,
    is one array of varints encoded in one pass.
    """
    counts = m.counts
    ents = np.repeat(chosen, counts)
    group = np.repeat(np.arange(len(counts)), counts)[ents]
    slots, dx, dy = m.slots[ents], m.dx[ents], m.dy[ents]
    # Groups are in order already: a stable sort of (group, slot) keeps it cheap.
    order = np.argsort((group << 32) | slots, kind="stable")
    slots, dx, dy = slots[order], dx[order], dy[order]
    key_array = np.array(m.keys, dtype=object)[chosen]
    keys = key_array.tolist()
    dense_arr = m.dense[chosen]
    counts_arr = counts[chosen]
    n = len(slots)
    values = np.empty(3 * n, dtype=np.uint64)
    values[0::3] = slots.view(np.uint64)
    values[1::3] = _zigzag(dx)
    values[2::3] = _zigzag(dy)
    entry_dense = np.repeat(dense_arr, counts_arr)
    keep = np.ones(3 * n, dtype=bool)
    keep[0::3] = ~entry_dense  # a dense group's slots are left out
    values = values[keep]
    # Each group: its key (map + 1, zigzag cx, zigzag cy) and head, then its entries.
    codes = m.codes[chosen]
    head = np.empty((len(codes), 4), dtype=np.int64)
    head[:, 0] = (codes >> 48) + 1
    head[:, 1] = ((codes >> _AXIS_BITS) & _AXIS_MASK) - _BIAS
    head[:, 2] = (codes & _AXIS_MASK) - _BIAS
    head[:, 1:3] = _zigzag(head[:, 1:3]).view(np.int64)
    head[:, 3] = (counts_arr << BATCH_HEAD_SHIFT) | np.where(dense_arr, BATCH_DENSE, 0)
    per_group = 4 + counts_arr * np.where(dense_arr, 2, 3)
    group_ends = np.cumsum(per_group)
    group_starts = group_ends - per_group
    is_head = np.zeros(int(group_ends[-1]), dtype=bool)
    head_at = (group_starts[:, None] + np.arange(4)).ravel()
    is_head[head_at] = True
    stream = np.empty(len(is_head), dtype=np.uint64)
    stream[head_at] = head.ravel().view(np.uint64)
    stream[~is_head] = values
    blob, lengths = encode_varints(stream)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    starts = offsets[group_starts]
    bodies = offsets[group_starts + 4]
    ends = offsets[group_ends]
    has_parts = np.fromiter(map(parts.__contains__, keys), dtype=bool, count=len(keys))
    alone = ~has_parts & (counts_arr > 0)
    # The commonest batch, motion only: a slice of the blob, made without a Python step.
    out.update(
        zip(
            key_array[alone].tolist(),
            map(blob.__getitem__, map(slice, starts[alone].tolist(), ends[alone].tolist())),
            strict=True,
        )
    )
    for g in np.flatnonzero(has_parts & (counts_arr > 0)).tolist():
        with_parts[keys[g]] = (
            int(counts_arr[g]),
            bool(dense_arr[g]),
            blob[int(bodies[g]) : int(ends[g])],
        )


class BothBuilders:
    """Gives each outcome to protocol v1's builder and to v2's: a tick with clients of both."""

    __slots__ = ("v1", "v2")

    def __init__(self, v1: Any, v2: BatchBuilderV2) -> None:
        self.v1 = v1
        self.v2 = v2

    def add(
        self,
        key: str,
        obj_id: str,
        type_key: str,
        version: int,
        state: dict[str, Any],
        moved_from: str | None = None,
        *,
        slot: int = -1,
    ) -> None:
        self.v1.add(key, obj_id, type_key, version, state, moved_from)
        self.v2.add(key, obj_id, type_key, version, state, moved_from, slot=slot)

    def mod(
        self,
        key: str,
        obj_id: str,
        version: int,
        diff: dict[str, Any],
        moved_to: str | None = None,
        *,
        slot: int = -1,
        type_key: str = "",
    ) -> None:
        self.v1.mod(key, obj_id, version, diff, moved_to)
        self.v2.mod(key, obj_id, version, diff, moved_to, slot=slot, type_key=type_key)

    def rem(self, key: str, obj_id: str, *, slot: int = -1) -> None:
        self.v1.rem(key, obj_id)
        self.v2.rem(key, obj_id, slot=slot)

    def motion(self, m: Motion) -> None:
        self.v1.motion(m)
        self.v2.motion(m)
