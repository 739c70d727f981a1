"""Batches: what happened under one key in one tick, encoded once.

A `Batch` is a value of its own, (key, tick, bytes), so that whoever builds
frames can take batches from the local tick or, later, from a bus that carries
another process's batches byte for byte.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import orjson

from synkworld._motion_json import encode_motion, fits, id_rows

if TYPE_CHECKING:
    from synkworld._columns import Columns

__all__ = ["Batch", "BatchBuilder", "Motion", "TickBatches", "encode_snapshot"]


@dataclass(frozen=True, slots=True)
class Batch:
    """The encoded changes of one key in one tick."""

    key: str
    tick: int
    data: bytes


class TickBatches(Mapping[str, Batch]):
    """One tick's batches by key.

    The bytes are kept in a plain dict, `data`, which frame builders read
    directly; a `Batch` value is made when one is asked for.
    """

    __slots__ = ("data", "tick")

    def __init__(self, tick: int, data: dict[str, bytes]) -> None:
        self.tick = tick
        self.data = data

    def __getitem__(self, key: str) -> Batch:
        return Batch(key, self.tick, self.data[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __contains__(self, key: object) -> bool:
        return key in self.data


@dataclass(frozen=True, slots=True)
class Motion:
    """One tick's plain motion inside cells, sorted by cell: what a codec writes `mv` from.

    Group g is cell `keys[g]`, of map `map_of[g]`, and owns the next `counts[g]`
    entries of `slots`, `rx`, `ry` and `scale`: the objects' column slots, their
    positions times 10**precision rounded to whole numbers, and 10**precision.
    """

    keys: list[str]
    counts: npt.NDArray[np.int64]
    map_of: npt.NDArray[np.int64]
    precisions: Mapping[int, int]
    slots: npt.NDArray[np.int64]
    rx: npt.NDArray[np.float64]
    ry: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]
    cols: Columns
    prev_rx: npt.NDArray[np.float64] | None = None
    """The positions last sent, rounded like `rx` (for protocol v2's deltas); None without v2."""
    prev_ry: npt.NDArray[np.float64] | None = None
    codes: npt.NDArray[np.int64] | None = None
    """Each group's cell code (map << 48 | cx, cy biased), for protocol v2's keys in bulk."""

    def as_lists(self, groups: npt.NDArray[np.bool_]) -> dict[str, list[list[Any]]]:
        """The `mv` arrays of the chosen groups as lists: key -> [ids, xs, ys]."""
        counts = self.counts
        ents = np.repeat(groups, counts)
        scale = self.scale[ents]
        xr = (self.rx[ents] / scale).tolist()
        yr = (self.ry[ents] / scale).tolist()
        ids = self.cols.ids[self.slots[ents]].tolist()
        ends = list(itertools.accumulate(counts[groups].tolist()))
        begins = [0, *ends[:-1]]
        chosen = [self.keys[g] for g in np.flatnonzero(groups).tolist()]
        return {
            k: [ids[a:b], xr[a:b], yr[a:b]] for k, a, b in zip(chosen, begins, ends, strict=True)
        }


@dataclass(slots=True)
class _Parts:
    add: list[dict[str, Any]] = field(default_factory=list)
    mod: list[dict[str, Any]] = field(default_factory=list)
    rem: list[dict[str, str]] = field(default_factory=list)


class BatchBuilder:
    """Collects one tick's outcomes per key, then encodes each key's batch once."""

    __slots__ = ("_motion", "_parts", "_prefixes", "_ready", "tick")

    def __init__(self, tick: int, mv_prefixes: dict[str, bytes] | None = None) -> None:
        self.tick = tick
        # Each key's ``{"k":"<key>","mv":[[``, kept from tick to tick by the caller.
        self._prefixes = mv_prefixes if mv_prefixes is not None else {}
        self._parts: dict[str, _Parts] = {}
        # `mv` arrays as lists, for batches encoded as messages (a tick committed
        # without encoding, or positions the bulk writer leaves to orjson).
        self._motion: dict[str, list[list[Any]]] = {}
        # Finished batches: the cells whose `mv` arrays were written in bulk.
        self._ready: dict[str, bytes] = {}

    def _at(self, key: str) -> _Parts:
        p = self._parts.get(key)
        if p is None:
            p = self._parts[key] = _Parts()
        return p

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
        """Records an object that appears under `key`: created, or moved here from `moved_from`.

        `slot`, the object's slot in `key`, is protocol v2's (`BatchBuilderV2`); v1 has none.
        """
        entry: dict[str, Any] = {"id": obj_id, "t": type_key, "v": version, "s": state}
        if moved_from is not None:
            entry["from"] = moved_from
        self._at(key).add.append(entry)

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
        """Records changed fields of an object under `key`, which it leaves for `moved_to`."""
        entry: dict[str, Any] = {"id": obj_id, "v": version, "d": diff}
        if moved_to is not None:
            entry["to"] = moved_to
        self._at(key).mod.append(entry)

    def mv_many(self, motion: dict[str, list[list[Any]]]) -> None:
        """Records `mv` arrays of many keys at once (key -> [ids, xs, ys])."""
        self._motion.update(motion)

    def motion(self, m: Motion) -> None:
        """Records a tick's plain motion: every cell's `mv` arrays written in bulk, to bytes.

        A cell with per-object entries too gets them, encoded, in front of its
        `mv`; a map whose rounded positions orjson would write with an
        exponent goes through orjson instead (`fits`).
        """
        counts, map_of, cols = m.counts, m.map_of, m.cols
        as_lists = np.zeros(len(m.keys), dtype=bool)
        map_indices = [0] if len(m.precisions) == 1 else np.unique(map_of).tolist()
        for index in map_indices:
            groups = map_of == index
            ents = np.repeat(groups, counts)
            precision = m.precisions[index]
            rx, ry = m.rx[ents], m.ry[ents]
            if not fits(rx, ry, precision):
                as_lists |= groups
                continue
            if len(map_indices) == 1:
                chosen = m.keys
            else:
                chosen = [m.keys[g] for g in np.flatnonzero(groups).tolist()]
            slots = m.slots[ents]
            data = encode_motion(
                self.mv_prefixes(chosen),
                counts[groups],
                id_rows(cols.id_json[slots]),
                cols.id_len[slots],
                rx,
                ry,
                precision,
            )
            self.ready(chosen, data)
        if as_lists.any():
            self.mv_many(m.as_lists(as_lists))

    def ready(self, keys: list[str], data: list[bytes]) -> None:
        """Records finished, encoded batches; their keys' entries were taken already."""
        self._ready.update(zip(keys, data, strict=True))

    def take_entries_before_mv(self, key: str) -> bytes:
        """The encoded start of `key`'s batch up to its `mv` arrays: ``{"k":..,"add":..,"mv":[[``.

        The key's entries are taken out: the caller completes the batch with
        its `mv` arrays and records it with `ready`.
        """
        msg = self._message(key, self._parts.pop(key), None)
        return orjson.dumps(msg)[:-1] + b',"mv":[['

    def mv_prefixes(self, keys: list[str]) -> list[bytes]:
        """What comes before each key's `mv` arrays: ``{"k":"<key>",...,"mv":[[``.

        A key with nothing but motion has its prefix made once and kept; a key
        with entries too gets them in front (and they are taken out, as by
        `take_entries_before_mv`).
        """
        cache = self._prefixes
        prefixes = list(map(cache.get, keys))
        if None in prefixes:
            for i, (k, p) in enumerate(zip(keys, prefixes, strict=True)):
                if p is None:
                    prefixes[i] = cache[k] = b'{"k":%b,"mv":[[' % orjson.dumps(k)
        if self._parts:
            take = self.take_entries_before_mv
            parts = self._parts
            for i, k in enumerate(keys):
                if k in parts:
                    prefixes[i] = take(k)
        return prefixes  # type: ignore[return-value]

    def rem(self, key: str, obj_id: str, *, slot: int = -1) -> None:
        """Records an object deleted from the world while under `key`."""
        self._at(key).rem.append({"id": obj_id})

    def _messages(self) -> dict[str, dict[str, Any]]:
        """Every touched key's batch as a message, except those recorded already encoded."""
        motion = self._motion
        out = {key: self._message(key, p, motion.get(key)) for key, p in self._parts.items()}
        parts = self._parts
        for key, mv in motion.items():
            if key not in parts:
                out[key] = {"k": key, "mv": mv}
        return out

    @staticmethod
    def _message(key: str, p: _Parts, mv: list[list[Any]] | None) -> dict[str, Any]:
        # `mv` comes last, so that bulk-written `mv` arrays can follow the rest.
        msg: dict[str, Any] = {"k": key}
        if p.add:
            msg["add"] = p.add
        if p.mod:
            msg["mod"] = p.mod
        if p.rem:
            msg["rem"] = p.rem
        if mv is not None:
            msg["mv"] = mv
        return msg

    def encode(self) -> TickBatches:
        """Every touched key's batch: the messages encoded once each, and the ready ones."""
        messages = self._messages()
        dumps = orjson.dumps
        data = self._ready
        data.update(zip(messages, map(dumps, messages.values()), strict=True))
        return TickBatches(self.tick, data)


def encode_snapshot(snapshot: dict[str, Any]) -> bytes:
    """A snapshot ``{"k": key, "objs": [...]}`` as protocol v1 bytes."""
    return orjson.dumps(snapshot)
