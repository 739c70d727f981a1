"""The JavaScript library's protocol constants equal the Python server's."""

from __future__ import annotations

import inspect
import json
import subprocess

import pytest

from synkworld import GridMap, Server, World, _protocol
from synkworld._protocol import ViewMessage, parse_client_message
from tests.web.support import WEB

pytestmark = pytest.mark.timeout(60)

PRINT_CONSTANTS = """
import("./synkworld.js").then((m) => {
  console.log(JSON.stringify({
    PROTOCOL: m.PROTOCOL,
    PROTOCOL_VERSION: m.PROTOCOL_VERSION,
    CLIENT_ERROR_CODES: m.CLIENT_ERROR_CODES,
    frozen: Object.isFrozen(m.PROTOCOL) && Object.isFrozen(m.PROTOCOL.CLOSE_CODES),
  }));
});
"""


@pytest.fixture
def js(node: str) -> dict[str, object]:
    out = subprocess.run(
        [node, "--input-type=module", "-e", PRINT_CONSTANTS],
        cwd=WEB,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    constants: dict[str, object] = json.loads(out.stdout)
    return constants


def test_protocol_constants_match_the_server(js: dict[str, object]) -> None:
    p = js["PROTOCOL"]
    assert isinstance(p, dict)
    assert p["VERSION"] == js["PROTOCOL_VERSION"] == _protocol.PROTOCOL_VERSION
    assert p["MAX_CLIENT_FRAME_BYTES"] == _protocol.MAX_CLIENT_FRAME_BYTES
    assert p["CLIENT_KINDS"] == list(_protocol.CLIENT_MESSAGES)
    assert p["SERVER_KINDS"] == list(_protocol.SERVER_MESSAGES)
    assert p["ERROR_CODES"] == list(_protocol.ERROR_CODES)
    # The JavaScript names are the Python ones in upper case; it carries the ones a
    # client acts on (1008 bad frames, 1009 too large, 1013 too slow).
    close = p["CLOSE_CODES"]
    assert isinstance(close, dict)
    assert set(close) >= {"POLICY_VIOLATION", "MESSAGE_TOO_BIG", "TRY_AGAIN_LATER"}
    assert close == {
        name.upper(): code for name, code in _protocol.CLOSE_CODES.items() if name.upper() in close
    }
    assert js["frozen"] is True


def test_protocol_defaults_match_the_server(js: dict[str, object]) -> None:
    p = js["PROTOCOL"]
    assert isinstance(p, dict)
    app = Server(World(GridMap(cell_size=10)), freeze_gc=False).make_app()
    assert p["PATH"] in {r.resource.canonical for r in app.router.routes() if r.resource}
    assert p["DEFAULT_MAP"] == inspect.signature(GridMap).parameters["name"].default
    view = parse_client_message(b'{"m":"view","rect":[0,0,1,1]}')
    assert isinstance(view, ViewMessage)
    assert (view.map, view.margin) == (p["DEFAULT_MAP"], p["DEFAULT_MARGIN"])


def test_client_error_codes_are_not_server_codes(js: dict[str, object]) -> None:
    codes = js["CLIENT_ERROR_CODES"]
    assert isinstance(codes, dict)
    assert len(set(codes.values())) == len(codes)
    assert not set(codes.values()) & set(_protocol.ERROR_CODES)
