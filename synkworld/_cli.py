"""The `synkworld` command: serve an application; run the demo; run the load test."""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any, NoReturn

from synkworld._cli_run import USAGE_ERROR, configure_logging, run_command
from synkworld._cluster._node import ClusterSettings
from synkworld._errors import BusUnavailableError, ConfigError, StoreError
from synkworld._limits import Limits
from synkworld._serve_options import ServeOptions
from synkworld._server import Server
from synkworld._version import __version__

__all__ = ["ServeOptions", "join_cluster", "load_factory", "main"]


_LIMIT_TYPES = {
    f.name: (int if str(f.type).split(" |")[0] in ("int", "<class 'int'>") else float)
    for f in fields(Limits)
}


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"SYNKWORLD_{name.upper()}", default)


_TYPE_NAMES = {int: "an integer", float: "a number"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def _env_value(name: str, typ: type[int] | type[float]) -> int | float | None:
    """The environment's value for a flag, or None; one that does not parse is a ConfigError."""
    value = _env(name)
    if value is None:
        return None
    try:
        return typ(value)
    except ValueError:
        raise ConfigError(
            f"SYNKWORLD_{name.upper()}={value!r} is not {_TYPE_NAMES[typ]} "
            f"(the environment's value for --{name.replace('_', '-')})"
        ) from None


def _env_flag(name: str) -> bool:
    value = (_env(name) or "").lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(
        f"SYNKWORLD_{name.upper()}={value!r} is not a yes or no "
        "(1, true, yes, on; 0, false, no, off)"
    )


class _Parser(argparse.ArgumentParser):
    """Says what is wrong with the command line in one line (argparse adds the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _add_serve_flags(p: argparse.ArgumentParser, *, port: int) -> None:
    p.add_argument(
        "--host", default=_env("host", "127.0.0.1"), help="address to bind [SYNKWORLD_HOST]"
    )
    env_port = _env_value("port", int)
    p.add_argument(
        "--port",
        type=int,
        default=port if env_port is None else env_port,
        help=f"port (default {port}) [SYNKWORLD_PORT]",
    )
    p.add_argument(
        "--tick-rate-hz",
        type=float,
        default=_env_value("tick_rate_hz", float),
        help="ticks per second [SYNKWORLD_TICK_RATE_HZ]",
    )
    for name, typ in _LIMIT_TYPES.items():
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=typ,
            default=_env_value(name, typ),
            help=f"limit {name} (default {getattr(Limits(), name)}) [SYNKWORLD_{name.upper()}]",
        )
    p.add_argument(
        "--compression",
        action="store_true",
        default=_env_flag("compression"),
        help="permessage-deflate for clients that offer it (CPU per client and frame; "
        "for few clients or slow links) [SYNKWORLD_COMPRESSION]",
    )
    p.add_argument(
        "--log-level",
        default=_env("log_level", "info"),
        help="debug, info, warning, error or critical (default info) [SYNKWORLD_LOG_LEVEL]",
    )
    p.add_argument(
        "--log-format",
        default=_env("log_format", "text"),
        help="text, or json: one object per line (default text) [SYNKWORLD_LOG_FORMAT]",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        default=_env_flag("debug"),
        help="on a failure to start, show the traceback too [SYNKWORLD_DEBUG]",
    )
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
        default=_env_flag("gateway"),
        help="with --redis: own no regions, only serve clients [SYNKWORLD_GATEWAY]",
    )
    p.add_argument("--node", default=_env("node"), help="this process's name in the cluster")
    p.add_argument(
        "--region-cells",
        type=int,
        default=_env_value("region_cells", int),
        help="with --redis: a region is N x N cells (default 8; every process the same)",
    )
    p.add_argument(
        "--lease-ttl-s",
        type=float,
        default=_env_value("lease_ttl_s", float),
        help="with --redis: how long a silent owner keeps its regions (default 5)",
    )
    origins = _env("allowed_origins")
    p.add_argument(
        "--allowed-origin",
        dest="allowed_origins",
        action="append",
        default=[o.strip() for o in origins.split(",") if o.strip()] if origins else None,
        metavar="ORIGIN",
        help="a page origin that may open /ws, e.g. https://game.example; '*' for any "
        "(default: pages of this host; repeatable) [SYNKWORLD_ALLOWED_ORIGINS, comma-separated]",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=_env_value("metrics_port", int),
        help="serve /metrics on this port only [SYNKWORLD_METRICS_PORT]",
    )
    p.add_argument(
        "--metrics-host",
        default=_env("metrics_host"),
        help="the address of --metrics-port (default: --host) [SYNKWORLD_METRICS_HOST]",
    )
    p.add_argument(
        "--metrics-token",
        default=_env("metrics_token"),
        help="/metrics asks for Authorization: Bearer TOKEN (better given in the environment, "
        "as flags show in ps) [SYNKWORLD_METRICS_TOKEN]",
    )
    monitor = p.add_mutually_exclusive_group()
    monitor.add_argument(
        "--monitor",
        action="store_true",
        default=_env_flag("monitor"),
        help="the /monitor page, for whom the factory's authenticate hook admits "
        "[SYNKWORLD_MONITOR]",
    )
    monitor.add_argument(
        "--monitor-token",
        default=_env("monitor_token"),
        help="the /monitor page, for whom gives this token [SYNKWORLD_MONITOR_TOKEN]",
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
        allowed_origins=tuple(a.allowed_origins) if a.allowed_origins is not None else None,
        metrics_port=a.metrics_port,
        metrics_host=a.metrics_host,
        metrics_token=a.metrics_token,
        monitor=a.monitor_token if a.monitor_token else (True if a.monitor else None),
    )


def load_factory(spec: str) -> Any:
    """Imports `module:attribute`."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"expected module:factory, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):
            raise ConfigError(
                f"cannot import {module_name!r} (for {spec!r}): no module {e.name!r} "
                f"in {os.getcwd()} or on the Python path"
            ) from None
        raise ConfigError(f"importing {module_name!r} failed: {type(e).__name__}: {e}") from e
    except Exception as e:
        raise ConfigError(f"importing {module_name!r} failed: {type(e).__name__}: {e}") from e
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from None


