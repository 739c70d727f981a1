"""The client as a server serves it: client.js importing the MessagePack copy served beside it.

web/synkworld.js imports `@msgpack/msgpack` by its bare specifier, which a page
without a bundler cannot resolve; the server serves the library's ES modules
under /synkworld/msgpack/ and client.js with that one specifier rewritten
(synkworld/_client_files.py).
"""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

import aiohttp
import pytest

from synkworld import GridMap, Server, World
from synkworld import _client_files as files
from tests.web.support import WEB

pytestmark = pytest.mark.timeout(60)

MSGPACK = WEB / "node_modules" / "@msgpack" / "msgpack"
RELATIVE_IMPORT = re.compile(rb'(?:from|import)\s*"(\.[^"]+)"')


@pytest.fixture
def msgpack_installed() -> None:
    if not (MSGPACK / "dist.esm" / "index.mjs").is_file():
        pytest.skip("web/node_modules/@msgpack/msgpack is missing: run `npm ci` in web/")


def served_client() -> bytes:
    source = (WEB / "synkworld.js").read_bytes()
    assert source.count(b'from "@msgpack/msgpack";') == 1
    return source.replace(b'from "@msgpack/msgpack";', b'from "./msgpack/index.mjs";')


async def test_the_server_serves_the_client_and_every_module_it_imports(
    msgpack_installed: None,
) -> None:
    server = Server(World(GridMap(cell_size=10)), freeze_gc=False)
    async with aiohttp.ClientSession() as http, server.running() as url:
        async with http.get(url + "/synkworld/client.js") as r:
            assert r.status == 200
            assert r.content_type == "text/javascript"
            body = await r.read()
        assert body == served_client()
        assert b"@msgpack/msgpack" not in body
        # Follow the relative imports from client.js, as a browser would.
        todo, seen = ["/synkworld/client.js"], set()
        while todo:
            path = todo.pop()
            if path in seen:
                continue
            seen.add(path)
            async with http.get(url + path) as r:
                assert r.status == 200, path
                assert r.content_type == "text/javascript", path
                assert r.headers["ETag"], path
                text = await r.read()
            if path.startswith("/synkworld/msgpack/"):
                name = path.removeprefix("/synkworld/msgpack/")
                assert text == (MSGPACK / "dist.esm" / name).read_bytes(), path
            base = path.rsplit("/", 1)[0]
            for rel in RELATIVE_IMPORT.findall(text):
                parts = [*base.split("/"), *rel.decode().split("/")]
                out: list[str] = []
                for p in parts:
                    if p == "..":
                        out.pop()
                    elif p != ".":
                        out.append(p)
                todo.append("/".join(out))
        assert "/synkworld/msgpack/index.mjs" in seen
        assert "/synkworld/msgpack/Decoder.mjs" in seen
        # Only the ES modules are served, none of the package's other files.
        for path in ("/synkworld/msgpack/package.json", "/synkworld/msgpack/LICENSE"):
            async with http.get(url + path) as r:
                assert r.status == 404, path


def test_the_served_files_run_without_node_modules(
    node: str, msgpack_installed: None, tmp_path: Path
) -> None:
    """Laid out as the server serves them, client.js and MessagePack load alone in Node."""
    for url_path in files.CLIENT_PATHS:
        dest = tmp_path / url_path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(files.client_file(url_path).body)
    pong = [3, 0x82, 0xA1, 0x6D, 0xA4, *b"pong", 0xA1, 0x74, 1]  # 03, then {"m": "pong", "t": 1}
    script = (
        'import("./synkworld/client.js").then((m) => { const c = new m.ObjectCache();'
        f" c.apply(new Uint8Array({pong}));"
        " console.log(typeof m.Client, c.size); })"
    )
    out = subprocess.run(
        [node, "--input-type=module", "-e", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["function", "0"]


def test_without_node_modules_the_server_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    web = tmp_path / "_web"
    web.mkdir()
    (web / "synkworld.js").write_bytes((WEB / "synkworld.js").read_bytes())
    monkeypatch.setattr(files, "_web", lambda: web)
    with caplog.at_level(logging.ERROR, logger="synkworld.transport"):
        module = files.client_file("/synkworld/msgpack/index.mjs")
    assert module.body.startswith(b"throw new Error(")
    assert b"npm ci" in module.body
    assert any("npm ci" in r.getMessage() for r in caplog.records)
    assert files.client_file("/synkworld/client.js").body == served_client()
