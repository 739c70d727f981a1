"""synkworld: real-time, map-based multiplayer worlds for the browser.

The server holds a 2D world of objects in memory; clients subscribe to the grid
cells their viewport covers; every tick, what changed in each cell is encoded
once and sent to every client holding that cell.
"""

from synkworld._batch import Batch
from synkworld._errors import (
    BadArgsError,
    BadJsonError,
    BadMessageError,
    ConfigError,
    DeclarationError,
    DocumentError,
    DuplicateIdError,
    FieldError,
    ForbiddenError,
    HandlerFailedError,
    NoHandlerError,
    ProtocolError,
    RateLimitedError,
    StoreError,
    StoreUnavailableError,
    SynkError,
    TooManyKeysError,
    UnknownMessageError,
    UnknownObjectError,
    WorldError,
)
from synkworld._grid import Grid, GridMap, is_grid_key
from synkworld._objects import FieldSpec, SynkObject, object_type, registered_types
from synkworld._protocol import PROTOCOL_VERSION
from synkworld._sessions import Session, SessionStatistics
from synkworld._tick import DeliveryReport, SnapshotSource, TickLoop, TickStatistics, deliver_frames
from synkworld._world import TickChanges, World, WorldStatistics

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "BadArgsError",
    "BadJsonError",
    "BadMessageError",
    "Batch",
    "ConfigError",
    "DeclarationError",
    "DeliveryReport",
    "DocumentError",
    "DuplicateIdError",
    "FieldError",
    "FieldSpec",
    "ForbiddenError",
    "Grid",
    "GridMap",
    "HandlerFailedError",
    "NoHandlerError",
    "ProtocolError",
    "RateLimitedError",
    "Session",
    "SessionStatistics",
    "SnapshotSource",
    "StoreError",
    "StoreUnavailableError",
    "SynkError",
    "SynkObject",
    "TickChanges",
    "TickLoop",
    "TickStatistics",
    "TooManyKeysError",
    "UnknownMessageError",
    "UnknownObjectError",
    "World",
    "WorldError",
    "WorldStatistics",
    "deliver_frames",
    "is_grid_key",
    "object_type",
    "registered_types",
]
