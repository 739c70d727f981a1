"""Bus backends: what several processes on one map share, in one process or through Redis.

- `MemoryHub` / `MemoryBackend`: every node in one event loop, with faults to
  inject (delays, lost entries, trimming, fencing, a wipe, a disconnection).
- `RedisBackend`: Redis streams, leases and sets through `redis.asyncio` (the
  `redis` extra), loaded on first use so that importing this package does not
  import redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from synkworld._bus_backend import (
    Append,
    AppendResult,
    AppendStatus,
    BusBackend,
    Lease,
    ReadResult,
    Record,
)
from synkworld.bus.memory import MemoryBackend, MemoryHub

if TYPE_CHECKING:
    from synkworld.bus.redis import RedisBackend

__all__ = [
    "Append",
    "AppendResult",
    "AppendStatus",
    "BusBackend",
    "Lease",
    "MemoryBackend",
    "MemoryHub",
    "ReadResult",
    "Record",
    "RedisBackend",
]


def __getattr__(name: str) -> Any:
    if name == "RedisBackend":
        from synkworld.bus.redis import RedisBackend

        return RedisBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
