"""The aiohttp application: /ws, /healthz, /metrics, static files, hooks and the lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiohttp import web
from prometheus_client.core import Metric

from synkworld._access_log import AccessLogger
from synkworld._bus_backend import BusBackend
from synkworld._client_files import CLIENT_PATHS, ClientFile, client_file
from synkworld._client_protocol import ClientProtocol, RunCall
from synkworld._cluster._node import (
    ClusterNode,
    ClusterSettings,
    EpochStampedSource,
    region_loader,
)
from synkworld._connection import Connection, Dispatch
from synkworld._errors import ConfigError, ProtocolError, RefusedError, StoreError
from synkworld._handlers import Call, Handler, HandlerRegistry
from synkworld._http_guard import (
    AcceptErrorFilter,
    GuardedSite,
    Listener,
    default_max_connections,
)
from synkworld._limits import Limits
from synkworld._metrics import (
    MetricsSource,
    ServerMetrics,
    StatisticsCollector,
    cell_families,
    families,
)
from synkworld._monitor import Monitor
from synkworld._origins import OriginCheck
from synkworld._persistence import Persistence
from synkworld._protocol import MAX_CLIENT_FRAME_BYTES
from synkworld._sessions import Session
from synkworld._tick import TickLoop
from synkworld._wire_v2 import SUBPROTOCOL_V1, SUBPROTOCOL_V2
from synkworld._world import TickChanges, World
from synkworld.store import Store

__all__ = ["AccessLogger", "Server", "request_token"]

log = logging.getLogger("synkworld.transport")

# Connections the metrics port keeps open at once: a few scrapers, not the clients.
_METRICS_MAX_CONNECTIONS = 64

Authenticate = Callable[[web.Request, str | None], Any]
AuthorizeKeys = Callable[[Any, list[str]], Collection[str] | Awaitable[Collection[str]]]
SessionHook = Callable[[Session], Any]
H = TypeVar("H", bound=Handler)


def _client_file_handler(
    file: ClientFile,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    headers = {
        "ETag": file.etag,
        # Revalidated (a 304 when unchanged) after ten minutes: an upgraded
        # server's client reaches browsers soon, without a download per page.
        "Cache-Control": "public, max-age=600",
    }

    async def handle(request: web.Request) -> web.StreamResponse:
        if file.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=file.body, content_type=file.content_type, charset="utf-8", headers=headers
        )

    return handle


def _check_metrics_options(port: int | None, token: str | None) -> None:
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError(f"metrics_port must be a port (0 for any free one), not {port}")
    if token is not None and not token.strip():
        raise ConfigError("metrics_token is empty: give a token, or None for an open /metrics")


def request_token(request: web.Request) -> str | None:
    """The client's token: the `token` query parameter, or an `Authorization: Bearer` header."""
    token = request.query.get("token")
    if token:
        return token
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


