"""synkworld: real-time, map-based multiplayer worlds for the browser.

The server holds a 2D world of objects in memory; clients subscribe to the grid
cells their viewport covers; every tick, what changed in each cell is encoded
once and sent to every client holding that cell.
"""

import importlib
from typing import TYPE_CHECKING, Any

from synkworld._batch import Batch, TickBatches
from synkworld._bus import (
    Bus,
    BusPort,
    LocalBus,
    SnapshotSource,
    TickDelivery,
    WouldBlockError,
    owns_nothing,
)
from synkworld._errors import (
    BadArgsError,
    BadJsonError,
    BadMessageError,
    BusUnavailableError,
    ConfigError,
    DeclarationError,
    DocumentError,
    DocumentRejectedError,
    DuplicateIdError,
    FieldError,
    ForbiddenError,
    HandlerFailedError,
    NoHandlerError,
    ProtocolError,
    ProtocolViolationError,
    RateLimitedError,
    RefusedError,
    StoreError,
    StoreUnavailableError,
    SynkError,
    TooManyKeysError,
    UnknownMessageError,
    UnknownObjectError,
    WorldError,
)
from synkworld._frames import DeliveryReport, deliver_frames
from synkworld._grid import Grid, GridMap, is_grid_key
from synkworld._handlers import Call
from synkworld._limits import Limits
from synkworld._mirror import Held, Mirror
from synkworld._mirror_v2 import MirrorV2
from synkworld._objects import FieldSpec, SynkObject, object_type, registered_types
from synkworld._protocol import PROTOCOL_VERSION
from synkworld._sessions import Session, SessionStatistics
from synkworld._tick import TickLoop, TickPhases, TickStatistics
from synkworld._world import TickChanges, World, WorldStatistics

if TYPE_CHECKING:
    from synkworld._access_log import AccessLogger
    from synkworld._cluster._node import ClusterNode, ClusterSettings, LostWindow
    from synkworld._persistence import LoadReport, Persistence, load_documents
    from synkworld._serve_options import ServeOptions
    from synkworld._server import Server, request_token

from synkworld._version import __version__ as __version__

# The transport is loaded on first use, so that the core (`synkworld._grid`, …)
# can be imported without aiohttp: tests/test_layering.py checks that.
_LAZY = {
    "AccessLogger": "synkworld._access_log",
    "ClusterNode": "synkworld._cluster._node",
    "ClusterSettings": "synkworld._cluster._node",
    "LostWindow": "synkworld._cluster._node",
    "LoadReport": "synkworld._persistence",
    "Persistence": "synkworld._persistence",
    "load_documents": "synkworld._persistence",
    "ServeOptions": "synkworld._serve_options",
    "Server": "synkworld._server",
    "request_token": "synkworld._server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'synkworld' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    _claim(value)
    globals()[name] = value
    return value


def _claim(member: Any) -> None:
    # Exported names say they belong to `synkworld`, not to the private module
    # that defines them (as httpx does): that is where users find them.
    if isinstance(member, type) or callable(member):
        member.__module__ = "synkworld"


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "PROTOCOL_VERSION",
    "AccessLogger",
    "BadArgsError",
    "BadJsonError",
    "BadMessageError",
    "Batch",
    "Bus",
    "BusPort",
    "BusUnavailableError",
    "Call",
    "ClusterNode",
    "ClusterSettings",
    "ConfigError",
    "DeclarationError",
    "DeliveryReport",
    "DocumentError",
    "DocumentRejectedError",
    "DuplicateIdError",
    "FieldError",
    "FieldSpec",
    "ForbiddenError",
    "Grid",
    "GridMap",
    "HandlerFailedError",
    "Held",
    "Limits",
    "LoadReport",
    "LocalBus",
    "LostWindow",
    "Mirror",
    "MirrorV2",
    "NoHandlerError",
    "Persistence",
    "ProtocolError",
    "ProtocolViolationError",
    "RateLimitedError",
    "RefusedError",
    "ServeOptions",
    "Server",
    "Session",
    "SessionStatistics",
    "SnapshotSource",
    "StoreError",
    "StoreUnavailableError",
    "SynkError",
    "SynkObject",
    "TickBatches",
    "TickChanges",
    "TickDelivery",
    "TickLoop",
    "TickPhases",
    "TickStatistics",
    "TooManyKeysError",
    "UnknownMessageError",
    "UnknownObjectError",
    "World",
    "WorldError",
    "WorldStatistics",
    "WouldBlockError",
    "deliver_frames",
    "is_grid_key",
    "load_documents",
    "object_type",
    "owns_nothing",
    "registered_types",
    "request_token",
]

for _name in __all__:
    if _name not in _LAZY:
        _claim(globals()[_name])
