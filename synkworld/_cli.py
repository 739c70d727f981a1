"""The `synkworld` command: serve an application; run the demo; run the load test."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from synkworld._cluster._node import ClusterSettings
from synkworld._errors import BusUnavailableError, ConfigError
from synkworld._limits import Limits
from synkworld._server import Server

__all__ = ["ServeOptions", "join_cluster", "load_factory", "main"]

log = logging.getLogger("synkworld")


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """What the command line says about serving; a factory may take it to build its server."""

    host: str
    port: int
    tick_rate_hz: float | None
    limits: dict[str, Any]
    compression: bool = False
    redis: str | None = None
    """A Redis URL: serve one map with the other processes on it (with `world`)."""
    world: str = "default"
    gateway: bool = False
    """In a cluster, own no regions: only serve clients."""
    node: str | None = None
    region_cells: int | None = None
    lease_ttl_s: float | None = None

    @property
    def clustered(self) -> bool:
        """Several processes share the map (the factory should start its world empty)."""
        return self.redis is not None


_LIMIT_TYPES = {
    f.name: (int if str(f.type).split(" |")[0] in ("int", "<class 'int'>") else float)
    for f in fields(Limits)
}


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"SYNKWORLD_{name.upper()}", default)


def _add_serve_flags(p: argparse.ArgumentParser, *, port: int) -> None:
    p.add_argument(
        "--host", default=_env("host", "127.0.0.1"), help="address to bind [SYNKWORLD_HOST]"
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(_env("port", str(port)) or port),
        help="port [SYNKWORLD_PORT]",
    )
    p.add_argument(
        "--tick-rate-hz",
        type=float,
        default=float(v) if (v := _env("tick_rate_hz")) else None,
        help="ticks per second [SYNKWORLD_TICK_RATE_HZ]",
    )
    for name, typ in _LIMIT_TYPES.items():
        env = _env(name)
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=typ,
            default=typ(env) if env is not None else None,
            help=f"limit {name} (default {getattr(Limits(), name)}) [SYNKWORLD_{name.upper()}]",
        )
    p.add_argument(
        "--compression",
        action="store_true",
        default=(_env("compression", "") or "").lower() in ("1", "true", "yes"),
        help="permessage-deflate for clients that offer it (CPU per client and frame; "
        "for few clients or slow links) [SYNKWORLD_COMPRESSION]",
    )
    p.add_argument("--log-level", default=_env("log_level", "INFO"), help="[SYNKWORLD_LOG_LEVEL]")
    p.add_argument(
        "--redis",
        default=_env("redis"),
        help="a Redis URL: share one map with every process on it and --world [SYNKWORLD_REDIS]",
    )
    p.add_argument(
        "--world",
        default=_env("world", "default"),
        help="the shared map's name in Redis [SYNKWORLD_WORLD]",
    )
    p.add_argument(
        "--gateway",
        action="store_true",
        default=(_env("gateway", "") or "").lower() in ("1", "true", "yes"),
        help="with --redis: own no regions, only serve clients [SYNKWORLD_GATEWAY]",
    )
    p.add_argument("--node", default=_env("node"), help="this process's name in the cluster")
    p.add_argument(
        "--region-cells",
        type=int,
        default=int(v) if (v := _env("region_cells")) else None,
        help="with --redis: a region is N x N cells (default 8; every process the same)",
    )
    p.add_argument(
        "--lease-ttl-s",
        type=float,
        default=float(v) if (v := _env("lease_ttl_s")) else None,
        help="with --redis: how long a silent owner keeps its regions (default 5)",
    )


def _options(a: argparse.Namespace) -> ServeOptions:
    limits = {n: getattr(a, n) for n in _LIMIT_TYPES if getattr(a, n) is not None}
    return ServeOptions(
        a.host,
        a.port,
        a.tick_rate_hz,
        limits,
        compression=a.compression,
        redis=a.redis,
        world=a.world,
        gateway=a.gateway,
        node=a.node,
        region_cells=a.region_cells,
        lease_ttl_s=a.lease_ttl_s,
    )


def load_factory(spec: str) -> Any:
    """Imports `module:attribute`."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"expected module:factory, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from None


async def build_server(factory: Any, options: ServeOptions) -> Server:
    """Calls the application factory (with the options if it takes one) and applies the flags."""
    params = inspect.signature(factory).parameters
    result = factory(options) if params else factory()
    if inspect.isawaitable(result):
        result = await result
    if not isinstance(result, Server):
        raise ConfigError(f"the factory returned {type(result).__name__}, not a synkworld Server")
    server = result
    if options.tick_rate_hz is not None and options.tick_rate_hz <= 0:
        raise ConfigError("--tick-rate-hz must be positive")
    server.configure(
        tick_rate_hz=options.tick_rate_hz,
        limits=replace(server.limits, **options.limits) if options.limits else None,
        compression=True if options.compression else None,
    )
    if options.redis is not None:
        join_cluster(server, options)
    return server


def join_cluster(server: Server, options: ServeOptions) -> None:
    """Joins the map shared through `options.redis` (the `redis` extra must be installed)."""
    assert options.redis is not None
    try:
        from synkworld.bus.redis import RedisBackend
    except ImportError as e:
        raise ConfigError(
            f"--redis needs the redis package: pip install 'synkworld[redis]' ({e})"
        ) from None
    settings = ClusterSettings(owner=not options.gateway)
    if options.region_cells:
        settings = replace(settings, region_cells=options.region_cells)
    if options.lease_ttl_s:
        settings = replace(settings, lease_ttl_s=options.lease_ttl_s)
    backend = RedisBackend(options.redis, options.world)
    server.join_cluster(backend, settings=settings, node=options.node)


async def _serve(spec: str, options: ServeOptions) -> None:
    server = await build_server(load_factory(spec), options)
    try:
        await server.serve_forever(options.host, options.port)
    except BusUnavailableError as e:
        raise ConfigError(f"cannot reach the cluster's Redis at {options.redis}: {e}") from None


def _from_checkout(command: str, rest: list[str]) -> int:
    """Runs the demo or the load test, which live in the repository, not the package."""
    module = "examples.map_demo.__main__" if command == "demo" else "bench.gridworld"
    sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError:
        sys.stderr.write(
            f"synkworld {command}: run it from a synkworld checkout (no {module} here)\n"
        )
        return 2
    if command == "demo":
        sys.argv = ["synkworld demo", *rest]
        mod.main()
        return 0
    return int(mod.main(rest))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `synkworld` command."""
    parser = argparse.ArgumentParser(prog="synkworld", description="synkworld: map-based worlds")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="serve an application: synkworld serve module:factory"
    )
    serve.add_argument("factory", help="module:callable returning a synkworld.Server")
    _add_serve_flags(serve, port=8080)
    commands.add_parser(
        "demo", help="run the demo map (from a checkout): same flags as python -m examples.map_demo"
    )
    commands.add_parser(
        "bench", help="run the grid-world load test (from a checkout): see bench/README.md"
    )
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("demo", "bench"):
        return _from_checkout(args[0], args[1:])
    a = parser.parse_args(args)
    logging.basicConfig(
        level=getattr(logging, str(a.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if a.command == "serve":
            asyncio.run(_serve(a.factory, _options(a)))
    except ConfigError as e:
        parser.exit(2, f"synkworld: {e}\n")
    except KeyboardInterrupt:
        pass
    return 0
