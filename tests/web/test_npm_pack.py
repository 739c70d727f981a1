"""The npm package `synkworld-client` holds the client, its types, its README and the license.

Its one dependency, @msgpack/msgpack, is pinned (the server serves that same
copy to pages without a bundler: synkworld/_client_files.py).

web/ keeps no copy of the repository's LICENSE: npm leaves symlinks out of a
package, so `prepack` copies ../LICENSE into web/ and `postpack` removes it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.web.support import ROOT, WEB

pytestmark = pytest.mark.timeout(120)

PACKED = {"LICENSE", "README.md", "package.json", "synkworld.js", "synkworld.d.ts"}


@pytest.fixture
def npm() -> str:
    """The path of the `npm` executable; skips when npm is missing, as the node fixture does."""
    exe = shutil.which("npm")
    if exe is None:
        pytest.skip("npm is not on PATH (Node.js 20 with npm is needed to pack the client)")
    return exe


def pack(npm: str, *args: str) -> dict[str, Any]:
    """Runs `npm pack --json` in web/ and returns its report of the one package."""
    out = subprocess.run(
        [npm, "pack", "--json", "--no-audit", "--no-fund", *args],
        cwd=WEB,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert out.returncode == 0, f"npm pack failed:\n{out.stdout}\n{out.stderr}"
    report = json.loads(out.stdout)
    assert isinstance(report, list) and len(report) == 1, report
    assert isinstance(report[0], dict)
    return report[0]


def test_the_package_holds_exactly_its_files(npm: str) -> None:
    report = pack(npm, "--dry-run")
    assert report["name"] == "synkworld-client"
    assert {f["path"] for f in report["files"]} == PACKED
    assert not (WEB / "LICENSE").exists(), "postpack left the copy of LICENSE in web/"


def test_the_one_dependency_is_msgpack_pinned_and_locked() -> None:
    """The client imports @msgpack/msgpack (protocol v2); the server serves the same version."""
    manifest = json.loads((WEB / "package.json").read_text())
    assert manifest["dependencies"] == {"@msgpack/msgpack": "3.1.3"}
    lock = json.loads((WEB / "package-lock.json").read_text())
    assert lock["packages"][""]["dependencies"] == manifest["dependencies"]
    assert lock["packages"]["node_modules/@msgpack/msgpack"]["version"] == "3.1.3"
    assert not lock["packages"]["node_modules/@msgpack/msgpack"].get("dev", False)


def test_the_packed_license_is_the_repository_mit_license(npm: str, tmp_path: Path) -> None:
    report = pack(npm, "--pack-destination", str(tmp_path))
    with tarfile.open(tmp_path / report["filename"]) as tgz:
        member = tgz.getmember("package/LICENSE")
        assert member.isfile(), "LICENSE is packed as a link, not as a file"
        extracted = tgz.extractfile(member)
        assert extracted is not None
        text = extracted.read().decode()
    assert text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge, to any person obtaining a copy" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text
    assert text == (ROOT / "LICENSE").read_text()
    manifest = json.loads((WEB / "package.json").read_text())
    assert manifest["license"] == "MIT"
    assert not (WEB / "LICENSE").exists(), "postpack left the copy of LICENSE in web/"
