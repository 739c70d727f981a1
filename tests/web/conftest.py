"""What the tests of the JavaScript client need: Node 20 and web/node_modules (`npm ci`)."""

from __future__ import annotations

import shutil

import pytest

from tests.web.support import WEB


@pytest.fixture
def node() -> str:
    """The path of the `node` executable; skips when Node or web/node_modules is missing."""
    exe = shutil.which("node")
    if exe is None:
        pytest.skip("node is not on PATH (Node.js 20 is needed for the JavaScript client tests)")
    if not (WEB / "node_modules" / "ws").is_dir():
        pytest.skip("web/node_modules/ws is missing: run `npm ci` in web/")
    return exe
