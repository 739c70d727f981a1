"""Fixtures of the store tests: a MongoDB-compatible server, fresh databases, and stores.

MongoDB tests run against `MONGODB_URI` when it is set. Otherwise the session
builds FerretDB (scripts/ferretdb.sh, once, cached under .cache/go) and runs it
on a free loopback port with its SQLite backend in a temporary directory.
"""

from __future__ import annotations

import gc
import os
import shutil
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo
import pytest
from pymongo import AsyncMongoClient

from synkworld.store import MemoryStore, SQLiteStore, Store
from synkworld.store.mongo import MongoStore
from synkworld.testing import start_process

REPO = Path(__file__).resolve().parents[2]
FERRETDB_SH = REPO / "scripts" / "ferretdb.sh"

# Short timeouts: an outage must turn into StoreUnavailableError quickly.
CLIENT_OPTIONS: dict[str, Any] = {
    "serverSelectionTimeoutMS": 1000,
    "connectTimeoutMS": 1000,
    "socketTimeoutMS": 30_000,
}


# PyMongo 4.20's async client leaks the socket of a server check that close()
# cancels (pymongo/pool_shared.py, _async_create_connection closes it on OSError
# and TimeoutError, not on CancelledError). The garbage collector closes it later,
# and its ResourceWarning, an error under our filterwarnings, would fail whichever
# test happens to be running then. Store tests ignore that warning; the fixtures
# that close clients collect the garbage at once, so that it does not reach
# tests elsewhere.
_SOCKET_LEAK_FILTER = "ignore:unclosed <socket.socket:ResourceWarning"
_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.filterwarnings(_SOCKET_LEAK_FILTER))


def collect_leaked_sockets() -> None:
    """Runs the garbage collector with the leaked sockets' ResourceWarning ignored."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "unclosed <socket.socket", ResourceWarning)
        gc.collect()


@pytest.fixture
def leaked_sockets_collected() -> Iterator[None]:
    """Collects the sockets PyMongo leaked in the test, at its end (see above)."""
    yield
    collect_leaked_sockets()


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    """The MongoDB-compatible server of the session: `MONGODB_URI`, or a FerretDB we run."""
    uri = os.environ.get("MONGODB_URI")
    if uri:
        yield MongoServer(uri=uri)
        return
    if shutil.which("go") is None and not (REPO / ".cache/go/bin/ferretdb").exists():
        pytest.skip("MONGODB_URI is unset, and FerretDB cannot be built without Go")
    subprocess.run([str(FERRETDB_SH), "build"], check=True, stdout=subprocess.DEVNULL, timeout=900)
    root = tmp_path_factory.mktemp("ferretdb")
    port = _free_port()
    server = MongoServer(
        uri=f"mongodb://127.0.0.1:{port}/",
        port=port,
        data_dir=root / "data",
        log_path=root / "ferretdb.log",
        controllable=True,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server_control(mongo_server: MongoServer) -> Iterator[MongoServer]:
    """The server, to stop and start in a test; started again afterwards whatever happens."""
    if not mongo_server.controllable:
        pytest.skip("the server at MONGODB_URI is not ours to stop")
    try:
        yield mongo_server
    finally:
        if not mongo_server.running:
            mongo_server.start()


@pytest.fixture
async def mongo_db_name(mongo_server: MongoServer) -> AsyncIterator[str]:
    """A database name no other test uses; dropped afterwards."""
    name = f"synk_test_{uuid.uuid4().hex[:12]}"
    yield name
    if mongo_server.running or not mongo_server.controllable:
        client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_server.uri, **CLIENT_OPTIONS)
        try:
            await client.drop_database(name)
        finally:
            await client.close()
            collect_leaked_sockets()


@pytest.fixture
async def pymongo_client(mongo_server: MongoServer) -> AsyncIterator[AsyncMongoClient[Any]]:
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_server.uri, **CLIENT_OPTIONS)
    yield client
    await client.close()
    collect_leaked_sockets()


@pytest.fixture
async def motor_client(mongo_server: MongoServer) -> AsyncIterator[Any]:
    motor_asyncio = pytest.importorskip("motor.motor_asyncio")
    client = motor_asyncio.AsyncIOMotorClient(mongo_server.uri, **CLIENT_OPTIONS)
    yield client
    client.close()


STORE_KINDS = [
    "memory",
    "sqlite",
    pytest.param("mongo-pymongo", marks=pytest.mark.mongo),
    pytest.param("mongo-motor", marks=pytest.mark.mongo),
]


@pytest.fixture(params=STORE_KINDS)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """Makes a store of each kind in turn, all on one empty database per test.

    A factory rather than a store, so that a test can open a second store on the
    same data (to check what the first one wrote). Only the MongoDB kinds start
    the server.
    """
    kind: str = request.param
    if kind == "memory":
        memory = MemoryStore()
        return lambda: memory
    if kind == "sqlite":
        return lambda: SQLiteStore(tmp_path / "world.sqlite3")
    name: str = request.getfixturevalue("mongo_db_name")
    if kind == "mongo-motor":
        motor_client = request.getfixturevalue("motor_client")
        return lambda: MongoStore(motor_client[name])
    # Our FerretDB is built with the fix that makes large update commands safe,
    # so this kind sends each batch as one bulk write, where the Motor kind lets
    # the store split it as it does for any FerretDB 1.x.
    server: MongoServer = request.getfixturevalue("mongo_server")
    max_ops = 1_000_000 if server.controllable else None
    client = request.getfixturevalue("pymongo_client")
    return lambda: MongoStore(client[name], max_ops_per_command=max_ops)


@pytest.fixture
async def store(make_store: Callable[[], Store]) -> AsyncIterator[Store]:
    """Each store in turn, empty: the contract suite runs over all of them."""
    async with make_store() as made:
        yield made
