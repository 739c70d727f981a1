"""The server's access log: scrapes at DEBUG, tokens masked."""

from __future__ import annotations

import logging
from typing import Any, cast

from aiohttp import web
from aiohttp.web_log import AccessLogger as AiohttpAccessLogger

__all__ = ["AccessLogger"]


class _AtDebug(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger whose INFO records are DEBUG ones: aiohttp's access log writes at INFO."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG if level == logging.INFO else level, msg, *args, **kwargs)


class AccessLogger(AiohttpAccessLogger):
    """aiohttp's access log, with scrapes (/healthz, /metrics) at DEBUG and tokens masked.

    `running()` and `serve_forever()` use it; an application that embeds the
    server (`Server.setup`) passes it to its runner:
    ``web.run_app(app, access_log_class=synkworld.AccessLogger)``.
    """

    QUIET_PATHS = frozenset({"/healthz", "/metrics", "/monitor/data"})

    def __init__(
        self, logger: logging.Logger, log_format: str = AiohttpAccessLogger.LOG_FORMAT
    ) -> None:
        super().__init__(logger, log_format)
        # Monitoring asks every few seconds; at INFO its lines would bury the rest.
        self._quiet = AiohttpAccessLogger(cast(logging.Logger, _AtDebug(logger)), log_format)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        quiet = request.path in self.QUIET_PATHS
        if quiet and not self.logger.isEnabledFor(logging.DEBUG):
            return
        if "token=" in request.query_string and "token" in request.query:
            # Tokens in the query (/ws?token=, /metrics?token=) are credentials:
            # the log keeps that one was given, not what it was.
            request = request.clone(rel_url=request.rel_url.update_query(token="-"))
        if quiet:
            self._quiet.log(request, response, time)
        else:
            super().log(request, response, time)
