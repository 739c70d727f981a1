"""Batches: what happened under one key in one tick, encoded once.

A `Batch` is a value of its own, (key, tick, bytes), so that whoever builds
frames can take batches from the local tick or, later, from a bus that carries
another process's batches byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["Batch", "BatchBuilder", "TickBatches", "encode_snapshot"]


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
    ) -> None:
        """Records an object that appears under `key`: created, or moved here from `moved_from`."""
        entry: dict[str, Any] = {"id": obj_id, "t": type_key, "v": version, "s": state}
        if moved_from is not None:
            entry["from"] = moved_from
        self._at(key).add.append(entry)

    def mod(
        self, key: str, obj_id: str, version: int, diff: dict[str, Any], moved_to: str | None = None
    ) -> None:
        """Records changed fields of an object under `key`, which it leaves for `moved_to`."""
        entry: dict[str, Any] = {"id": obj_id, "v": version, "d": diff}
        if moved_to is not None:
            entry["to"] = moved_to
        self._at(key).mod.append(entry)

    def mv_many(self, motion: dict[str, list[list[Any]]]) -> None:
        """Records `mv` arrays of many keys at once (key -> [ids, xs, ys])."""
        self._motion.update(motion)

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

    def rem(self, key: str, obj_id: str) -> None:
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
