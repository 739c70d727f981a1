"""Every exception synkworld raises.

Callers catch the bases; the code raises the leaves::

    SynkError
    ├── ConfigError            a setting or a map definition is invalid
    ├── DeclarationError       a SynkObject subclass is declared wrongly
    ├── FieldError             a value does not fit a declared field
    │   └── DocumentError      a stored document cannot become an object
    ├── WorldError             an operation does not fit the world's state
    │   ├── UnknownObjectError
    │   └── DuplicateIdError
    ├── RefusedError           the authentication hook refuses a client (HTTP 401)
    ├── BusUnavailableError    the medium between processes cannot be reached (retry later)
    ├── StoreError             persistence failed
    │   ├── StoreUnavailableError   the database cannot be reached (retry later)
    │   └── DocumentRejectedError   the store refuses one document for good
    ├── ProtocolViolationError a server sent what the protocol forbids (seen by a mirror)
    └── ProtocolError          a client message is refused; carries the wire code
        ├── BadJsonError            bad_json
        ├── BadMessageError         bad_message
        ├── UnknownMessageError     unknown_message
        ├── TooManyKeysError        too_many_keys
        ├── RateLimitedError        rate_limited
        ├── ForbiddenError          forbidden
        ├── NoHandlerError          no_handler
        ├── BadArgsError            bad_args
        └── HandlerFailedError      handler_failed

`ConfigError`, `DeclarationError` and `FieldError` are also `ValueError` or
`TypeError`, and `UnknownObjectError` a `KeyError`, so that code written
against the builtins keeps working. Besides the tree, synkworld raises plain
builtins only for mistakes in the calling code, never for the state of the
world, a client or a database:

- `TypeError` for an argument of the wrong type (`Region` bounds that are not
  numbers), `ValueError` for one of the wrong shape (`World.set_positions`
  with arrays of different lengths, `GridMap.keys_in_rect` with a reversed
  rectangle, an upsert without a str `_id`);
- `RuntimeError` for a resource used in the wrong state (marks on a closed
  write-behind, a writer started twice).
"""

from __future__ import annotations

from typing import ClassVar


class SynkError(Exception):
    """The base of every synkworld error."""


class ConfigError(SynkError, ValueError):
    """A setting or a map definition is invalid."""


class DeclarationError(SynkError, TypeError):
    """A SynkObject subclass is declared wrongly."""


class FieldError(SynkError, ValueError):
    """A value does not fit a declared field of an object type."""


class DocumentError(FieldError):
    """A stored document cannot be turned into an object."""

    def __init__(self, message: str, *, doc_id: object = None) -> None:
        super().__init__(message)
        self.doc_id = doc_id


class WorldError(SynkError):
    """An operation does not fit the world's current state."""


class UnknownObjectError(WorldError, KeyError):
    """No object with that id is in the world."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown object"


class DuplicateIdError(WorldError):
    """An object with that id is already in the world."""


class RefusedError(SynkError):
    """Raised by an `authenticate` hook to refuse a client: the upgrade gets HTTP `status`.

    Returning None refuses too. Any other falsy value (False, "", {}, 0) is
    taken for a bug in the hook, never for an identity: the client gets HTTP
    500 and the server logs the mistake.
    """

    def __init__(self, reason: str = "authentication refused", *, status: int = 401) -> None:
        if status not in (401, 403):
            raise ConfigError(f"a refusal answers 401 or 403, not {status!r}")
        super().__init__(reason)
        self.reason = reason
        self.status = status


class BusUnavailableError(SynkError):
    """The bus between processes (Redis) cannot be reached now; the caller retries later."""


class StoreError(SynkError):
    """Persistence failed."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached now; the write is kept and retried."""


class DocumentRejectedError(StoreError):
    """The store refuses a document for good: retrying the same document cannot succeed."""

    def __init__(self, reason: str, *, doc_id: str | None = None) -> None:
        super().__init__(reason if doc_id is None else f"document {doc_id!r}: {reason}")
        self.reason = reason
        self.doc_id = doc_id


class ProtocolViolationError(SynkError):
    """A server sent what the protocol forbids; a strict `Mirror` raises it."""


class ProtocolError(SynkError):
    """A client message is refused; `code` is the protocol's error code."""

    code: ClassVar[str] = "bad_message"

    def __init__(self, message: str, *, call_id: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.call_id = call_id


class BadJsonError(ProtocolError):
    """The frame is not a JSON object."""

    code = "bad_json"


class BadMessageError(ProtocolError):
    """A known message kind carries wrong or missing fields."""

    code = "bad_message"


class UnknownMessageError(ProtocolError):
    """The message kind `m` is not one the server knows."""

    code = "unknown_message"


class TooManyKeysError(ProtocolError):
    """The subscription would exceed the number of keys a client may hold."""

    code = "too_many_keys"


class RateLimitedError(ProtocolError):
    """The client sends messages faster than its allowance."""

    code = "rate_limited"


class ForbiddenError(ProtocolError):
    """The authorization hook refused some of the keys, or an action."""

    code = "forbidden"


class NoHandlerError(ProtocolError):
    """No call handler is registered under that name."""

    code = "no_handler"


class BadArgsError(ProtocolError):
    """A call's arguments do not fit its handler."""

    code = "bad_args"


class HandlerFailedError(ProtocolError):
    """A call handler raised an exception."""

    code = "handler_failed"


def error_for_code(code: str, message: str) -> ProtocolError:
    """The `ProtocolError` of a wire code (one forwarded from another process)."""
    for cls in ProtocolError.__subclasses__():
        if cls.code == code:
            return cls(message)
    return HandlerFailedError(message)
