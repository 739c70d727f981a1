"""`synkworld loadtest` end to end, in protocol v1 and v2: against the demo, against servers
that break the protocol (the check must catch them), and the ways it refuses to run."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from bench.gridworld_scenario import Scenario, pan_path, pan_rect, view_phase
from synkworld._loadtest_pan import Panning
from synkworld._loadtest_pan import view_phase as shared_view_phase
from synkworld._wire_v2 import (
    BATCH_ENTRIES,
    SUBPROTOCOL_V2,
    TICK_BATCHES,
    TICK_SNAPS,
    TICK_SUB_ADD,
    encode_message,
    packed,
    varint,
)
from tests.browser.demo_helpers import DemoServer, free_port

ROOT = Path(__file__).resolve().parent.parent

# Every field of the JSON (bench/README.md, "synkworld loadtest"), section by section.
FIELDS: dict[str, set[str]] = {
    "": {
        "tool",
        "version",
        "command",
        "url",
        "started_at",
        "ok",
        "settings",
        "server",
        "maps_used",
        "window_start_s",
        "window_s",
        "clients",
        "bytes_per_client_s",
        "payload_bytes_per_client_s",
        "frames_per_client_s",
        "tick_frames_per_client_s",
        "ping_rtt_ms",
        "errors_received",
        "resyncs",
        "correctness",
        "loadgen",
        "series",
        "files",
    },
    "server": {"proto", "rate", "tick_at_start", "maps"},
    "clients": {
        "requested",
        "connected",
        "connect_failures",
        "connect_failure_reasons",
        "connect_ms",
        "closed_during_run",
        "close_codes",
    },
    "bytes_per_client_s": {"median", "p99", "mean", "min", "max"},
    "payload_bytes_per_client_s": {"median", "p99", "mean", "min", "max"},
    "frames_per_client_s": {"median", "p99", "mean", "min", "max"},
    "tick_frames_per_client_s": {"median", "p99", "mean", "min", "max"},
    "ping_rtt_ms": {"p50", "p99", "max", "samples"},
    "errors_received": {"total", "by_code", "examples", "bad_frames"},
    "resyncs": {"total", "clients"},
    "correctness": {"ok", "sampled", "checked", "mismatches", "violations", "clients"},
    "loadgen": {"cpu_percent", "loop_lag_ms", "saturated", "saturation_reasons"},
    "series": {
        "t_s",
        "connected",
        "bytes_per_client_s_median",
        "bytes_per_client_s_p99",
        "frames_per_client_s_median",
        "frames_per_client_s_p99",
        "ping_rtt_ms_p50",
        "ping_rtt_ms_p99",
    },
}
CLIENT_CHECK_FIELDS = {
    "index",
    "sid",
    "checked",
    "ok",
    "excused",
    "reason",
    "keys",
    "objects",
    "compared_ticks",
    "tick_skew_retries",
    "mismatches",
    "examples",
    "violations",
    "violation_examples",
    "checker_violations",
    "resyncs",
}


def loadtest(*args: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """`python -m synkworld loadtest ARGS`, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "synkworld", "loadtest", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def loadtest_async(*args: str, cwd: Path) -> tuple[int, str, str]:
    """The same, without blocking the event loop that serves a test's own server."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "synkworld",
        "loadtest",
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[DemoServer]:
    server = DemoServer(tmp_path / "demo.sqlite3", tmp_path / "demo.log", agents=600)
    asyncio.run(server.start())
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(150)
@pytest.mark.parametrize("proto", [1, 2])
def test_a_loadtest_of_the_demo_reports_every_figure_and_passes_its_check(
    demo: DemoServer, tmp_path: Path, proto: int
) -> None:
    run_dir = tmp_path / "cwd"
    run_dir.mkdir()
    url = f"ws://127.0.0.1:{demo.port}/ws"
    proto_args = ("--proto", "2") if proto == 2 else ()  # v1 is the default
    proc = loadtest(
        url,
        *("--clients", "12", "--seconds", "3", "--ramp", "1", "--sample", "3", *proto_args),
        cwd=run_dir,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Without --out, a timestamped directory in the working directory.
    (out,) = run_dir.glob("loadtest-*")
    result: dict[str, Any] = orjson.loads((out / "loadtest.json").read_bytes())
    for section, fields in FIELDS.items():
        have = result if not section else result[section]
        missing = fields - have.keys()
        assert not missing, f"{section or 'top level'} lacks {missing}"
    c = result["correctness"]
    assert c["ok"] and result["ok"], c
    assert (c["sampled"], c["checked"], c["mismatches"], c["violations"]) == (3, 3, 0, 0)
    for r in c["clients"]:
        assert r.keys() >= CLIENT_CHECK_FIELDS
        assert r["ok"] and r["compared_ticks"] and r["keys"] > 0, r
    # What the hello said is what the clients panned over.
    assert result["server"]["proto"] == proto == result["settings"]["proto"]
    assert f"protocol v{proto}" in proc.stdout
    main = result["server"]["maps"]["main"]
    assert result["maps_used"]["main"]["extent"] == main["bounds"]
    assert result["maps_used"]["main"]["view"] == [4 * main["cell"], 3 * main["cell"]]
    assert result["clients"]["connected"] == 12 and result["clients"]["connect_failures"] == 0
    assert result["bytes_per_client_s"]["median"] > 0
    assert result["payload_bytes_per_client_s"]["median"] > 0
    assert result["tick_frames_per_client_s"]["median"] > 0
    assert result["ping_rtt_ms"]["samples"] > 0 and result["ping_rtt_ms"]["p99"] > 0
    assert result["errors_received"]["total"] == 0 and result["errors_received"]["bad_frames"] == 0
    assert result["resyncs"]["total"] == 0
    assert len(result["series"]["t_s"]) >= 3
    svg = ET.parse(out / "loadtest.svg").getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    assert len(svg.findall(".//{http://www.w3.org/2000/svg}polyline")) >= 4
    assert "correctness PASS" in (out / "loadtest.svg").read_text()
    assert "correctness: PASS" in proc.stdout
    # Not a terminal: the progress bar prints whole lines, and ends with the window.
    assert "loadtest running" in proc.stderr and "3.0/3 s" in proc.stderr
    assert "\r" not in proc.stderr


def test_an_unreachable_server_exits_2_with_one_line(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    proc = loadtest(url, "--clients", "3", "--seconds", "1", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "cannot connect to 127.0.0.1" in lines[0] and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no empty results directory left behind


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["ws://127.0.0.1:1/ws", "--clients", "0"], "--clients"),
        (["ftp://127.0.0.1/ws"], "ws://"),
        (["ws://127.0.0.1:1/ws", "--view", "100"], "--view"),
        ([], "url"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    proc = loadtest(*args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], proc.stderr


def test_a_token_goes_in_the_query_and_a_refusal_is_one_line(tmp_path: Path) -> None:
    # The demo wants no token; a server that wants one answers 401 without it.
    async def main() -> tuple[list[str | None], int, str]:
        seen: list[str | None] = []

        async def ws(request: web.Request) -> web.StreamResponse:
            seen.append(request.query.get("token"))
            raise web.HTTPUnauthorized()

        async with _serve(ws) as port:
            code, _, err = await loadtest_async(
                f"ws://127.0.0.1:{port}/ws", "--token", "s3cret", cwd=tmp_path
            )
        return seen, code, err

    seen, code, err = asyncio.run(main())
    assert seen == ["s3cret"]
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "HTTP 401" in err and "s3cret" not in err


def test_protocol_2_against_a_server_that_does_not_select_it_exits_2(tmp_path: Path) -> None:
    # A server that speaks protocol v1 only (a cluster's process, an older synkworld):
    # it selects no subprotocol and sends a text hello of protocol 1.
    async def main() -> tuple[int, str, str]:
        server = FaultyServer("none", proto=1)
        async with _serve(server.handle) as port:
            return await loadtest_async(
                f"ws://127.0.0.1:{port}/ws", "--proto", "2", "--quiet", cwd=tmp_path
            )

    code, out, err = asyncio.run(main())
    assert code == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "does not speak protocol 2" in lines[0] and "synkworld.v2" in lines[0]
    assert list(tmp_path.iterdir()) == []


# -- servers that break the protocol: the check must fail ------------------------------------


@contextlib.asynccontextmanager
async def _serve(handler: Any) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield port
    finally:
        await runner.cleanup()


class FaultyServer:
    """Speaks protocol v1 (or v2, its frames written here byte by byte from
    docs/protocol-v2.md) over one cell holding one object, and gets one thing wrong:

    - "regress": every tick, a mod of the object with a version not above the held one;
    - "divergent": every connection's snapshot says something else (as if each client
      were shown its own world), so a fresh checker cannot agree with a sampled client.
    """

    KEY = "main:0:0"
    KEY_V2 = varint(1) + varint(0) + varint(0)  # map 0 + 1, zigzag cx, zigzag cy

    def __init__(self, fault: str, proto: int = 1) -> None:
        self.fault = fault
        self.proto = proto
        self.tick = 1
        self.numbers = itertools.count(1)
        self.conns: dict[web.WebSocketResponse, int] = {}  # -> its number
        self.holding: set[web.WebSocketResponse] = set()
        self.pending: set[web.WebSocketResponse] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        v2 = self.proto == 2
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL_V2,) if v2 else ())
        await ws.prepare(request)
        self.conns[ws] = next(self.numbers)
        maps = {"cell": 100, "origin": [0, 0], "bounds": [0, 0, 1000, 1000], "pos": ["x", "y"]}
        hello = {
            "m": "hello",
            "proto": self.proto,
            "sid": f"s{self.conns[ws]}",
            "tick": self.tick,
            "rate": 20,
            "maps": {"main": {**maps, "prec": 1, **({"num": 0} if v2 else {})}},
        }
        if v2:
            hello["types"] = [[0, "thing", ["x", "y", "hp"], [0, 1]]]
        await self._send(ws, hello)
        try:
            async for msg in ws:
                m = orjson.loads(msg.data)
                if m["m"] in ("view", "sub") and ws not in self.holding:
                    self.pending.add(ws)
                elif m["m"] == "ping":
                    await self._send(ws, {"m": "pong", "t": m["t"], "n": self.tick})
        finally:
            self.conns.pop(ws, None)
            self.holding.discard(ws)
            self.pending.discard(ws)
        return ws

    async def _send(self, ws: web.WebSocketResponse, message: dict[str, Any]) -> None:
        if self.proto == 2:
            await ws.send_bytes(encode_message(message))
        else:
            await ws.send_str(orjson.dumps(message).decode())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            self.tick += 1
            for ws, number in list(self.conns.items()):
                frame: bytes | None = None
                if ws in self.pending:
                    hp = number if self.fault == "divergent" else 1
                    frame = self._snapshot_frame(hp)
                    self.pending.discard(ws)
                    self.holding.add(ws)
                elif ws in self.holding and self.fault == "regress":
                    frame = self._regressing_frame()
                if frame is not None and not ws.closed:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        if self.proto == 2:
                            await ws.send_bytes(frame)
                        else:
                            await ws.send_str(frame.decode())

    def _snapshot_frame(self, hp: int) -> bytes:
        """The tick frame that adds the cell, with its snapshot: the object at (1, 1)."""
        if self.proto == 2:
            entry = [0, "a", 0, 1, [10, 10, hp]]  # slot, id, type, version, state (x10)
            return b"".join(
                (
                    b"\x01" + varint(self.tick) + bytes([TICK_SUB_ADD | TICK_SNAPS]),
                    varint(1) + self.KEY_V2,
                    varint(1) + self.KEY_V2 + packed([entry]),
                )
            )
        obj = {"id": "a", "t": "thing", "v": 1, "s": {"x": 1.0, "y": 1.0, "hp": hp}}
        return orjson.dumps(
            {
                "m": "tick",
                "n": self.tick,
                "sub": {"add": [self.KEY]},
                "snap": [{"k": self.KEY, "objs": [obj]}],
            }
        )

    def _regressing_frame(self) -> bytes:
        """A tick frame with a mod of the object at version 1, the version it holds."""
        if self.proto == 2:
            mod = [0, 1, {2: 2}]  # slot, version, field 2 (hp) -> 2
            batch = self.KEY_V2 + varint(BATCH_ENTRIES) + packed([[], [mod]])
            return b"\x01" + varint(self.tick) + bytes([TICK_BATCHES]) + varint(1) + batch
        mod_v1 = {"id": "a", "v": 1, "d": {"hp": 2}}
        return orjson.dumps({"m": "tick", "n": self.tick, "b": [{"k": self.KEY, "mod": [mod_v1]}]})


async def _against(fault: str, tmp_path: Path, proto: int) -> tuple[int, str, dict[str, Any]]:
    server = FaultyServer(fault, proto)
    ticking = asyncio.create_task(server.run())
    try:
        async with _serve(server.handle) as port:
            code, out, _ = await loadtest_async(
                f"ws://127.0.0.1:{port}/ws",
                *("--clients", "4", "--seconds", "1", "--sample", "2", "--quiet"),
                *("--out", str(tmp_path / "out"), "--check-timeout", "5"),
                *("--proto", str(proto)),
                cwd=tmp_path,
            )
    finally:
        ticking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticking
    return code, out, orjson.loads((tmp_path / "out" / "loadtest.json").read_bytes())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("proto", [1, 2])
def test_the_check_fails_on_version_regressions(tmp_path: Path, proto: int) -> None:
    code, out, result = asyncio.run(_against("regress", tmp_path, proto))
    assert result["server"]["proto"] == proto
    c = result["correctness"]
    assert code == 1 and not c["ok"] and "correctness: FAIL" in out
    assert c["violations"] > 0
    examples = [e for r in c["clients"] for e in r["violation_examples"]]
    assert any("version regression" in e for e in examples), examples


@pytest.mark.timeout(60)
@pytest.mark.parametrize("proto", [1, 2])
def test_the_check_fails_when_a_fresh_client_sees_something_else(
    tmp_path: Path, proto: int
) -> None:
    code, _, result = asyncio.run(_against("divergent", tmp_path, proto))
    assert result["server"]["proto"] == proto
    c = result["correctness"]
    assert code == 1 and not c["ok"]
    assert c["violations"] == 0 and c["mismatches"] > 0
    for r in c["clients"]:
        assert r["checked"] and r["compared_ticks"], r
        assert any(e.startswith("a: sampled client") for e in r["examples"]), r["examples"]


# -- the panning is the benchmark's ----------------------------------------------------------


def test_the_benchmark_pans_as_it_always_did() -> None:
    # The bench scenario pans with the package's `Panning`: its draws (and their
    # order) must stay these, or the bench's results and cache digests change.
    sc = Scenario()
    path = pan_path(sc, 7)
    assert (path.x0, path.y0) == pytest.approx((3669.289817784338, 8950.79165676585))
    assert (path.vx, path.vy) == pytest.approx((-84.35618554634327, 53.703202512242285))
    assert pan_rect(sc, path, 12.5) == [2614.8, 8877.9, 3614.8, 9627.9]
    assert view_phase(sc, 7) == pytest.approx(0.2203996900518057)
    assert view_phase(sc, 0) == shared_view_phase(sc.seed, 0, sc.view_interval_s)


def test_panning_stays_inside_an_extent_away_from_the_origin() -> None:
    pan = Panning((-500.0, 2000.0, 1500.0, 2600.0), 400.0, 300.0, speed=777.0, seed=9)
    for i in range(40):
        path = pan.path(i)
        for t in (0.0, 1.0, 3.3, 10.0, 321.0):
            x0, y0, x1, y1 = pan.rect(path, t)
            assert x0 >= -500.0 and x1 <= 1500.0
            assert y0 >= 2000.0 and y1 <= 2600.0
            assert x1 - x0 == pytest.approx(400.0, abs=0.2)
            assert y1 - y0 == pytest.approx(300.0, abs=0.2)


def test_the_loadtest_needs_nothing_beyond_the_core_dependencies(tmp_path: Path) -> None:
    # It must run after `pip install synkworld`: nothing from the bench or test extras.
    code = (
        "import sys, synkworld.loadtest; extras = ('matplotlib', 'psutil', 'bench', 'pytest'); "
        "print(','.join(m for m in extras if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
