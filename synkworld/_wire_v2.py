"""Protocol v2's building blocks: varints, keys, the type table, and the frames around batches.

docs/protocol-v2.md is this module's prose twin. The batches themselves are
`_batch_v2`'s; this module writes what surrounds them (the tick and resync
frames, the MessagePack messages) and the parts both share.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import msgpack

from synkworld._grid import Grid
from synkworld._objects import SynkObject, registered_types

__all__ = [
    "FRAME_MESSAGE",
    "FRAME_RESYNC",
    "FRAME_TICK",
    "PROTOCOL_V2",
    "SUBPROTOCOL_V1",
    "SUBPROTOCOL_V2",
    "KeyCodes",
    "TypeTable",
    "encode_hello_v2",
    "encode_message",
    "encode_resync_v2",
    "encode_tick_v2",
    "type_table",
    "varint",
    "zigzag",
]

PROTOCOL_V2: Final = 2
SUBPROTOCOL_V1: Final = "synkworld.v1"
SUBPROTOCOL_V2: Final = "synkworld.v2"

FRAME_TICK: Final = 0x01
FRAME_RESYNC: Final = 0x02
FRAME_MESSAGE: Final = 0x03

# Bits of a tick frame's parts byte, in the order the parts follow. The
# subscription change comes before the batches, though it is applied after
# them, so that a client reads a frame in one pass: a batch's leave rule
# needs this frame's `sub.add`.
TICK_TYPES: Final = 0x01
TICK_SUB_REM: Final = 0x02
TICK_SUB_ADD: Final = 0x04
TICK_BATCHES: Final = 0x08
TICK_SNAPS: Final = 0x10

# A batch's head is one varint: the number of motion entries times 16, plus these bits.
BATCH_REM: Final = 0x01
BATCH_LEAVE: Final = 0x02
BATCH_ENTRIES: Final = 0x04
BATCH_DENSE: Final = 0x08  # motion entries without slots: every other object, in slot order
BATCH_HEAD_SHIFT: Final = 4

_SMALL = [bytes([i]) for i in range(128)]


def varint(n: int) -> bytes:
    """`n` (not negative) in LEB128."""
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def zigzag(n: int) -> bytes:
    """A signed integer as the varint of its zigzag form (0, -1, 1, -2 … → 0, 1, 2, 3 …)."""
    return varint(n << 1 if n >= 0 else (-n << 1) - 1)


# One packer for the process (the tick runs on one thread): `packb` makes one per call.
_pack = msgpack.Packer().pack


def packed(value: Any) -> bytes:
    """A MessagePack value preceded by its length, as it sits inside binary layouts."""
    data: bytes = _pack(value)
    return varint(len(data)) + data


class KeyCodes:
    """Keys as protocol v2 writes them, made once per key and kept."""

    __slots__ = ("_binary", "_grid", "_scales")

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self._binary: dict[str, bytes] = {}
        self._scales = {m.name: 10.0**m.precision for m in grid.maps.values()}

    def scale(self, key: str) -> float:
        """10**prec of the key's map (1.0 for a channel key, whose objects have no position)."""
        name, sep, _ = key.partition(":")
        return self._scales.get(name, 1.0) if sep else 1.0

    def binary(self, key: str) -> bytes:
        """The key in binary layouts: tag, then (map + 1, zigzag cx, zigzag cy) or a string."""
        code = self._binary.get(key)
        if code is None:
            parsed = self._grid.parse_key(key)
            if parsed is None:
                raw = key.encode()
                code = b"\x00" + varint(len(raw)) + raw
            else:
                gmap, cx, cy = parsed
                code = varint(gmap.index + 1) + zigzag(cx) + zigzag(cy)
            if len(self._binary) < 1_000_000:  # clients choose channel keys: keep it bounded
                self._binary[key] = code
        return code


