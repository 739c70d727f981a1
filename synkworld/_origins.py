"""Which web pages may open a WebSocket to the server: the `Origin` check of /ws upgrades.

A browser sends cookies and HTTP authentication with a WebSocket upgrade to any
site, whichever page asks, and the same-origin policy does not cover
WebSockets: a page on evil.example could open ws://game.example/ws in its
visitor's name (cross-site WebSocket hijacking). Browsers always send the page's
origin in the `Origin` header, which scripts cannot change, so the server
decides by it:

- no `Origin` header: not a browser (a bot, a test, a load generator), which
  could send any header it likes anyway: allowed;
- by default, an origin whose host and port are the request's `Host` (or the
  `X-Forwarded-Host` / `Forwarded: host=` a reverse proxy adds): the page was
  served by this server;
- with a list of origins (``["https://game.example"]``), exactly those
  (scheme, host and port; ``"*"`` allows any, ``"null"`` the opaque origin of
  sandboxed frames and file: pages).

Nothing here does I/O: the server passes the headers in and sends the refusal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable
from urllib.parse import urlsplit

from synkworld._errors import ConfigError

__all__ = ["OriginCheck", "parse_origin"]

log = logging.getLogger("synkworld.transport")

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_LOG_INTERVAL_S = 10.0

Origin = tuple[str, str, int]
"""scheme, host (lower case, ASCII), port (the scheme's default when not given)."""


def _ascii_host(host: str) -> str:
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        # IPv6 literals and hosts the codec refuses compare as they are.
        return host


def parse_origin(text: str) -> Origin | None:
    """`scheme://host[:port]` as (scheme, host, port); None for anything else (``null``, a URL)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if (
        not host
        or scheme not in _DEFAULT_PORTS
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        return None
    return scheme, _ascii_host(host), port if port is not None else _DEFAULT_PORTS[scheme]


def _host_port(host_header: str, default_port: int) -> tuple[str, int] | None:
    try:
        parts = urlsplit("//" + host_header.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return _ascii_host(parts.hostname), port if port is not None else default_port


class OriginCheck:
    """Decides which `Origin`s may open a WebSocket; counts and logs the refusals.

    `allowed_origins` None means the default (same host as the request);
    a collection means exactly those origins (``"*"``: any).
    """

    def __init__(
        self,
        allowed_origins: Collection[str] | None = None,
        *,
        log_interval_s: float = _LOG_INTERVAL_S,
    ) -> None:
        if isinstance(allowed_origins, str):
            # A lone string would be read as a collection of one-letter origins.
            raise ConfigError("allowed_origins is a list of origins, not a string")
        self.any = False
        self.opaque_null = False
        self.allowed: frozenset[Origin] | None = None
        if allowed_origins is not None:
            allowed: set[Origin] = set()
            for entry in allowed_origins:
                if entry == "*":
                    self.any = True
                elif entry == "null":
                    self.opaque_null = True
                elif (parsed := parse_origin(entry)) is not None:
                    allowed.add(parsed)
                else:
                    raise ConfigError(
                        f"allowed_origins: {entry!r} is not an origin: write scheme://host[:port] "
                        "as a browser sends it (https://game.example, http://localhost:8080), "
                        "or '*' for any"
                    )
            self.allowed = frozenset(allowed)
        self.refused = 0
        self._log_interval_s = log_interval_s
        self._logged_at: float | None = None
        self._not_logged = 0

    def allows(self, origin: str | None, hosts: Iterable[str]) -> bool:
        """True when a request with this `Origin` header (None: none) may upgrade.

        `hosts` are the request's `Host` and any forwarded hosts a proxy added.
        """
        if origin is None or self.any:
            return True
        if origin == "null":
            return self.opaque_null
        parsed = parse_origin(origin)
        if parsed is None:
            return False
        if self.allowed is not None:
            return parsed in self.allowed
        scheme, host, port = parsed
        # A Host without a port is at the default port of the page's scheme.
        default_port = _DEFAULT_PORTS[scheme]
        return any(_host_port(h, default_port) == (host, port) for h in hosts if h)

    def refusal(self, origin: str, host: str) -> str:
        """Counts a refused upgrade, logs it (once per interval), and says how to allow it."""
        self.refused += 1
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= self._log_interval_s:
            # Any page can make its visitors' browsers knock: the log must not
            # grow at the rate of someone else's traffic.
            log.info(
                "refused a WebSocket from origin %r to host %r "
                "(%d more refused and not logged in the last %gs)",
                origin,
                host,
                self._not_logged,
                self._log_interval_s,
            )
            self._logged_at = now
            self._not_logged = 0
        else:
            self._not_logged += 1
        return (
            f"origin {origin} may not open a WebSocket here (host {host}): allow it with "
            f"Server(allowed_origins=[{origin!r}]) or synkworld serve --allowed-origin {origin}\n"
        )
