"""Settings for the whole test session."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.web.support import WEB


@pytest.fixture(scope="session", autouse=True)
def spill_journals_in_a_temporary_directory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """Stores without a spill path of their own would put their journals in the cwd."""
    old = os.environ.get("SYNKWORLD_SPILL_DIR")
    os.environ["SYNKWORLD_SPILL_DIR"] = str(tmp_path_factory.mktemp("spill"))
    yield
    if old is None:
        os.environ.pop("SYNKWORLD_SPILL_DIR", None)
    else:
        os.environ["SYNKWORLD_SPILL_DIR"] = old


@pytest.fixture
def node() -> str:
    """The path of the `node` executable; skips when Node or web/node_modules is missing."""
    exe = shutil.which("node")
    if exe is None:
        pytest.skip("node is not on PATH (Node.js 20 is needed for the JavaScript client tests)")
    for package in ("ws", "@msgpack/msgpack"):
        if not (WEB / "node_modules" / package).is_dir():
            pytest.skip(f"web/node_modules/{package} is missing: run `npm ci` in web/")
    return exe
