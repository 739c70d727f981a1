"""The JavaScript client as the server serves it: `/synkworld/client.js`, its types and MessagePack.

web/ is the client's home; the package carries the same files (symlinks in
the repository, copies in the wheel), so that a server installed from PyPI
serves the client that matches its protocol, as Socket.IO serves
`/socket.io/socket.io.js`.

The client imports one library, `@msgpack/msgpack` (an npm dependency of
web/package.json, for protocol version 2), by its bare specifier, which a
bundler resolves and a browser alone cannot. So the server also serves that
library's ES module build (its `dist.esm/` folder) under
`/synkworld/msgpack/` (`/synkworld/msgpack/index.mjs` and the modules it
imports), and serves client.js with that one specifier rewritten:
`from "@msgpack/msgpack"` becomes `from "./msgpack/index.mjs"`, which a
browser resolves against client.js's own URL. Nothing else in client.js
changes; web/synkworld.js itself stays importable by Node and bundlers.

In the repository, `_web/msgpack` is a symlink to
`web/node_modules/@msgpack/msgpack`, which `npm ci` in web/ makes
(scripts/bootstrap.sh web). Without it the server still starts: it logs an
error saying so, and serves at `/synkworld/msgpack/index.mjs` a module that
throws the same sentence in the page, so that the reason shows where the
client fails. The wheel carries real copies (pyproject.toml's package data).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

__all__ = ["CLIENT_PATHS", "MSGPACK_MISSING", "ClientFile", "client_file"]

log = logging.getLogger("synkworld.transport")

JS = "text/javascript"
MSGPACK_URL = "/synkworld/msgpack/"
MSGPACK_ENTRY = "index.mjs"
# The import in web/synkworld.js, and what the served client.js says instead.
BARE_IMPORT = b'from "@msgpack/msgpack";'
SERVED_IMPORT = b'from "./msgpack/' + MSGPACK_ENTRY.encode() + b'";'

MSGPACK_MISSING = (
    "synkworld: the JavaScript client's MessagePack library is missing from this "
    "installation (synkworld/_web/msgpack, a link to web/node_modules/@msgpack/msgpack): "
    "run `npm ci` in web/ (scripts/bootstrap.sh web)"
)


def _web() -> Traversable:
    return resources.files("synkworld") / "_web"


def _msgpack_modules() -> list[str]:
    """The module files of the MessagePack ES build, as paths relative to dist.esm/."""
    root = _web() / "msgpack" / "dist.esm"
    if not root.is_dir():
        return [MSGPACK_ENTRY]  # served as the module that says what is missing
    names: list[str] = []
    stack: list[tuple[str, Traversable]] = [("", root)]
    while stack:
        prefix, folder = stack.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                stack.append((f"{prefix}{entry.name}/", entry))
            elif entry.name.endswith(".mjs"):
                names.append(prefix + entry.name)
    return sorted(names)


# URL path -> (file under _web/, content type)
CLIENT_PATHS: dict[str, tuple[str, str]] = {
    "/synkworld/client.js": ("synkworld.js", JS),
    "/synkworld/client.d.ts": ("synkworld.d.ts", "text/plain"),
    **{MSGPACK_URL + name: ("msgpack/dist.esm/" + name, JS) for name in _msgpack_modules()},
}


@dataclass(frozen=True, slots=True)
class ClientFile:
    """One client file's bytes, content type and entity tag."""

    body: bytes
    content_type: str
    etag: str


def _served_client(body: bytes) -> bytes:
    """client.js with its import of MessagePack pointing at the served copy."""
    if body.count(BARE_IMPORT) != 1:
        raise RuntimeError(
            f"web/synkworld.js must import MessagePack exactly once as {BARE_IMPORT.decode()}"
        )
    return body.replace(BARE_IMPORT, SERVED_IMPORT)


def client_file(url_path: str) -> ClientFile:
    """The client file served at `url_path` (one of `CLIENT_PATHS`)."""
    name, content_type = CLIENT_PATHS[url_path]
    file = _web() / name
    if url_path.startswith(MSGPACK_URL) and not file.is_file():
        log.error("%s; pages cannot load /synkworld/client.js", MSGPACK_MISSING)
        body = f"throw new Error({json.dumps(MSGPACK_MISSING)});\n".encode()
    else:
        body = file.read_bytes()
    if name == "synkworld.js":
        body = _served_client(body)
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    return ClientFile(body, content_type, etag)
