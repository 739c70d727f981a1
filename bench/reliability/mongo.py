"""The database the outage scenario takes away: our own FerretDB, or a relay we can cut."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench.reliability.processes import ROOT, Child
from synkworld.testing import start_process_async

FERRETDB_SH = ROOT / "scripts" / "ferretdb.sh"


class FerretDB:
    """A FerretDB process we own: scripts/ferretdb.sh on a port, with its files in a directory."""

    def __init__(self, port: int, data_dir: Path, log_path: Path) -> None:
        self.port = port
        self.data_dir = data_dir
        self.log_path = log_path
        self.child: Child | None = None
        self.uri = f"mongodb://127.0.0.1:{port}/"

    @staticmethod
    async def build(timeout: float = 900.0) -> None:
        """Builds FerretDB once (cached under .cache/go)."""
        proc = await start_process_async(
            str(FERRETDB_SH),
            "build",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError("building FerretDB took too long") from None
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/ferretdb.sh build failed: {err.decode()[-2000:]}")

    async def start(self, timeout: float = 60.0) -> float:
        """Starts it and waits until it answers `ping`; returns the seconds that took."""
        t = time.monotonic()
        self.child = await Child.start(
            "ferretdb",
            [str(FERRETDB_SH), "run", str(self.port), str(self.data_dir)],
            self.log_path,
            stdout=asyncio.subprocess.DEVNULL,
        )
        await _wait_mongo(self.uri, self.port, timeout, self.child)
        return time.monotonic() - t

    async def stop(self) -> float:
        """Terminates the process (SIGTERM); returns the seconds it took to exit."""
        if self.child is None:
            return 0.0
        took = await self.child.terminate(15.0)
        self.child = None
        return took


async def _wait_mongo(uri: str, port: int, timeout: float, child: Child | None) -> None:
    from pymongo import AsyncMongoClient

    deadline = time.monotonic() + timeout
    # The port first, with plain sockets: cheap, and no driver retries in the way.
    while True:
        if child is not None and not child.alive:
            raise RuntimeError(f"FerretDB exited early; its log ends:\n{child.log_tail()}")
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            await w.wait_closed()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port} after {timeout:g}s") from None
            await asyncio.sleep(0.02)
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        uri, serverSelectionTimeoutMS=int(max(1.0, deadline - time.monotonic()) * 1000)
    )
    try:
        await client.admin.command("ping")
    finally:
        await client.close()


class CutProxy:
    """A loopback TCP relay in front of a database we may not stop: cutting it is the outage."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listens (on the same port as before, after a cut)."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stops listening and drops every relayed connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_w))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                dst.transport.abort()

        for t in (asyncio.create_task(pipe(reader, up_w)), asyncio.create_task(pipe(up_r, writer))):
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)


def single_host(uri: str) -> tuple[str, int]:
    """The host and port of a single-host ``mongodb://`` URI (else it exits)."""
    from pymongo.uri_parser import parse_uri

    nodes = parse_uri(uri)["nodelist"]
    if len(nodes) != 1:
        raise SystemExit("outage through MONGODB_URI needs a single-host mongodb:// URI")
    host, port = nodes[0]
    return host, int(port)
