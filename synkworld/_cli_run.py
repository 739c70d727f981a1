"""How the commands fail and log: one line on stderr for a user's mistake, JSON logs on request.

A mistake in how a command is started (a factory that cannot be imported, a
port in use, a store that cannot be reached, a bad environment value) is not a
bug of synkworld's: a traceback of 30 to 85 lines buries the one line that
says what to change. `run_command` prints that line and exits with 2;
`--debug` shows the traceback as well.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sys
import traceback
from collections.abc import Coroutine
from typing import Any

import orjson

from synkworld._errors import BusUnavailableError, ConfigError, StoreError

__all__ = ["USAGE_ERROR", "JsonFormatter", "configure_logging", "one_line", "run_command"]

USAGE_ERROR = 2
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")
_LISTEN_ERRORS = {
    errno.EADDRINUSE: "another server has it? choose a port with --port",
    errno.EACCES: "ports below 1024 need privileges: choose one with --port",
    errno.EADDRNOTAVAIL: "not an address of this machine: see --host",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors: time, level, logger, message, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure_logging(level: str, fmt: str = "text") -> None:
    """Sets up the root logger; an unknown level or format is a `ConfigError`."""
    if level.lower() not in LOG_LEVELS:
        raise ConfigError(f"unknown log level {level!r}: one of {', '.join(LOG_LEVELS)}")
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"unknown log format {fmt!r}: one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def one_line(e: BaseException) -> str | None:
    """What to tell a user who started a command wrongly, or None for a bug (a traceback)."""
    if isinstance(e, ConfigError):
        return str(e)
    if isinstance(e, StoreError):
        return f"the store failed: {e}"
    if isinstance(e, BusUnavailableError):
        return f"the cluster's Redis cannot be reached: {e}"
    if isinstance(e, OSError) and e.errno in _LISTEN_ERRORS:
        return f"cannot listen: {e.strerror} ({_LISTEN_ERRORS[e.errno]})"
    return None


def run_command(main: Coroutine[Any, Any, None], *, name: str, debug: bool) -> int:
    """Runs a command's coroutine; a user's mistake ends in one line and exit code 2."""
    try:
        asyncio.run(main)
    except KeyboardInterrupt:
        return 0
    except Exception as e:
        line = one_line(e)
        if line is None:
            raise
        if debug:
            traceback.print_exception(e)
        # Only an error raised by the application's own code has a traceback worth asking for.
        hint = " (--debug shows the traceback)" if e.__cause__ is not None and not debug else ""
        sys.stderr.write(f"{name}: {line}{hint}\n")
        return USAGE_ERROR
    return 0
