"""Reliability benches: four figures about the server that must stay true.

    python -m bench.reliability fuzz       # 16,000 fuzzed frames over 1,000 connections
    python -m bench.reliability outage     # a 60 s MongoDB (FerretDB) outage, then every change
    python -m bench.reliability reconnect  # 1,000 clients reconnect at once after a restart
    python -m bench.reliability kill9      # SIGKILL a server writing to SQLite, 12 times

Each scenario runs real parts (server processes, aiohttp WebSockets, FerretDB,
SQLite), writes ``bench/results/reliability-<scenario>.json`` (``--out``
elsewhere), prints a short summary and exits 0 when its verdict passes, 1 when
it does not. ``python -m bench.reliability <scenario> --help`` lists every
flag with its default. See bench/README.md, "Reliability".

``python -m bench.reliability serve`` is the server the scenarios start: a busy
world (walkers moving, trading gold, being replaced) with a few call handlers,
optionally persisted to SQLite. It prints one JSON line ``{"url", "pid", ...}``
on stdout once it serves and stops on SIGTERM (gracefully) or after
``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.reliability.fuzz import run_fuzz
from bench.reliability.kill9 import run_kill9
from bench.reliability.outage import run_outage
from bench.reliability.processes import ROOT
from bench.reliability.reconnect import run_reconnect
from bench.reliability.results import Notes, Outcome, finish
from bench.reliability.server import serve
from bench.reliability.world import WorldSpec

DEFAULT_OUT = ROOT / "bench" / "results"


def _world_flags(p: argparse.ArgumentParser, d: WorldSpec) -> None:
    g = p.add_argument_group("world")
    g.add_argument("--entities", type=int, default=d.entities, help="walkers in the world")
    g.add_argument("--map-size", type=float, default=d.map_size)
    g.add_argument("--cell-size", type=float, default=d.cell_size)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--motion", type=float, default=d.motion, help="fraction moving per tick")
    g.add_argument("--step", type=float, default=d.step, help="std. dev. of a move")
    g.add_argument("--hp-fraction", type=float, default=d.hp_fraction, help="per tick")
    g.add_argument("--transfers", type=int, default=d.transfers, help="gold transfers per tick")
    g.add_argument("--churn", type=int, default=d.churn, help="walkers replaced per tick")
    g.add_argument("--tick-rate", type=float, default=20.0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line: one sub-command per scenario, and `serve`."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(
        prog="python -m bench.reliability",
        description=__doc__.split("\n\n")[0],
        formatter_class=fmt,
    )
    sub = p.add_subparsers(dest="scenario", required=True)

    def scenario(name: str, help: str, world: WorldSpec, timeout: float) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help, formatter_class=fmt)
        _world_flags(s, world)
        s.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON goes")
        s.add_argument("--timeout", type=float, default=timeout, help="give up after (s)")
        s.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
        return s

    f = scenario(
        "fuzz",
        "fuzzed frames over many connections: the server survives, answers, does not grow",
        WorldSpec(entities=2000, motion=0.05),
        600.0,
    )
    f.add_argument("--frames", type=int, default=16_000)
    f.add_argument("--connections", type=int, default=1000)
    f.add_argument(
        "--warmup-passes", type=int, default=1, help="fuzz passes like the measured one, before"
    )
    f.add_argument("--heavy", type=float, default=0.03, help="share of unpaced bad slots (1008)")
    f.add_argument("--flood", type=float, default=0.02, help="share of ping-flood slots")
    f.add_argument("--settle-s", type=float, default=1.0, help="quiet time before reading RSS")
    f.add_argument("--rss-limit-mib", type=float, default=6.0)
    f.add_argument("--only", default="", help="only these categories (comma-separated)")
    f.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace the server's allocations; report the sites that grew (slow; RSS meaningless)",
    )

    o = scenario(
        "outage",
        "a MongoDB outage while objects change; afterwards the store equals the world",
        # Changes FerretDB keeps up with (~800 a second; it writes ~1,500 documents a
        # second here), so that the backlog is the outage's, not the steady state's.
        WorldSpec(entities=5000, motion=0.005, hp_fraction=0.001, transfers=5, churn=1),
        900.0,
    )
    o.add_argument("--outage-s", type=float, default=60.0)
    o.add_argument("--before-s", type=float, default=5.0, help="steady run before the outage")
    o.add_argument("--after-s", type=float, default=5.0, help="run after the drain")
    o.add_argument("--drain-timeout-s", type=float, default=300.0)
    o.add_argument("--selection-timeout-ms", type=int, default=5000, help="the driver's")
    o.add_argument("--retry-initial-s", type=float, default=0.05, help="the write-behind's")
    o.add_argument("--retry-max-s", type=float, default=5.0, help="the write-behind's")
    o.add_argument(
        "--max-ops",
        type=int,
        default=0,
        help="MongoStore's max_ops_per_command (0: one bulk write with our FerretDB, else auto)",
    )
    o.add_argument(
        "--mongodb-uri",
        default=None,
        help="a server we may not stop (default: $MONGODB_URI, else our own FerretDB)",
    )

    r = scenario(
        "reconnect",
        "many clients reconnect at once after a restart; how soon every cache is right",
        WorldSpec(entities=10_000, motion=0.0, hp_fraction=0.0, transfers=0),
        600.0,
    )
    r.add_argument("--clients", type=int, default=1000)
    r.add_argument("--limit-s", type=float, default=1.6, help="all correct within (s)")
    r.add_argument("--reconnect-timeout-s", type=float, default=60.0)

    k = scenario(
        "kill9",
        "SIGKILL a server writing to SQLite at random moments; the file and the world survive",
        WorldSpec(entities=3000, motion=1.0, transfers=20, churn=1),
        900.0,
    )
    k.add_argument("--kills", type=int, default=12)
    k.add_argument("--kill-min-s", type=float, default=0.3, help="after the start")
    k.add_argument("--kill-max-s", type=float, default=3.0)
    k.add_argument("--write-interval", type=float, default=0.0, help="the write-behind's")

    s = sub.add_parser("serve", help="the server the scenarios start", formatter_class=fmt)
    _world_flags(s, WorldSpec())
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--db", default=None, help="persist to this SQLite file (loaded if present)")
    s.add_argument("--write-interval", type=float, default=0.0)
    s.add_argument("--max-seconds", type=float, default=3600.0)
    s.add_argument("--tracemalloc", action="store_true", help="serve GET /rel/memory")
    return p.parse_args(argv)


_SCENARIOS = {
    "fuzz": run_fuzz,
    "outage": run_outage,
    "reconnect": run_reconnect,
    "kill9": run_kill9,
}


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one scenario (or the server); returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(args)
    _raise_fd_limit()
    if a.scenario == "serve":
        import logging

        logging.basicConfig(
            level=logging.WARNING, format="serve %(levelname)s %(name)s: %(message)s"
        )
        asyncio.run(serve(a))
        return 0
    started = time.time()
    notes = Notes(not a.quiet, a.scenario)

    async def run() -> Outcome:
        return await asyncio.wait_for(_SCENARIOS[a.scenario](a, notes), a.timeout)

    figures, checks, summary = asyncio.run(run())
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(a).items())}
    return finish(a.scenario, a, args, params, figures, checks, summary, started)