class TypeTable:
    """Type numbers, field indices and definitions, in the order the types were registered."""

    __slots__ = ("_classes", "definitions", "fields", "names", "number", "positions")

    def __init__(self, types: Mapping[str, type[SynkObject]]) -> None:
        self._classes = tuple(types.values())
        self.number: dict[str, int] = {}
        self.fields: dict[str, dict[str, int]] = {}
        self.names: dict[str, list[str]] = {}
        self.positions: dict[str, tuple[int, int] | None] = {}
        self.definitions: list[list[Any]] = []
        for n, (type_key, cls) in enumerate(types.items()):
            names = list(cls.synk_fields)
            index = {name: i for i, name in enumerate(names)}
            pos = cls.synk_position
            at = None if pos is None else (index[pos[0]], index[pos[1]])
            self.number[type_key] = n
            self.fields[type_key] = index
            self.names[type_key] = names
            self.positions[type_key] = at
            self.definitions.append([n, type_key, names, None if at is None else list(at)])

    def __len__(self) -> int:
        return len(self.definitions)

    def current(self, types: Mapping[str, type[SynkObject]]) -> bool:
        """Tells whether the registry still holds exactly these classes."""
        return len(types) == len(self._classes) and all(
            a is b for a, b in zip(types.values(), self._classes, strict=True)
        )


_table: TypeTable | None = None


def type_table() -> TypeTable:
    """The table of every type registered in this process (rebuilt when one is added)."""
    global _table
    types = registered_types()
    if _table is None or len(_table) != len(types) or not _table.current(types):
        _table = TypeTable(types)
    return _table


def _types_part(known: int, table: TypeTable) -> bytes:
    return packed(table.definitions[known:])


def encode_tick_v2(
    tick: int,
    batches: list[bytes],
    added: list[bytes],
    removed: list[bytes],
    snapshots: Iterable[bytes],
    types_known: int,
    table: TypeTable,
) -> bytes | None:
    """A v2 tick frame from ready batch, key and snapshot bytes; None when it carries nothing.

    `types_known` is how many type definitions the client has; the frame
    carries the rest of the table, if any (only with something else).
    """
    snaps = snapshots if isinstance(snapshots, list) else list(snapshots)
    if not batches and not added and not removed and not snaps:
        return None
    parts = 0
    out: list[bytes] = []
    if types_known < len(table):
        parts |= TICK_TYPES
        out.append(_types_part(types_known, table))
    for bit, items in (
        (TICK_SUB_REM, removed),
        (TICK_SUB_ADD, added),
        (TICK_BATCHES, batches),
        (TICK_SNAPS, snaps),
    ):
        if items:
            parts |= bit
            out.append(varint(len(items)))
            out.extend(items)
    return b"".join((b"\x01", varint(tick), _SMALL[parts], *out))


def encode_resync_v2(
    tick: int, snapshots: list[bytes], types_known: int, table: TypeTable
) -> bytes:
    """The v2 frame that replaces everything a lagging client holds."""
    if types_known < len(table):
        head = b"\x02" + varint(tick) + b"\x01" + _types_part(types_known, table)
    else:
        head = b"\x02" + varint(tick) + b"\x00"
    return b"".join((head, varint(len(snapshots)), *snapshots))


def encode_hello_v2(sid: str, tick: int, rate_hz: float, grid: Grid, table: TypeTable) -> bytes:
    """The first v2 frame after the upgrade: v1's hello with map numbers and the type table."""
    rate: int | float = int(rate_hz) if float(rate_hz).is_integer() else rate_hz
    maps = {name: {"num": grid.map(name).index, **spec} for name, spec in grid.describe().items()}
    hello = {
        "m": "hello",
        "proto": PROTOCOL_V2,
        "sid": sid,
        "tick": tick,
        "rate": rate,
        "maps": maps,
        "types": table.definitions,
    }
    return encode_message(hello)


def encode_message(message: Mapping[str, Any]) -> bytes:
    """A hello, reply, error or pong: one MessagePack map after the frame's first byte."""
    data: bytes = msgpack.packb(message)
    return b"\x03" + data
