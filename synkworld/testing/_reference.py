"""The reference client the tests check servers with, and the truth it must equal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from synkworld._mirror import Mirror
from synkworld._world import World

__all__ = ["ReferenceClient", "world_truth"]


class ReferenceClient(Mirror):
    """A strict `Mirror` that also keeps the replies and errors it is sent."""

    def __init__(self, maps: Mapping[str, Any] | None = None) -> None:
        super().__init__(maps, strict=True)
        self.replies: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []

    def apply(self, frame: bytes | str | Mapping[str, Any]) -> None:
        """Applies one frame, raw or decoded."""
        if isinstance(frame, bytes | str):
            self.apply_frame(frame)
        else:
            super().apply(frame)

    def other(self, msg: Mapping[str, Any]) -> None:
        kind = msg.get("m")
        if kind == "reply":
            self.replies.append(dict(msg))
        elif kind == "error":
            self.errors.append(dict(msg))
        else:
            super().other(msg)


def world_truth(world: World, keys: set[str]) -> dict[str, tuple[str, int, dict[str, Any], str]]:
    """What a client holding `keys` should hold, read from the server's world."""
    out = {}
    for key in keys:
        for o in world.objects_under(key):
            out[o.id] = (o.synk_type, o.version, o.wire_state(), key)
    return out
