"""What the store tests share besides fixtures: driver options, the server handle, helpers.

A plain module, so that test modules import it; the fixtures built on it are in
conftest.py.
"""

from __future__ import annotations

import gc
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo

from synkworld.testing import start_process

REPO = Path(__file__).resolve().parents[2]
FERRETDB_SH = REPO / "scripts" / "ferretdb.sh"

# Short timeouts: an outage must turn into StoreUnavailableError quickly.
CLIENT_OPTIONS: dict[str, Any] = {
    "serverSelectionTimeoutMS": 1000,
    "connectTimeoutMS": 1000,
    "socketTimeoutMS": 30_000,
}


def collect_leaked_sockets() -> None:
    """Runs the garbage collector with the leaked sockets' ResourceWarning ignored.

    PyMongo's async client can leave a socket to the garbage collector (see
    conftest.py); collecting at once keeps its ResourceWarning in the store tests.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "unclosed <socket.socket", ResourceWarning)
        gc.collect()


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class MongoServer:
    """A MongoDB-compatible server the tests may stop and start (FerretDB only)."""

    uri: str
    port: int | None = None
    data_dir: Path | None = None
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    controllable: bool = False
    starts: int = field(default=0)

    def start(self) -> None:
        """Starts the server and waits until it answers `ping`."""
        if not self.controllable or self.port is None or self.data_dir is None:
            raise RuntimeError("this server is not ours to start")
        if self.process is not None and self.process.poll() is None:
            return
        log_path = self.log_path or self.data_dir / "ferretdb.log"
        with log_path.open("ab") as log:
            self.process = start_process(
                [str(FERRETDB_SH), "run", str(self.port), str(self.data_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        self._wait_ready()

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL) and waits for it to exit."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _wait_ready(self, timeout_s: float = 30.0) -> None:
        # Wait for the port with plain sockets first: a driver whose connection
        # attempt times out can leave a socket to the garbage collector, and its
        # ResourceWarning fails the test that happens to be running.
        assert self.port is not None
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"FerretDB exited early; see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"FerretDB did not listen within {timeout_s} s") from None
                time.sleep(0.05)
        client: pymongo.MongoClient[Any] = pymongo.MongoClient(
            self.uri, serverSelectionTimeoutMS=int(timeout_s * 1000)
        )
        try:
            client.admin.command("ping")
        finally:
            client.close()
