"""Child processes (servers, FerretDB) and the HTTP look-ups the scenarios make of them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from synkworld.testing import start_process_async

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int:
    """The resident set of a process (VmRSS of /proc/<pid>/status); 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Child:
    """A child process whose stdout we may read and whose stderr goes to a log file."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path
        self.started = time.monotonic()

    @classmethod
    async def start(cls, name: str, cmd: Sequence[str], log_path: Path, **kwargs: Any) -> Child:
        """Starts `cmd` from the repository root; it gets SIGTERM if we die."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
        with open(log_path, "ab") as log:
            proc = await start_process_async(
                *cmd,
                cwd=ROOT,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=kwargs.pop("stdout", asyncio.subprocess.PIPE),
                stderr=log,
                **kwargs,
            )
        return cls(name, proc, log_path)

    @classmethod
    async def server(cls, name: str, flags: Sequence[str], log_path: Path) -> Child:
        """Starts ``python -m bench.reliability serve`` with `flags`."""
        cmd = [sys.executable, "-m", "bench.reliability", "serve", *flags]
        return await cls.start(name, cmd, log_path)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    @property
    def alive(self) -> bool:
        """Whether the process has not exited."""
        return self.proc.returncode is None

    def log_tail(self, n: int = 2000) -> str:
        """The end of the child's log."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    async def ready(self, timeout: float) -> dict[str, Any]:
        """The JSON line the child prints once it serves."""
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise RuntimeError(f"{self.name}: not ready in {timeout:g}s; {self.log_path}") from None
        if not line:
            code = await self.proc.wait()
            raise RuntimeError(f"{self.name} exited ({code}); its log ends:\n{self.log_tail()}")
        ready: dict[str, Any] = orjson.loads(line)
        return ready

    async def terminate(self, timeout: float = 30.0) -> float:
        """SIGTERM, then SIGKILL after `timeout`; returns the seconds it took to exit."""
        t = time.monotonic()
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.kill()
                await self.proc.wait()
        return time.monotonic() - t

    def kill(self) -> None:
        """SIGKILL."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def stop(self) -> None:
        """Ends the process whatever it is doing (for `finally`)."""
        if self.alive:
            await self.terminate(10.0)


async def get_json(http: aiohttp.ClientSession, url: str, timeout: float = 10.0) -> dict[str, Any]:
    """GETs a JSON object."""
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        resp.raise_for_status()
        body: dict[str, Any] = orjson.loads(await resp.read())
        return body


async def wait_healthz(
    http: aiohttp.ClientSession, url: str, timeout: float, interval: float = 0.005
) -> tuple[float, dict[str, Any]]:
    """Polls ``GET /healthz`` until it answers 200; returns when (monotonic) and the body."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with http.get(url + "/healthz", timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
                if resp.status == 200:
                    body: dict[str, Any] = orjson.loads(await resp.read())
                    return time.monotonic(), body
        except (aiohttp.ClientError, OSError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}/healthz did not answer within {timeout:g}s")
        await asyncio.sleep(interval)
