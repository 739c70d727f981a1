"""Runs the demo map: ``synkworld demo --port 8080``, or ``python -m synkworld.demo``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from synkworld._cli_run import USAGE_ERROR, configure_logging, run_command
from synkworld._errors import ConfigError
from synkworld.demo.app import Shared, default_db_path, make_demo_server, open_store
from synkworld.demo.world import DemoSettings


def main(argv: Sequence[str] | None = None) -> int:
    """Parses the demo's flags (`argv`, default the command line's) and serves it until a signal."""
    d = DemoSettings()
    p = argparse.ArgumentParser(prog="synkworld demo", description="The synkworld demo map.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--agents", type=int, default=d.agents, help="wandering agents in a new world")
    p.add_argument("--map-size", type=float, default=d.map_size, help="map width and height")
    p.add_argument("--cell-size", type=float, default=d.cell_size, help="grid cell size")
    p.add_argument("--tick-rate", type=float, default=d.tick_rate_hz, help="ticks per second")
    p.add_argument(
        "--db", default=None, help=f"SQLite file [{default_db_path()}], kept between runs"
    )
    p.add_argument("--mongo", default=None, metavar="URI", help="use MongoDB instead of SQLite")
    p.add_argument("--test-hooks", action="store_true", help="expose the truth handler for tests")
    p.add_argument(
        "--pins-not-durable",
        action="store_true",
        help="acknowledge pins before they are stored (to measure what durability costs)",
    )
    p.add_argument(
        "--redis", default=None, metavar="URL", help="share the map with other processes"
    )
    p.add_argument("--world", default="demo", help="with --redis: the shared map's name")
    p.add_argument("--gateway", action="store_true", help="with --redis: own no regions")
    p.add_argument("--node", default=None, help="with --redis: this process's name")
    p.add_argument(
        "--region-cells", type=int, default=4, help="with --redis: a region is N x N cells"
    )
    p.add_argument("--log-level", default="info", help="debug, info, warning, error, critical")
    p.add_argument("--log-format", default="text", help="text, or json: one object per line")
    p.add_argument("--debug", action="store_true", help="on a failure to start, the traceback")
    a = p.parse_args(argv)
    try:
        configure_logging(a.log_level, a.log_format)
    except ConfigError as e:
        p.exit(USAGE_ERROR, f"synkworld demo: {e}\n")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    settings = DemoSettings(
        agents=a.agents,
        map_size=a.map_size,
        cell_size=a.cell_size,
        tick_rate_hz=a.tick_rate,
        durable_pins=not a.pins_not_durable,
    )

    async def run() -> None:
        store = await open_store(a.db, a.mongo)
        shared = Shared(a.redis, a.world, a.gateway, a.node, a.region_cells) if a.redis else None
        server = await make_demo_server(settings, store, test_hooks=a.test_hooks, shared=shared)
        await server.serve_forever(
            a.host,
            a.port,
            ready=lambda url: print(f"\n  synkworld demo: open {url}/ in a browser\n", flush=True),
        )

    return run_command(run(), name="synkworld demo", debug=a.debug)


if __name__ == "__main__":
    raise SystemExit(main())
