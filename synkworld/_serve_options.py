"""What the command line says about serving, for an application factory that takes it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ServeOptions"]


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """What the command line says about serving; a factory may take it to build its server."""

    host: str
    port: int
    tick_rate_hz: float | None
    limits: dict[str, Any]
    compression: bool = False
    redis: str | None = None
    """A Redis URL: serve one map with the other processes on it (with `world`)."""
    world: str = "default"
    gateway: bool = False
    """In a cluster, own no regions: only serve clients."""
    node: str | None = None
    region_cells: int | None = None
    lease_ttl_s: float | None = None
    allowed_origins: tuple[str, ...] | None = None
    """Page origins that may open /ws (None: the server's own setting)."""
    metrics_port: int | None = None
    metrics_host: str | None = None
    metrics_token: str | None = None
    monitor: bool | str | None = None
    """The /monitor page: True behind the authenticate hook, a string its own token."""

    @property
    def clustered(self) -> bool:
        """Several processes share the map (the factory should start its world empty)."""
        return self.redis is not None
