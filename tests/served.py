"""A synkworld command in a child process on a free loopback port, and its /healthz."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp

from synkworld.testing import start_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> dict[str, object]:
    """The body of the first /healthz that answers; fails if the process exits first."""
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}")
            try:
                async with http.get(url + "/healthz") as r:
                    body: dict[str, object] = await r.json()
                    return body
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    raise AssertionError("server did not answer /healthz")


class Served:
    """`command` (with `--port` added unless `port_env` names a variable for it) in `cwd`."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        log: Path,
        port_env: str | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = list(command)
        full_env = dict(env)
        if port_env is None:
            args += ["--port", str(self.port)]
        else:
            full_env[port_env] = str(self.port)
        with log.open("ab") as out:
            self.proc = start_process(
                args, cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT
            )

    async def healthy(self) -> None:
        await wait_healthy(self.url, self.proc)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Signals the process and returns its exit code (it is killed if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
