"""`synkworld serve module:factory` in its own process: flags, environment, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from synkworld.testing import start_process
from tests.served import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)


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


async def test_serve_flags_for_origins_metrics_and_the_monitor() -> None:
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "SYNKWORLD_METRICS_TOKEN": "scrape", "SYNKWORLD_MONITOR_TOKEN": "look"}
    proc = start_process(
        [
            sys.executable,
            "-m",
            "synkworld",
            "serve",
            "examples.minimal_server:make_server",
            *("--port", str(port), "--metrics-port", str(metrics_port)),
            *("--allowed-origin", "https://game.example"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url, metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}"
    try:
        await wait_healthy(url, proc)
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/metrics") as r:
                assert r.status == 404  # on its own port
            async with http.get(metrics + "/metrics") as r:
                assert r.status == 401
            async with http.get(metrics + "/metrics?token=scrape") as r:
                assert r.status == 200 and "synkworld_clients" in await r.text()
            async with http.get(url + "/monitor/data") as r:
                assert r.status == 401
            async with http.get(url + "/monitor/data?token=look") as r:
                assert r.status == 200 and "clients" in await r.json()
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url + "/ws", headers={"Origin": "https://evil.example"})
            assert refused.value.status == 403
            async with http.ws_connect(
                url + "/ws", headers={"Origin": "https://game.example"}
            ) as ws:
                assert (await ws.receive_json())["m"] == "hello"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
