"""`Limits`: what one client may do and cost, and what the server's connections may hold.

The one place where these defaults live: sessions, the client protocol, the
tick loop, the transport and the command line all read them from a `Limits`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from synkworld._errors import ConfigError

__all__ = ["Limits"]

_MAY_BE_NONE = frozenset({"max_connections", "max_connections_per_address"})
_MAY_BE_ZERO = frozenset({"max_margin"})


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may do and cost; every field is checked at construction."""

    max_keys: int = 256
    """Keys a client may hold at once (more: `too_many_keys`, nothing changes)."""
    max_margin: int = 3
    """The largest `margin` of a `view`, in cells (larger ones are capped)."""
    send_queue_max_frames: int = 64
    send_queue_max_bytes: int = 4 * 1024 * 1024
    """A client's outgoing queue: past either bound its tick frames are dropped (then a resync)."""
    lag_timeout_s: float = 10.0
    """A client lagging behind this long is closed with 1013."""
    rate_limit_per_s: float = 60.0
    rate_limit_burst: float = 120.0
    """A token bucket per client: messages per second on average, and the burst."""
    max_errors: int = 20
    error_window_s: float = 10.0
    """More errors than `max_errors` within `error_window_s`: closed with 1008."""
    heartbeat_s: float = 30.0
    """WebSocket pings to detect dead peers."""
    socket_buffer_max_bytes: int = 256 * 1024
    """Frames go straight to a socket holding less than this; otherwise to the queue."""
    close_timeout_s: float = 2.0
    """How long a close waits for the closing handshake before dropping the connection."""
    header_timeout_s: float = 10.0
    """A new HTTP connection's first request must be in (headers) within this."""
    keepalive_timeout_s: float = 15.0
    """An idle kept-alive HTTP connection is closed after this."""
    max_connections: int | None = None
    """Connections open at once; None: a little below the process's fd limit."""
    max_connections_per_address: int | None = None
    """Connections from one remote address; None: no limit (right behind a proxy)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in _MAY_BE_NONE:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"Limits.{f.name} must be a number, not {value!r}")
            if value < 0 or (value == 0 and f.name not in _MAY_BE_ZERO):
                raise ConfigError(f"Limits.{f.name} must be positive, not {value!r}")
