"""The reference client the tests check servers with, and the truth it must equal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from synkworld._mirror import Mirror
from synkworld._mirror_v2 import MirrorV2
from synkworld._world import World

__all__ = ["ReferenceClient", "ReferenceClientV2", "world_truth"]


class _KeepsAnswers(Mirror):
    """Keeps the replies and errors a client is sent."""

    def __init__(
        self,
        maps: Mapping[str, Any] | None = None,
        *,
        strict: bool = True,
        keep_teardowns: bool = True,
    ) -> None:
        super().__init__(maps, strict=strict, keep_teardowns=keep_teardowns)
        self.replies: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []

    def other(self, msg: Mapping[str, Any]) -> None:
        kind = msg.get("m")
        if kind == "reply":
            self.replies.append(dict(msg))
        elif kind == "error":
            self.errors.append(dict(msg))
        else:
            super().other(msg)


class ReferenceClient(_KeepsAnswers):
    """A strict `Mirror` that also keeps the replies and errors it is sent."""

    def apply(self, frame: bytes | str | Mapping[str, Any]) -> None:
        """Applies one frame, raw or decoded."""
        if isinstance(frame, bytes | str):
            self.apply_frame(frame)
        else:
            super().apply(frame)


class ReferenceClientV2(MirrorV2, _KeepsAnswers):
    """`ReferenceClient` for protocol v2: a strict `MirrorV2` that keeps replies and errors."""

    def apply(self, frame: bytes | str | Mapping[str, Any]) -> None:
        """Applies one raw frame."""
        if isinstance(frame, Mapping):
            raise TypeError("a protocol v2 client applies raw frames")
        self.apply_frame(frame)


def world_truth(world: World, keys: set[str]) -> dict[str, tuple[str, int, dict[str, Any], str]]:
    """What a client holding `keys` should hold, read from the server's world."""
    out = {}
    for key in keys:
        for o in world.objects_under(key):
            out[o.id] = (o.synk_type, o.version, o.wire_state(), key)
    return out
