"""Fixtures of the store tests: a MongoDB-compatible server, fresh databases, and stores.

MongoDB tests run against `MONGODB_URI` when it is set. Otherwise the session
builds FerretDB (scripts/ferretdb.sh, once, cached under .cache/go) and runs it
on a free loopback port with its SQLite backend in a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from synkworld.store import MemoryStore, SQLiteStore, Store
from synkworld.store.mongo import MongoStore
from tests.store.support import (
    CLIENT_OPTIONS,
    FERRETDB_SH,
    REPO,
    MongoServer,
    collect_leaked_sockets,
    free_port,
)

# The contract checks live in the package, where pytest rewrites asserts (for its
# detailed failure messages) only when told to before the module is imported. Once
# something has imported it, registering would only warn, and under our
# filterwarnings a warning is an error.
_CONTRACT = "synkworld.testing.store_contract"
if _CONTRACT not in sys.modules:
    pytest.register_assert_rewrite(_CONTRACT)

# PyMongo 4.20's async client leaks the socket of a server check that close()
# cancels (pymongo/pool_shared.py, _async_create_connection closes it on OSError
# and TimeoutError, not on CancelledError). The garbage collector closes it later,
# and its ResourceWarning, an error under our filterwarnings, would fail whichever
# test happens to be running then. Store tests ignore that warning; the fixtures
# that close clients collect the garbage at once (support.collect_leaked_sockets),
# so that it does not reach tests elsewhere.
_SOCKET_LEAK_FILTER = "ignore:unclosed <socket.socket:ResourceWarning"
_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.filterwarnings(_SOCKET_LEAK_FILTER))


@pytest.fixture
def leaked_sockets_collected() -> Iterator[None]:
    """Collects the sockets PyMongo leaked in the test, at its end (see above)."""
    yield
    collect_leaked_sockets()


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
    port = free_port()
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
    same data (to check what the first one wrote), and what the checks of
    `synkworld.testing.store_contract` take. Only the MongoDB kinds start the
    server.
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
