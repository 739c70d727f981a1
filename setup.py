"""A build step pyproject.toml cannot say: no wheel without the client's MessagePack library.

The wheel carries copies of the JavaScript client's MessagePack library
(synkworld/_web/msgpack, a link to web/node_modules/@msgpack/msgpack; see
synkworld/_client_files.py). Without `npm ci` in web/ that link dangles, and
setuptools would quietly build a wheel whose /synkworld/client.js cannot load
in a browser. Editable installs (`pip install -e .`) read the files in place
and need no check: scripts/bootstrap.sh installs Python before npm packages.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup  # type: ignore[import-untyped]
from setuptools.command.build_py import build_py  # type: ignore[import-untyped]

MSGPACK_ENTRY = Path(__file__).parent / "synkworld" / "_web" / "msgpack" / "dist.esm" / "index.mjs"


class BuildPyWithClient(build_py):  # type: ignore[misc]  # setuptools is untyped here
    def run(self) -> None:
        if not getattr(self, "editable_mode", False) and not MSGPACK_ENTRY.is_file():
            raise SystemExit(
                "synkworld: cannot build the package without the JavaScript client's MessagePack "
                f"library ({MSGPACK_ENTRY} is missing): run `npm ci` in web/ "
                "(scripts/bootstrap.sh web) first"
            )
        super().run()


setup(cmdclass={"build_py": BuildPyWithClient})
