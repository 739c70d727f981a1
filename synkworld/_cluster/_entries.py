"""One region's entry of one tick on the bus: what it carries, and how parts are joined.

Fields of an entry (bytes to bytes):

- ``h``: the header, JSON: ``{"n": node, "e": epoch, "ad": [[id, key, region,
  tick], ...], "mig": node, "b": [[key, length], ...], "s": [[key, length], ...]}``;
  ``ad`` lists the objects this owner adopted since its last entry (into
  `key`, from the entry of `region` at `tick`), which is also the
  acknowledgement its sources wait for; ``mig`` names the node this entry
  hands the region to (its last entry as the region's owner); ``b`` and ``s``
  say which keys' batches and snapshots ``B`` and ``S`` carry, in order;
- ``B``: the cells' batches, each exactly the bytes the owner's commit
  encoded, one after the other (one field, not one per cell: the cost of an
  append and of a read grows with the number of fields);
- ``i``: JSON ``{key: [add, ...]}``, the incoming halves of moves (and
  creations) into keys of other regions;
- ``d``: JSON ``[document, ...]``, the objects handed over by those moves;
- ``r``: JSON ``[document, ...]``, handovers sent again (no adopter acknowledged
  them), which their adopter announces as creations;
- ``m``: JSON ``[document, ...]``, every object of a region handed to ``mig``;
- ``S``: the snapshots other processes asked for, as of this tick, one after the other.

Joining is deterministic, so that every process makes the same bytes: the
incoming adds of a key go, sorted by id, to the front of the key's ``add``
array (which the batch codec writes right after ``"k"``); a snapshot with
incoming adds is decoded, joined and encoded again with its objects in id order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from synkworld._bus_backend import Record

__all__ = ["Entry", "EntryBuilder", "join_batch", "join_snapshot"]


@dataclass(slots=True)
class Entry:
    """A region's entry of a tick, decoded as far as the cluster reads it."""

    region: str
    tick: int
    prev: int
    node: str
    epoch: int
    handed_to: str | None
    new_epoch: int | None
    batches: dict[str, bytes]
    incoming: dict[str, list[dict[str, Any]]]
    handovers: list[dict[str, Any]]
    resent: list[dict[str, Any]]
    migrated: list[dict[str, Any]]
    snapshots: dict[str, bytes]
    adopted: list[tuple[str, str, str, int]]

    @classmethod
    def decode(cls, record: Record) -> Entry:
        """Reads a stream record; raises ValueError for one that is not an entry."""
        f = record.fields
        try:
            header = orjson.loads(f[b"h"])
            node, epoch = str(header["n"]), int(header["e"])
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"entry {record.region}@{record.tick}: bad header") from exc
        try:
            batches = _unpack(f.get(b"B", b""), header.get("b", ()))
            snapshots = _unpack(f.get(b"S", b""), header.get("s", ()))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"entry {record.region}@{record.tick}: bad parts") from exc
        return cls(
            record.region,
            record.tick,
            record.prev,
            node,
            epoch,
            header.get("mig"),
            record.epoch,
            batches,
            _json(f.get(b"i"), {}),
            _json(f.get(b"d"), []),
            _json(f.get(b"r"), []),
            _json(f.get(b"m"), []),
            snapshots,
            [(str(i), str(k), str(r), int(t)) for i, k, r, t in header.get("ad", [])],
        )


def _unpack(blob: bytes, index: Any) -> dict[str, bytes]:
    """The parts a field concatenates, by the ``[[key, length], ...]`` the header gives."""
    out: dict[str, bytes] = {}
    at = 0
    for key, length in index:
        end = at + int(length)
        if end > len(blob):
            raise ValueError("a part runs past the end of its field")
        out[str(key)] = blob[at:end]
        at = end
    if at != len(blob):
        raise ValueError("bytes left over after the last part")
    return out


def _pack(parts: Mapping[str, bytes]) -> tuple[list[list[Any]], bytes]:
    return [[k, len(v)] for k, v in parts.items()], b"".join(parts.values())


def _json(raw: bytes | None, empty: Any) -> Any:
    return empty if raw is None else orjson.loads(raw)


@dataclass(slots=True)
class EntryBuilder:
    """Collects what one owned region's entry of a tick carries, then encodes it."""

    node: str
    epoch: int
    batches: dict[str, bytes] = field(default_factory=dict)
    incoming: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    handovers: list[dict[str, Any]] = field(default_factory=list)
    resent: list[dict[str, Any]] = field(default_factory=list)
    migrated: list[dict[str, Any]] | None = None
    handed_to: str | None = None
    snapshots: dict[str, bytes] = field(default_factory=dict)
    adopted: list[tuple[str, str, str, int]] = field(default_factory=list)

    def fields(self) -> dict[bytes, bytes]:
        """The entry's stream fields."""
        header: dict[str, Any] = {"n": self.node, "e": self.epoch}
        if self.adopted:
            header["ad"] = self.adopted
        if self.handed_to is not None:
            header["mig"] = self.handed_to
        out: dict[bytes, bytes] = {}
        if self.batches:
            header["b"], out[b"B"] = _pack(self.batches)
        if self.snapshots:
            header["s"], out[b"S"] = _pack(self.snapshots)
        out[b"h"] = orjson.dumps(header)
        if self.incoming:
            out[b"i"] = orjson.dumps(self.incoming)
        if self.handovers:
            out[b"d"] = orjson.dumps(self.handovers)
        if self.resent:
            out[b"r"] = orjson.dumps(self.resent)
        if self.migrated is not None:
            out[b"m"] = orjson.dumps(self.migrated)
        return out


def join_batch(key: str, batch: bytes | None, adds: list[dict[str, Any]]) -> bytes:
    """A key's batch with incoming adds (from other owners) in front of its own adds."""
    items = orjson.dumps(sorted(adds, key=_by_id))[1:-1]
    head = b'{"k":' + orjson.dumps(key)
    if batch is None:
        return head + b',"add":[' + items + b"]}"
    if not batch.startswith(head):
        raise ValueError(f"the batch of {key!r} does not start with its key")
    rest = batch[len(head) :]
    if rest.startswith(b',"add":['):
        own = rest[len(b',"add":[') :]
        return head + b',"add":[' + items + b"," + own
    return head + b',"add":[' + items + b"]" + rest


def join_snapshot(snapshot: bytes, adds: list[dict[str, Any]], *, keep: bool = False) -> bytes:
    """A key's snapshot with the objects that incoming adds bring, in id order.

    With `keep`, an object the snapshot has already stays as it is there.
    """
    snap = orjson.loads(snapshot)
    objs: dict[str, dict[str, Any]] = {o["id"]: o for o in snap["objs"]}
    for add in adds:
        if keep and add["id"] in objs:
            continue
        objs[add["id"]] = {"id": add["id"], "t": add["t"], "v": add["v"], "s": add["s"]}
    snap["objs"] = [objs[i] for i in sorted(objs)]
    return orjson.dumps(snap)


def _by_id(entry: Mapping[str, Any]) -> str:
    return str(entry["id"])