async def build_server(factory: Any, options: ServeOptions) -> Server:
    """Calls the application factory (with the options if it takes one) and applies the flags."""
    if not callable(factory):
        raise ConfigError(f"the factory is a {type(factory).__name__}, not a callable")
    params = inspect.signature(factory).parameters
    try:
        result = factory(options) if params else factory()
        if inspect.isawaitable(result):
            result = await result
    except (ConfigError, StoreError, BusUnavailableError):
        raise
    except Exception as e:
        name = getattr(factory, "__qualname__", repr(factory))
        raise ConfigError(f"the factory {name} failed: {type(e).__name__}: {e}") from e
    if not isinstance(result, Server):
        raise ConfigError(f"the factory returned {type(result).__name__}, not a synkworld Server")
    server = result
    if options.tick_rate_hz is not None and options.tick_rate_hz <= 0:
        raise ConfigError("--tick-rate-hz must be positive")
    server.configure(
        tick_rate_hz=options.tick_rate_hz,
        limits=replace(server.limits, **options.limits) if options.limits else None,
        compression=True if options.compression else None,
        allowed_origins=options.allowed_origins,
        metrics_port=options.metrics_port,
        metrics_host=options.metrics_host,
        metrics_token=options.metrics_token,
        monitor=options.monitor,
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


def print_url(url: str) -> None:
    """Says where the server is, whatever the log level (it is what a user looks for first)."""
    print(f"synkworld: serving {url}/ (WebSocket at {url.replace('http', 'ws', 1)}/ws)", flush=True)


async def _serve(spec: str, options: ServeOptions) -> None:
    server = await build_server(load_factory(spec), options)
    try:
        await server.serve_forever(options.host, options.port, ready=print_url)
    except BusUnavailableError as e:
        raise ConfigError(f"cannot reach the cluster's Redis at {options.redis}: {e}") from None


def _bench_from_checkout(rest: list[str]) -> int:
    """Runs the grid-world benchmark, which lives in the repository, not the package."""
    sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module("bench.gridworld")
    except ModuleNotFoundError:
        sys.stderr.write(
            "synkworld bench: run it from a synkworld checkout (no bench/ here); "
            "`synkworld loadtest` drives any server\n"
        )
        return 2
    return int(mod.main(rest))


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="synkworld", description="synkworld: real-time map-based worlds")
    parser.add_argument("--version", action="version", version=f"synkworld {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser(
        "serve", help="serve an application: synkworld serve module:factory"
    )
    serve.add_argument("factory", help="module:callable returning a synkworld.Server")
    _add_serve_flags(serve, port=8080)
    commands.add_parser("demo", help="run the demo map (synkworld demo --help lists its flags)")
    commands.add_parser(
        "loadtest",
        help="drive any synkworld server with panning clients: synkworld loadtest ws://HOST:PORT/ws",
    )
    commands.add_parser(
        "bench", help="run the grid-world benchmark (from a checkout): see bench/README.md"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `synkworld` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "loadtest":
        from synkworld.loadtest import main as loadtest

        return loadtest(args[1:])
    if args and args[0] == "demo":
        from synkworld.demo.__main__ import main as demo

        return demo(args[1:])
    if args and args[0] == "bench":
        return _bench_from_checkout(args[1:])
    try:
        parser = _parser()
        a = parser.parse_args(args)
        configure_logging(a.log_level, a.log_format)
        options = _options(a)
    except ConfigError as e:
        sys.stderr.write(f"synkworld: {e}\n")
        return USAGE_ERROR
    return run_command(_serve(a.factory, options), name="synkworld", debug=a.debug)
