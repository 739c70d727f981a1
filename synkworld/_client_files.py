"""The JavaScript client as the server serves it: `/synkworld/client.js` and its types.

web/ is the client's home; the package carries the same two files (symlinks in
the repository, copies in the wheel), so that a server installed from PyPI
serves the client that matches its protocol, as Socket.IO serves
`/socket.io/socket.io.js`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

__all__ = ["CLIENT_PATHS", "ClientFile", "client_file"]

# URL path -> (file in the package, content type)
CLIENT_PATHS = {
    "/synkworld/client.js": ("synkworld.js", "text/javascript"),
    "/synkworld/client.d.ts": ("synkworld.d.ts", "text/plain"),
}


@dataclass(frozen=True, slots=True)
class ClientFile:
    """One client file's bytes, content type and entity tag."""

    body: bytes
    content_type: str
    etag: str


def client_file(url_path: str) -> ClientFile:
    """The client file served at `url_path` (one of `CLIENT_PATHS`)."""
    name, content_type = CLIENT_PATHS[url_path]
    body = (resources.files("synkworld") / "_web" / name).read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    return ClientFile(body, content_type, etag)