class Server:
    """A synkworld server: one world, its tick loop, and the clients connected over /ws."""

    def __init__(
        self,
        world: World,
        *,
        tick_rate_hz: float = 20.0,
        limits: Limits | None = None,
        web_root: str | Path | None = None,
        static_dirs: dict[str, str | Path] | None = None,
        freeze_gc: bool = True,
        autotick: bool = True,
        loop: TickLoop | None = None,
        compression: bool = False,
        serve_client: bool = True,
        direct_writes: bool = True,
        allowed_origins: Collection[str] | None = None,
        metrics_port: int | None = None,
        metrics_host: str | None = None,
        metrics_token: str | None = None,
        monitor: bool | str = False,
    ) -> None:
        self.world = world
        self.limits = limits or (loop.limits if loop is not None else Limits())
        # A loop given is the server's own (tests and benches make it with a
        # fake clock, a bus, or a frame encoder of their own).
        self.loop = loop or TickLoop(world, tick_rate_hz=tick_rate_hz, limits=self.limits)
        if self.loop.world is not world:
            raise ConfigError("the tick loop given runs another world")
        self.loop.limits = self.limits
        self.handlers = HandlerRegistry()
        self.metrics = ServerMetrics()
        self.web_root = Path(web_root) if web_root is not None else None
        self.static_dirs = {p: Path(d) for p, d in (static_dirs or {}).items()}
        self.freeze_gc = freeze_gc
        # permessage-deflate (RFC 7692) for clients that offer it: a client's
        # bytes shrink 2.5-4x, for 25-60 µs of CPU per frame (each connection
        # keeps its own compression context, so frames are compressed per
        # client). For few clients or slow links; off by default.
        self.compression = compression
        # Without autotick nothing calls loop.step(): tests drive the ticks themselves.
        self.autotick = autotick
        # The JavaScript client at /synkworld/client.js (and client.d.ts).
        self.serve_client = serve_client
        # Frames written straight to idle sockets from the tick (see
        # Connection._direct_write); False sends every frame through aiohttp's
        # writer, which the bench compares with.
        self.direct_writes = direct_writes
        # Which pages may open /ws (see synkworld/_origins.py): by default those
        # this server served; a list for pages served from elsewhere.
        self._origins = OriginCheck(allowed_origins)
        # /metrics on a port of its own (and then not on the clients' port),
        # bound to `metrics_host`: the serving host under running(), 127.0.0.1
        # when embedded (setup), where the serving host is the application's.
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        # When set, /metrics answers only `Authorization: Bearer <token>` or ?token=.
        self.metrics_token = metrics_token
        _check_metrics_options(metrics_port, metrics_token)
        self.metrics_url: str | None = None
        self.authenticate: Authenticate | None = None
        self.authorize_keys: AuthorizeKeys | None = None
        self.on_connect: SessionHook | None = None
        self.on_disconnect: SessionHook | None = None
        self._shutdown_hooks: list[Callable[[], Awaitable[None]]] = []
        self._connections: dict[str, Connection] = {}
        self.persistence: Persistence | None = None
        self.cluster: ClusterNode | None = None
        self._metric_sources: list[MetricsSource] = [self._metric_families]
        self.metrics.registry.register(StatisticsCollector(self._metric_sources))
        self._accepting = False
        self._on_tick_failure: Callable[[], None] | None = None
        # From the application's startup to its cleanup (see _lifetime).
        self._running = False
        self._stopped = False
        self._ticking: asyncio.Task[None] | None = None
        self._tick_failure: BaseException | None = None
        self._host: str | None = None
        self._site: GuardedSite | None = None
        self._metrics_site: GuardedSite | None = None
        self.url: str | None = None
        self._dispatch = Dispatch(
            check_keys=self.allowed_keys,
            run_call=self._run_call,
            clock=self.loop.clock,
            tick=lambda: self.world.tick,
        )
        self.loop.on_tick_done(self.metrics.tick_duration.observe)
        self.loop.on_expired(self._close_lagging)
        # /monitor (see synkworld/_monitor.py): off (False, 404), behind its own
        # token (a string), or behind the authenticate hook (True).
        self.monitor: Monitor | None = self._make_monitor(monitor)

    # -- application API --------------------------------------------------------------

    def handler(
        self, name: str, *, durable: bool = False, durable_timeout_s: float = 10.0
    ) -> Callable[[H], H]:
        """Registers a call handler: ``@server.handler("move") def move(call, dx: float): ...``.

        With `durable`, the reply waits until the handler's changes are in the
        store (see `HandlerRegistry.register`).
        """

        def register(fn: H) -> H:
            self.handlers.register(name, fn, durable=durable, durable_timeout_s=durable_timeout_s)
            return fn

        return register

    def simulation(self, step: Callable[[float], None]) -> Callable[[float], None]:
        """Runs `step(dt_seconds)` at the start of every tick (usable as a decorator)."""
        self.loop.add_simulation(step)
        return step

    def on_changes(self, listener: Callable[[TickChanges], None]) -> None:
        """Calls `listener` with every tick's changes (persistence, a bus)."""
        self.loop.on_changes(listener)

    def persist(self, store: Store, **write_behind: Any) -> Persistence:
        """Writes the world's changes to `store` behind the tick, from `running()` on.

        Load the world from the store first (`load_documents`). The write-behind
        starts with the server and, at shutdown, after the last tick, flushes
        everything and closes the store. Keyword arguments go to `Persistence`.
        """
        if self.persistence is not None:
            raise ConfigError("the server already persists to a store")
        self.persistence = Persistence(self.world, store, **write_behind)
        self.loop.on_changes(self.persistence.on_changes)
        self.add_metrics(self.persistence.metric_families)
        return self.persistence

    def join_cluster(
        self,
        backend: BusBackend,
        *,
        settings: ClusterSettings | None = None,
        node: str | None = None,
    ) -> ClusterNode:
        """Serves one map with every process on `backend` (a Redis URL and world name).

        Owners (`settings.owner`) take regions of the map by lease, load their
        objects from the server's store (`persist`), simulate and write them;
        a gateway only serves clients. The world starts empty: every object
        comes from the store when its region is taken, so seed the store, not
        the world. Call before the server runs. See docs/cluster.md.
        """
        if self._running:
            raise ConfigError("join a cluster before the server runs")
        if self.cluster is not None:
            raise ConfigError("the server is already in a cluster")
        if len(self.world):
            raise ConfigError(
                f"the world holds {len(self.world)} objects: in a cluster each process "
                "loads the regions it owns from the store, so start it empty and seed the store"
            )
        settings = settings or ClusterSettings()
        cluster = ClusterNode(
            self.world,
            backend,
            settings=settings,
            tick_rate_hz=self.loop.tick_rate_hz,
            node=node,
            load=self._load_region,
            sessions=lambda: self.loop.sessions.values(),
            clock=self.loop.clock,
        )
        self.loop.port = cluster.port
        cluster.run_call = self._run_forwarded
        self.cluster = cluster
        self.add_metrics(cluster.metric_families)
        return cluster

    async def _load_region(self, region: str) -> list[dict[str, Any]]:
        if self.persistence is None or self.cluster is None:
            return []
        load = region_loader(
            self.persistence.store, self.cluster.regions, self.cluster.settings.channel_keys
        )
        return await load(region)

    async def _run_forwarded(
        self, name: str, args: Mapping[str, Any], sid: str, identity: Any
    ) -> Any:
        # A call another process forwarded here: its session lives there.
        session = Session(sid, self.world.grid, identity=identity, limits=self.limits)
        call = Call(
            name, identity, session, self.world, args=args, forwarder=self.cluster, forwarded=True
        )
        await self.loop.between_ticks()
        return await self.handlers.call(call, args)

    def _wire_cluster(self, cluster: ClusterNode) -> None:
        if self.persistence is None:
            if cluster.settings.owner:
                log.warning(
                    "an owner without a store: regions taken over start empty and "
                    "nothing survives a crash (call server.persist)"
                )
            return
        writer = self.persistence.writer
        writer.guard(EpochStampedSource(self.world, cluster.port), cluster.write_gate)
        cluster.port.forget = writer.forget
        cluster.port.rewrite = lambda ids: writer.mark(self.world.tick, ids, ())
        cluster.write_state = writer.statistics

    def configure(
        self,
        *,
        tick_rate_hz: float | None = None,
        limits: Limits | None = None,
        compression: bool | None = None,
        allowed_origins: Collection[str] | None = None,
        metrics_port: int | None = None,
        metrics_host: str | None = None,
        metrics_token: str | None = None,
        monitor: bool | str | None = None,
    ) -> None:
        """Changes settings given at construction; only before the server runs.

        What the command line's flags use, for factories that build their
        server without looking at the flags. None leaves a setting as it is.
        """
        if self._running:
            raise ConfigError("a running server cannot be reconfigured")
        if tick_rate_hz is not None:
            if not tick_rate_hz > 0:
                raise ConfigError("tick_rate_hz must be positive")
            if self.cluster is not None and tick_rate_hz != self.loop.tick_rate_hz:
                raise ConfigError("the tick rate is the cluster's: set it before join_cluster")
            self.loop.tick_rate_hz = float(tick_rate_hz)
        if limits is not None:
            self.limits = limits
            self.loop.limits = limits
        if compression is not None:
            self.compression = compression
        if allowed_origins is not None:
            self._origins = OriginCheck(allowed_origins)
        _check_metrics_options(metrics_port, metrics_token)
        if metrics_port is not None:
            self.metrics_port = metrics_port
        if metrics_host is not None:
            self.metrics_host = metrics_host
        if metrics_token is not None:
            self.metrics_token = metrics_token
        if monitor is not None:
            self.monitor = self._make_monitor(monitor)

    def _make_monitor(self, access: bool | str) -> Monitor | None:
        if access is False:
            return None
        return Monitor(self, access, identify=self._identity, token_of=request_token)

    def on_shutdown(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Awaits `hook()` during shutdown, after the last tick and the last frames."""
        self._shutdown_hooks.append(hook)

    @property
    def sessions(self) -> dict[str, Session]:
        """The connected sessions by id."""
        return {sid: c.session for sid, c in self._connections.items()}

    async def allowed_keys(self, identity: Any, keys: tuple[str, ...]) -> Collection[str]:
        """The keys among `keys` the authorization hook allows `identity` (all without a hook).

        The hook returns (or, if async, resolves to) the keys it allows. A hook
        that raises or answers something other than a collection of keys is a
        bug in the application: it is logged here and raised, and the client's
        message is refused with `forbidden`.
        """
        hook = self.authorize_keys
        if hook is None:
            return keys
        try:
            allowed = hook(identity, list(keys))
            if inspect.isawaitable(allowed):
                allowed = await allowed
        except Exception:
            log.exception("authorize_keys hook %r failed; the keys are refused", hook)
            raise
        if not isinstance(allowed, Collection) or isinstance(allowed, str | bytes):
            log.error(
                "authorize_keys hook %r returned %r, not a collection of the keys it allows; "
                "the keys are refused",
                hook,
                allowed,
            )
            raise TypeError(f"authorize_keys returned {type(allowed).__name__}")
        return allowed

    async def _run_call(self, session: Session, request: RunCall) -> Any:
        call = Call(
            request.name,
            session.identity,
            session,
            self.world,
            args=request.args,
            forwarder=self.cluster,
        )
        # Clients name the handler: only registered names become labels.
        label = request.name if request.name in self.handlers else "(unknown)"
        started = time.perf_counter()
        outcome = "ok"
        await self.loop.between_ticks()
        try:
            return await self.handlers.call(call, request.args)
        except ProtocolError as e:
            outcome = e.code
            raise
        finally:
            self.metrics.observe_call(label, outcome, time.perf_counter() - started)

    async def _identity(self, request: web.Request) -> Any:
        """The identity the authentication hook gives the request; raises the HTTP refusal."""
        hook = self.authenticate
        if hook is None:
            return None
        try:
            result = hook(request, request_token(request))
            if inspect.isawaitable(result):
                result = await result
        except RefusedError as e:
            self.metrics.refused_total += 1
            cls = web.HTTPUnauthorized if e.status == 401 else web.HTTPForbidden
            raise cls(text=e.reason) from None
        except web.HTTPException:
            self.metrics.refused_total += 1
            raise
        except Exception:
            log.exception("authenticate hook %r failed; the client is refused", hook)
            raise web.HTTPInternalServerError(text="authentication failed") from None
        if result is None:
            self.metrics.refused_total += 1
            raise web.HTTPUnauthorized(text="authentication refused")
        if not result:
            # False, "", {}, 0: most likely a hook that meant to refuse. Admitting
            # the client with that "identity" would let everyone in by mistake.
            log.error(
                "authenticate hook %r returned %r: neither an identity nor a refusal "
                "(return an identity, or None or raise RefusedError to refuse); "
                "the client is refused",
                hook,
                result,
            )
            raise web.HTTPInternalServerError(text="authentication failed")
        return result

    # -- the HTTP application ------------------------------------------------------------

    def make_app(self) -> web.Application:
        """A new aiohttp application serving only synkworld (`setup` done on it).

        `running()` serves it; any runner can (``web.run_app(server.make_app())``).
        """
        app = web.Application(middlewares=[self._request_started])
        self.setup(app)
        return app

    def setup(self, app: web.Application) -> None:
        """Mounts the server on `app`, an aiohttp application of the caller's.

        Adds /ws, /healthz, /metrics, the client (/synkworld/client.js) and
        the static files to its routes, next to the application's own routes
        and under its middleware, and ties the server's lifetime to it: on
        startup the server starts what `running()` starts (the tick loop, the
        persistence, the cluster, the metrics port); on shutdown it stops
        ticking and closes its clients with 1001, and on cleanup it runs the
        shutdown hooks and flushes the store. Serve `app` with
        ``web.run_app(app, access_log_class=synkworld.AccessLogger)`` or an
        `AppRunner`. One application per server.
        """
        if self._running:
            raise ConfigError("the server runs already: set it up before its application starts")
        self._add_routes(app.router)
        app.cleanup_ctx.append(self._lifetime)
        app.on_shutdown.append(self._on_app_shutdown)

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/ws", self._ws_handler)
        router.add_get("/healthz", self._healthz)
        router.add_get("/metrics", self._metrics)
        if self.monitor is not None:
            self.monitor.add_routes(router)  # before the static files, which would shadow it
        if self.serve_client:
            for path in CLIENT_PATHS:
                router.add_get(path, _client_file_handler(client_file(path)))
        for prefix, directory in self.static_dirs.items():
            router.add_static(prefix, directory, show_index=False)
        if self.web_root is not None:
            root = self.web_root

            async def index(request: web.Request) -> web.StreamResponse:
                return web.FileResponse(root / "index.html")

            router.add_get("/", index)
            router.add_static("/", root, show_index=False)

    @web.middleware
    async def _request_started(self, request: web.Request, handler: Any) -> web.StreamResponse:
        # The request's headers are complete: the connection is past the guard's deadline.
        for site in (self._site, self._metrics_site):
            if site is not None and site.guard is not None:
                site.guard.request_started(request.transport)
        response: web.StreamResponse = await handler(request)
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {
            "ok": True,
            "tick": self.world.tick,
            "clients": len(self._connections),
        }
        if self.cluster is not None:
            body["node"] = self.cluster.node
            body["regions"] = len(self.cluster.port.owned)
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics_port is not None:
            # Moved to its own port, so that the clients' port need not expose it.
            raise web.HTTPNotFound(text=f"/metrics is served on port {self.metrics_port}\n")
        return self._scrape(request)

    async def _metrics_on_own_port(self, request: web.Request) -> web.Response:
        return self._scrape(request)

    def _scrape(self, request: web.Request) -> web.Response:
        token = self.metrics_token
        if token is not None:
            given = request_token(request)
            if given is None or not secrets.compare_digest(given.encode(), token.encode()):
                raise web.HTTPUnauthorized(
                    text="/metrics needs its token: Authorization: Bearer <token> or ?token=\n",
                    headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
        return web.Response(text=self.metrics_text(), content_type="text/plain", charset="utf-8")

    def metrics_text(self) -> str:
        """Every metric in the Prometheus text format."""
        return self.metrics.text()

    def add_metrics(self, source: MetricsSource) -> None:
        """Adds what `source()` returns (prometheus_client metric families) to every scrape."""
        self._metric_sources.append(source)

    def _metric_families(self) -> list[Metric]:
        """The server's own metrics: the statistics of the loop, the world and the transport."""
        t = self.loop.statistics()
        w = self.world.statistics()
        m = self.metrics
        lagging = sum(1 for c in self._connections.values() if c.session.lagging)
        compressed = sum(1 for c in self._connections.values() if c.ws.compress)
        ph = t.phases_total
        values = [
            ("synkworld_tick", "gauge", "The last tick number.", t.tick),
            ("synkworld_tick_rate_hz", "gauge", "The target tick rate.", t.tick_rate_hz),
            (
                "synkworld_ticks_behind_total",
                "counter",
                "Ticks that overran their slot in the schedule.",
                t.ticks_behind,
            ),
            ("synkworld_clients", "gauge", "Connected clients.", len(self._connections)),
            ("synkworld_clients_lagging", "gauge", "Clients owed a resync.", lagging),
            (
                "synkworld_clients_compressed",
                "gauge",
                "Clients whose frames are compressed (permessage-deflate).",
                compressed,
            ),
            ("synkworld_objects", "gauge", "Objects in the world.", w.objects),
            ("synkworld_keys", "gauge", "Keys holding objects.", w.keys),
            (
                "synkworld_connections_total",
                "counter",
                "WebSocket connections accepted.",
                m.connections_total,
            ),
            ("synkworld_refused_total", "counter", "Upgrades refused (401).", m.refused_total),
            (
                "synkworld_origins_refused_total",
                "counter",
                "Upgrades refused for their Origin (403).",
                self._origins.refused,
            ),
            ("synkworld_frames_sent_total", "counter", "Frames written.", m.frames_written),
            ("synkworld_bytes_sent_total", "counter", "Bytes of frames written.", m.bytes_written),
            ("synkworld_frames_queued_total", "counter", "Tick frames queued.", t.frames_queued),
            (
                "synkworld_frames_dropped_total",
                "counter",
                "Tick frames dropped for slow clients.",
                t.frames_dropped,
            ),
            ("synkworld_resyncs_total", "counter", "Resyncs sent.", t.resyncs),
            (
                "synkworld_clients_closed_slow_total",
                "counter",
                "Clients closed with 1013 for staying behind.",
                m.closed_slow_total,
            ),
            (
                "synkworld_simulation_errors_total",
                "counter",
                "Simulation steps that raised.",
                t.simulation_errors,
            ),
        ]
        phases = {
            "simulate": ph.simulate_s,
            "commit": ph.commit_s,
            "bus": ph.bus_s,
            "frames": ph.frames_s,
        }
        labelled = [
            (
                "synkworld_tick_phase_seconds_total",
                "counter",
                "Time spent in each phase of the ticks.",
                "phase",
                phases,
            ),
            (
                "synkworld_errors_total",
                "counter",
                "Errors sent, by code.",
                "code",
                {code: float(n) for code, n in m.errors.items()},
            ),
        ]
        site = self._site
        if site is not None and site.guard is not None:
            g = site.guard.statistics()
            values += [
                ("synkworld_http_connections", "gauge", "Open HTTP connections.", g.connections),
                (
                    "synkworld_http_waiting_for_request",
                    "gauge",
                    "Connections that have not sent a request yet.",
                    g.waiting_for_request,
                ),
                (
                    "synkworld_http_timed_out_total",
                    "counter",
                    "Connections closed for sending no request in time.",
                    g.timed_out,
                ),
                (
                    "synkworld_http_refused_total",
                    "counter",
                    "Connections refused at a limit (503).",
                    g.refused,
                ),
                (
                    "synkworld_http_evicted_total",
                    "counter",
                    "Connections without a request closed to make room.",
                    g.evicted,
                ),
            ]
        return families(values, labelled) + cell_families(t.cells)

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        if not self._accepting:
            raise web.HTTPServiceUnavailable(text="the server is shutting down")
        self._check_origin(request)
        identity = await self._identity(request)
        limits = self.limits
        # A cluster's stream entries carry v1 batches only (docs/protocol-v2.md).
        offered = (
            (SUBPROTOCOL_V1,) if self.cluster is not None else (SUBPROTOCOL_V2, SUBPROTOCOL_V1)
        )
        ws = web.WebSocketResponse(
            max_msg_size=MAX_CLIENT_FRAME_BYTES,
            compress=self.compression,
            heartbeat=limits.heartbeat_s,
            protocols=offered,
        )
        await ws.prepare(request)
        transport = request.transport
        session = Session(
            secrets.token_urlsafe(9),
            self.world.grid,
            identity=identity,
            limits=limits,
            wire_version=2 if ws.ws_protocol == SUBPROTOCOL_V2 else 1,
        )
        protocol = ClientProtocol(
            session,
            limits=limits,
            now=self.loop.clock(),
            checks_keys=self.authorize_keys is not None,
            on_error=self._count_error,
        )
        # A compressed connection's frames all go through aiohttp's writer,
        # which owns the connection's compression context: no direct writes.
        conn = Connection(
            ws,
            protocol,
            self._dispatch,
            self.metrics,
            transport,
            direct_writes=self.direct_writes and not ws.compress,
        )
        protocol.hello(self.world.tick, self.loop.tick_rate_hz, self.world.grid.describe())
        sid = session.sid
        self._connections[sid] = conn
        self.metrics.connections_total += 1
        self.loop.attach(session)
        try:
            await self._call_hook(self.on_connect, session)
            await conn.run()
        finally:
            self.loop.detach(session)
            self._connections.pop(sid, None)
            session.clear()
            await self._call_hook(self.on_disconnect, session)
        return ws

    def _check_origin(self, request: web.Request) -> None:
        """Refuses (403) an upgrade from a page the server may not talk to (see _origins.py)."""
        headers = request.headers
        origin = headers.get("Origin")
        host = headers.get("Host", "")
        # A proxy that rewrites Host says what the browser asked for here; no
        # page's script can set these headers, so they are as good as Host.
        hosts = [host, *headers.getall("X-Forwarded-Host", [])]
        hosts += [f["host"] for f in request.forwarded if "host" in f]
        if not self._origins.allows(origin, (h.split(",")[0] for h in hosts)):
            assert origin is not None
            raise web.HTTPForbidden(text=self._origins.refusal(origin, host))

    async def _call_hook(self, hook: SessionHook | None, session: Session) -> None:
        if hook is None:
            return
        try:
            result = hook(session)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("hook %r failed for session %s", hook, session.sid)

    def _close_lagging(self, session: Session) -> None:
        conn = self._connections.get(session.sid)
        if conn is not None and conn.close_code is None:
            self.metrics.closed_slow_total += 1
            log.info(
                "session %s: closed, behind for over %gs", session.sid, self.limits.lag_timeout_s
            )
            conn.too_far_behind()

    def _count_error(self, code: str) -> None:
        self.metrics.errors[code] += 1

    # -- lifecycle ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serves on host:port while the block runs; yields the base URL (http://host:port).

        Serves `make_app()` through a `GuardedSite`; the application's startup
        and cleanup start and stop the server, exactly as for an application
        the server is mounted on with `setup`.
        """
        limits = self.limits
        self._host = host
        runner = web.AppRunner(
            self.make_app(),
            handle_signals=False,
            shutdown_timeout=5.0,
            keepalive_timeout=limits.keepalive_timeout_s,
            access_log_class=AccessLogger,
        )
        # Bound first: a port in use fails before anything has started.
        listener = Listener()
        await listener.bind(host, port)
        try:
            # The startup (_lifetime) comes before the site accepts: the first
            # client finds the store, the cluster and the tick running.
            await runner.setup()
            site = GuardedSite(
                runner,
                host,
                port,
                header_timeout_s=limits.header_timeout_s,
                max_connections=limits.max_connections or default_max_connections(),
                max_connections_per_address=limits.max_connections_per_address,
                listener=listener,
            )
            self._site = site
            await site.start()
        except BaseException:
            listener.close()
            await runner.cleanup()
            raise
        addresses = runner.addresses
        bound_port = addresses[0][1] if addresses else port
        self.url = f"http://{host}:{bound_port}"
        log.info("serving on %s", self.url)
        try:
            yield self.url
        finally:
            # Stops listening, then the application's shutdown and cleanup stop the server.
            await runner.cleanup()

    async def _lifetime(self, app: web.Application) -> AsyncIterator[None]:
        """The server's part of its application's lifetime, a cleanup context (see `setup`)."""
        if self._running:
            raise ConfigError("the server runs already: one application per server")
        self._running = True
        self._stopped = False
        self._tick_failure = None
        loop = asyncio.get_running_loop()
        previous_handler = loop.get_exception_handler()
        accept_filter = AcceptErrorFilter(previous_handler)
        loop.set_exception_handler(accept_filter)

        def restore_exception_handler() -> None:
            # Unless the application put in a handler of its own meanwhile.
            if loop.get_exception_handler() is accept_filter:
                loop.set_exception_handler(previous_handler)

        try:
            async with contextlib.AsyncExitStack() as stack:
                stack.callback(restore_exception_handler)
                if self.metrics_port is not None:
                    await self._start_metrics_site(stack)
                if self.persistence is not None:
                    # Entered before the tick starts, left after the last tick and the
                    # last frames: the final flush sees every change.
                    await stack.enter_async_context(self.persistence)
                if self.cluster is not None:
                    self._wire_cluster(self.cluster)
                    await self.cluster.start()
                    self.cluster.spawn()
                    stack.push_async_callback(self.cluster.close)
                if self.freeze_gc:
                    # The world's long-lived objects would otherwise be rescanned by every
                    # full collection, a pause that grows with the world.
                    gc.collect()
                    gc.freeze()
                if self.autotick:
                    # The tick task lives exactly as long as the application: awaited at
                    # its shutdown (_stop_serving), cancelled at the latest here. A
                    # TaskGroup would wrap exceptions of the caller's block in an
                    # ExceptionGroup.
                    ticking = asyncio.create_task(self.loop.run())
                    ticking.add_done_callback(self._tick_loop_done)
                    self._ticking = ticking
                    stack.callback(ticking.cancel)
                self._accepting = True
                try:
                    yield
                finally:
                    await self._stop_serving()
                    await self._finish()
        finally:
            self._accepting = False
            self._ticking = None
            self._running = False
        if self._tick_failure is not None:
            # Raised once the store has its last changes: a server that stopped
            # ticking must not end as if all went well.
            failure, self._tick_failure = self._tick_failure, None
            raise failure

    async def _start_metrics_site(self, stack: contextlib.AsyncExitStack) -> None:
        assert self.metrics_port is not None
        host = self.metrics_host or self._host or "127.0.0.1"
        app = web.Application(middlewares=[self._request_started])
        app.router.add_get("/metrics", self._metrics_on_own_port)
        runner = web.AppRunner(
            app,
            handle_signals=False,
            shutdown_timeout=1.0,
            keepalive_timeout=self.limits.keepalive_timeout_s,
            access_log_class=AccessLogger,
        )
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = GuardedSite(
            runner,
            host,
            self.metrics_port,
            header_timeout_s=self.limits.header_timeout_s,
            # A few scrapers; the clients' limits are for the clients' port.
            max_connections=_METRICS_MAX_CONNECTIONS,
            max_connections_per_address=None,
            backlog=_METRICS_MAX_CONNECTIONS,
        )
        self._metrics_site = site
        await site.start()
        addresses = runner.addresses
        bound_port = addresses[0][1] if addresses else self.metrics_port
        self.metrics_url = f"http://{host}:{bound_port}/metrics"
        log.info("metrics on %s", self.metrics_url)

    def _tick_loop_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # Said at once, not at shutdown: a server that no longer ticks must not look alive.
        log.critical("the tick loop stopped", exc_info=task.exception())
        self._accepting = False
        if self._on_tick_failure is not None:
            self._on_tick_failure()

    async def _on_app_shutdown(self, app: web.Application) -> None:
        await self._stop_serving()

    async def _stop_serving(self) -> None:
        """Stops the tick and closes every client with 1001: the application's shutdown.

        aiohttp calls it after its sites stopped listening and before it
        cancels the request handlers still running (/ws ones among them), so
        clients get their closing handshake. Once: the cleanup calls it too,
        for an application whose shutdown never came (a failed startup).
        """
        if self._stopped or not self._running:
            return
        self._stopped = True
        self._accepting = False
        ticking = self._ticking
        if self.cluster is not None and ticking is not None and not ticking.done():
            # Regions migrate at ticks: hand them over while still ticking.
            try:
                await self.cluster.leave(timeout_s=self.cluster.settings.leave_timeout_s)
            except Exception:
                log.exception("leaving the cluster failed; its regions will be taken over")
        self.loop.stop()
        if ticking is not None:
            # Not raised here: an exception in an application's shutdown would
            # skip its cleanup, and with it the store's last flush.
            await asyncio.wait([ticking])
            if not ticking.cancelled() and ticking.exception() is not None:
                self._tick_failure = ticking.exception()
        for conn in list(self._connections.values()):
            conn.going_away()
        waiting = [c.finished.wait() for c in self._connections.values()]
        if waiting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waiting), timeout=5.0)

    async def _finish(self) -> None:
        """The shutdown hooks and the cluster's last flush, after the last tick and frames."""
        for hook in self._shutdown_hooks:
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook %r failed", hook)
        if self.cluster is not None and self.cluster.port.owned and self.persistence is not None:
            # Regions nobody took: written before their leases go, so that whoever
            # takes them over loads the last state.
            try:
                async with asyncio.timeout(self.persistence.shutdown_flush_timeout_s):
                    await self.persistence.flush()
            except (TimeoutError, StoreError) as e:
                log.error("regions released before their last changes were written: %s", e)
        log.info("stopped at tick %d", self.world.tick)

    async def serve_forever(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        ready: Callable[[str], None] | None = None,
    ) -> None:
        """Serves until SIGINT or SIGTERM, then shuts down gracefully.

        `ready(url)` is called once the server accepts connections. A second
        SIGINT or SIGTERM during the shutdown stops waiting for the store: what
        it has not taken goes to the spill journal at once.
        """
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        received = 0

        def on_signal(sig: signal.Signals) -> None:
            nonlocal received
            received += 1
            if received == 1:
                log.info("%s: shutting down", sig.name)
                stop.set()
            elif self.persistence is not None:
                log.warning("%s again: not waiting for the store any longer", sig.name)
                self.persistence.skip_flush_wait()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        self._on_tick_failure = stop.set
        try:
            async with self.running(host, port) as url:
                if ready is not None:
                    ready(url)
                await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
