"""Every code block of the README runs as written.

Each Python or HTML block is the file of examples/ that the line before it
links to (less the file's docstring), so that the files are what the tests
run: the hello server with its page, the handler server, the persistent
server started twice, and the core without a server.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.served import Served

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"```(python|html)\n(.*?)```", re.S)
LINK = re.compile(r"\[(examples/[^\]]+)\]\(")
pytestmark = pytest.mark.timeout(120)


def readme_blocks() -> list[tuple[str, str]]:
    """(the examples/ file a block shows, the block's text), for every code block."""
    text = README.read_text()
    out = []
    for m in BLOCK.finditer(text):
        before = text[: m.start()].rstrip().splitlines()[-3:]
        links = [name for line in before for name in LINK.findall(line)]
        assert links, f"the README's {m.group(1)} block at offset {m.start()} names no file"
        out.append((links[-1], m.group(2)))
    return out


def without_docstring(source: str) -> str:
    if source.startswith('"""'):
        source = source[source.index('"""', 3) + 3 :].lstrip()
    return source


def test_every_block_is_the_file_it_names() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 5
    for name, block in blocks:
        assert block == without_docstring((ROOT / name).read_text()), name


def test_the_python_examples_pass_mypy_strict() -> None:
    files = sorted({name for name, _ in readme_blocks() if name.endswith(".py")})
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_core_example_prints_its_two_frames() -> None:
    out = subprocess.run(
        [sys.executable, "examples/core_taste.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("""b'{"m":"tick","n":1,"sub":{"add":["main:0:0",""")
    assert '"from":"main:0:0"' in out.stdout


def serve(spec: str, cwd: Path, log: Path) -> Served:
    """`synkworld serve SPEC` in `cwd`, as the README says to run it."""
    return Served(
        [sys.executable, "-m", "synkworld", "serve", spec],
        cwd=cwd,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        log=log,
    )


async def objects_in_view(ws: aiohttp.ClientWebSocketResponse, rect: list[float]) -> dict[str, Any]:
    """The states of what a client viewing `rect` holds after its first frame with snapshots."""
    await ws.send_json({"m": "view", "rect": rect, "margin": 0})
    while True:
        frame = await ws.receive_json(timeout=10)
        if frame["m"] == "tick" and frame.get("snap"):
            return {o["id"]: o["s"] for cell in frame["snap"] for o in cell["objs"]}


async def test_the_hello_server_serves_its_page_the_client_and_sailing_boats(
    tmp_path: Path,
) -> None:
    served = serve("app:make_server", ROOT / "examples" / "hello", tmp_path / "hello.log")
    try:
        await served.healthy()
        async with aiohttp.ClientSession() as http:
            async with http.get(served.url + "/") as r:
                assert r.status == 200
                assert 'import { Client } from "/synkworld/client.js"' in await r.text()
            async with http.get(served.url + "/synkworld/client.js") as r:
                assert r.status == 200 and "export class Client" in await r.text()
            async with http.ws_connect(served.url + "/ws") as ws:
                assert (await ws.receive_json())["m"] == "hello"
                boats = await objects_in_view(ws, [0, 0, 1000, 1000])
                assert len(boats) == 20
                moved = False
                for _ in range(20):
                    frame = await ws.receive_json(timeout=10)
                    moved = moved or any("mv" in b for b in frame.get("b", []))
                assert moved, "the boats sail"
        assert served.stop() == 0
    finally:
        served.kill()


async def test_the_persistent_server_starts_again_where_it_stopped(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as http:
        first = serve("examples.persistent_server:make_server", tmp_path, tmp_path / "1.log")
        try:
            await first.healthy()
            async with http.ws_connect(first.url + "/ws") as ws:
                await ws.receive_json()
                call = {"boat": "boat1", "dx": 10, "dy": 0}
                await ws.send_json({"m": "call", "id": 1, "name": "sail", "args": call})
                while (reply := await ws.receive_json(timeout=10))["m"] != "reply":
                    pass
                assert reply["ok"] == {"x": 110.0, "y": 100.0}
            assert first.stop() == 0  # a graceful stop writes everything
        finally:
            first.kill()
        assert (tmp_path / "boats.sqlite3").exists()

        second = serve("examples.persistent_server:make_server", tmp_path, tmp_path / "2.log")
        try:
            await second.healthy()
            async with http.ws_connect(second.url + "/ws") as ws:
                await ws.receive_json()
                boats = await objects_in_view(ws, [0, 0, 2499, 2499])
            assert sorted(boats) == sorted(f"boat{i}" for i in range(25))
            assert boats["boat1"]["x"] == 110.0  # loaded where it was left, not made again
            assert second.stop() == 0
        finally:
            second.kill()


async def test_the_embedded_app_ticks_and_serves_its_own_page(tmp_path: Path) -> None:
    app = Served(
        [sys.executable, "examples/embedded_app.py"],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        log=tmp_path / "embedded.log",
        port_env="PORT",
    )
    try:
        await app.healthy()
        async with aiohttp.ClientSession() as http:
            async with http.get(app.url + "/") as r:
                assert await r.text() == "the game's own page"
            async with http.ws_connect(app.url + "/ws") as ws:
                assert (await ws.receive_json())["m"] == "hello"
                boats = await objects_in_view(ws, [0, 0, 1000, 750])
                assert [b["name"] for b in boats.values()] == ["Ada"]
                for _ in range(3):
                    frame = await ws.receive_json(timeout=10)
                assert any("mv" in b for b in frame.get("b", [])), "the boat drifts"
        assert app.stop(signal.SIGINT) == 0
    finally:
        app.kill()
