"""Call handlers: registration, argument checking from the signature, isolation of failures."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from synkworld._errors import (
    BadArgsError,
    ConfigError,
    DuplicateIdError,
    FieldError,
    HandlerFailedError,
    NoHandlerError,
    ProtocolError,
    StoreError,
    UnknownObjectError,
)
from synkworld._objects import FieldSpec

if TYPE_CHECKING:
    from synkworld._sessions import Session
    from synkworld._world import World

__all__ = ["Call", "Forwarder", "HandlerRegistry"]

log = logging.getLogger("synkworld.handlers")

_FAILURE_LOG_INTERVAL_S = 10.0
_KINDS = {int: "int", float: "float", str: "str", bool: "bool", list: "list", dict: "dict"}


class Forwarder(Protocol):
    """Runs a call on the process that owns a key (several processes on one map)."""

    def owns(self, key: str) -> bool:
        """Tells whether this process owns the key."""
        ...

    async def forward(self, key: str, name: str, args: Mapping[str, Any], session: Session) -> Any:
        """Runs the call there; returns its result or raises its error."""
        ...


@dataclass(frozen=True, slots=True)
class Call:
    """What a handler knows about the call it answers."""

    name: str
    identity: Any
    session: Session
    world: World
    args: Mapping[str, Any] = field(default_factory=dict)
    forwarder: Forwarder | None = None
    forwarded: bool = False
    """True on the process a call was forwarded to (it cannot be forwarded again)."""

    def owned_here(self, key: str) -> bool:
        """Tells whether this process owns `key` (always, unless several share the map)."""
        return self.forwarder is None or self.forwarder.owns(key)

    async def forward(self, key: str, args: Mapping[str, Any] | None = None) -> Any:
        """Runs this call on the process that owns `key`, whose tick carries its effect.

        For a handler that changes an object this process does not own (several
        processes on one map): the owner runs the same handler with the same
        arguments, and its result (or error) is this call's. Raises
        `HandlerFailedError` when there is no one to forward to. `args` replaces
        the call's arguments (to add what only this process knows).
        """
        if self.forwarder is None:
            raise HandlerFailedError(f"{self.name}: one process owns the whole map here")
        if self.forwarded:
            raise HandlerFailedError(
                f"{self.name}: {key!r} is not owned by the process this call was forwarded to"
            )
        return await self.forwarder.forward(
            key, self.name, self.args if args is None else args, self.session
        )


Handler = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class _Entry:
    fn: Handler
    params: Mapping[str, FieldSpec]
    takes_any: bool
    durable: bool


class HandlerRegistry:
    """Handlers by name; each call's arguments are checked against the handler's signature."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._durable_timeout_s: dict[str, float] = {}
        self._failures_logged: dict[str, tuple[float | None, int]] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def register(
        self, name: str, fn: Handler, *, durable: bool = False, durable_timeout_s: float = 10.0
    ) -> None:
        """Registers `fn(call, **args)` under `name`.

        Keyword parameters after the first declare the arguments: their
        annotations (int, float, str, bool, list, dict, Any, 'T | None') are
        checked and their defaults make them optional. A ``**kwargs`` parameter
        accepts any other argument unchecked.

        A `durable` handler is answered only once its changes are in the store
        (`World.flush_recent()`), so that a client never sees an acknowledgement
        of a change a crash then loses. That costs one small store write per
        call (the changes since the last tick, ahead of older pending ones). If the
        store takes longer than `durable_timeout_s`, the call is answered with
        `handler_failed`: the change is made and will be written when the store
        is back, but it is not durable yet.
        """
        if durable_timeout_s <= 0:
            raise ConfigError("durable_timeout_s must be positive")
        self._durable_timeout_s[name] = durable_timeout_s
        if not name or len(name) > 64:
            raise ConfigError("a handler name must have 1-64 characters")
        if name in self._entries:
            raise ConfigError(f"a handler named {name!r} is already registered")
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise ConfigError(f"handler {name!r} must take the Call as its first parameter")
        try:
            hints = typing.get_type_hints(fn)
        except Exception as e:
            raise ConfigError(f"handler {name!r}: cannot resolve annotations: {e}") from e
        specs: dict[str, FieldSpec] = {}
        takes_any = False
        for p in params[1:]:
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                takes_any = True
                continue
            if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
                raise ConfigError(f"handler {name!r}: arguments are passed by name only")
            kind, optional = _kind(hints.get(p.name, Any), name, p.name)
            if p.default is inspect.Parameter.empty:
                specs[p.name] = FieldSpec(p.name, kind, optional)
            else:
                specs[p.name] = FieldSpec(p.name, kind, optional, p.default)
        self._entries[name] = _Entry(fn, types.MappingProxyType(specs), takes_any, durable)

    async def call(self, call: Call, args: Mapping[str, Any]) -> Any:
        """Runs the handler; its failure becomes a ProtocolError with the right code."""
        entry = self._entries.get(call.name)
        if entry is None:
            raise NoHandlerError(f"no handler named {call.name!r}")
        kwargs: dict[str, Any] = {}
        for arg, value in args.items():
            spec = entry.params.get(arg)
            if spec is None:
                if not entry.takes_any:
                    raise BadArgsError(f"{call.name}: unexpected argument {arg!r}")
                kwargs[arg] = value
                continue
            try:
                kwargs[arg] = spec.coerce(value, call.name)
            except FieldError as e:
                raise BadArgsError(str(e).replace(f"{call.name}.", f"{call.name}: ", 1)) from None
        for arg, spec in entry.params.items():
            if arg not in kwargs and spec.required:
                raise BadArgsError(f"{call.name}: missing argument {arg!r}")
        try:
            result = entry.fn(call, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except ProtocolError:
            raise
        except (UnknownObjectError, DuplicateIdError, FieldError) as e:
            # An id or a value the client sent that the world refuses: the
            # client's mistake (counted against its error budget), not the
            # application's, and no traceback for the log.
            log.debug("handler %r refused its arguments: %s", call.name, e)
            raise BadArgsError(f"{call.name}: {e}") from None
        except Exception as e:
            self._log_failure(call.name)
            raise HandlerFailedError(f"{call.name} failed: {type(e).__name__}") from e
        if entry.durable:
            await self._made_durable(call)
        return result

    def _log_failure(self, name: str) -> None:
        """Logs a handler's exception with its traceback, at most once per interval per handler.

        Clients decide how often a handler runs: a failing one must not let
        them fill the log at the rate limit.
        """
        now = time.monotonic()
        last, skipped = self._failures_logged.get(name, (None, 0))
        if last is not None and now - last < _FAILURE_LOG_INTERVAL_S:
            self._failures_logged[name] = (last, skipped + 1)
            return
        self._failures_logged[name] = (now, 0)
        log.exception(
            "handler %r failed (%d more failures not logged in the last %gs)",
            name,
            skipped,
            _FAILURE_LOG_INTERVAL_S,
        )

    async def _made_durable(self, call: Call) -> None:
        timeout_s = self._durable_timeout_s[call.name]
        try:
            async with asyncio.timeout(timeout_s):
                await call.world.flush_recent()
        except (TimeoutError, StoreError) as e:
            log.warning(
                "durable handler %r: its changes are not in the store yet: %s", call.name, e
            )
            raise HandlerFailedError(
                f"{call.name}: the change is made, but the store did not take it within "
                f"{timeout_s:g}s; it is written once the store is back"
            ) from None


def _kind(hint: Any, handler: str, param: str) -> tuple[str, bool]:
    optional = False
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise ConfigError(f"handler {handler!r}: {param} may only be 'T | None'")
        optional, hint = True, args[0]
        origin = typing.get_origin(hint)
    if hint is Any:
        return "any", optional
    kind = _KINDS.get(origin if origin is not None else hint)
    if kind is None:
        raise ConfigError(f"handler {handler!r}: unsupported type {hint!r} for {param}")
    return kind, optional
