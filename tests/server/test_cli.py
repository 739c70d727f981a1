"""`synkworld serve module:factory` in its own process: flags, environment, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from synkworld.testing import start_process

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> dict[str, object]:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}")
            try:
                async with http.get(url + "/healthz") as r:
                    body: dict[str, object] = await r.json()
                    return body
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    raise AssertionError("server did not answer /healthz")


async def test_serve_the_readme_example_from_flags_and_environment() -> None:
    port = free_port()
    env = {**os.environ, "SYNKWORLD_PORT": str(port), "SYNKWORLD_MAX_KEYS": "5"}
    proc = start_process(
        [
            sys.executable,
            "-m",
            "synkworld",
            "serve",
            "examples.minimal_server:make_server",
            "--tick-rate-hz",
            "10",
            "--compression",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert (await wait_healthy(url, proc))["ok"] is True
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(url + "/ws", compress=15) as ws,
        ):
            assert ws.compress == 15
            hello = await ws.receive_json()
            assert hello["rate"] == 10
            await ws.send_json({"m": "sub", "add": [f"k{i}" for i in range(6)]})
            assert (await ws.receive_json())["code"] == "too_many_keys"
            await ws.send_json({"m": "view", "rect": [0, 0, 200, 200], "margin": 0})
            await ws.send_json(
                {"m": "call", "id": 1, "name": "sail", "args": {"boat": "boat1", "dx": 10, "dy": 0}}
            )
            frames = [await ws.receive_json() for _ in range(2)]
            kinds = sorted(f["m"] for f in frames)
            assert kinds == ["reply", "tick"]
            reply = next(f for f in frames if f["m"] == "reply")
            assert reply["ok"] == {"x": 110.0, "y": 100.0}
            proc.send_signal(signal.SIGTERM)
            msg = await ws.receive(timeout=10)
            while msg.type is aiohttp.WSMsgType.TEXT:
                msg = await ws.receive(timeout=10)
            assert msg.data == 1001
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_bad_factory_is_a_clear_error() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "synkworld", "serve", "nomodulehere"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2
    assert "expected module:factory" in out.stderr
