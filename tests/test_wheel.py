"""The wheel, installed into a fresh virtual environment outside the checkout, works alone.

It carries the JavaScript client (served at /synkworld/client.js: the bytes
of web/synkworld.js with its MessagePack import pointed at the served copy)
and that copy (web/node_modules/@msgpack/msgpack's ES modules, served under
/synkworld/msgpack/, with the library's license), the demo with its page, and
the LICENSE; it builds without warnings.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import aiohttp
import pytest

from tests.served import Served

ROOT = Path(__file__).resolve().parents[1]
MSGPACK = ROOT / "web" / "node_modules" / "@msgpack" / "msgpack"
MSGPACK_MODULES = sorted(
    p.relative_to(MSGPACK / "dist.esm").as_posix() for p in MSGPACK.glob("dist.esm/**/*.mjs")
)
pytestmark = pytest.mark.timeout(600)
LOADTEST_FLAGS = ["--clients", "4", "--seconds", "2", "--sample", "2", "--out"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed; returns its bin/ folder."""
    assert "index.mjs" in MSGPACK_MODULES, "web/node_modules is missing: run `npm ci` in web/"
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp / "dist"), "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    noise = [
        line
        for line in (build.stdout + build.stderr).splitlines()
        if "deprecat" in line.lower()
        or "SetuptoolsWarning" in line
        or ("license" in line.lower() and "warning" in line.lower())
    ]
    assert noise == [], "the build warns:\n" + "\n".join(noise)
    (wheel,) = (tmp / "dist").glob("synkworld-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for part in [
        "synkworld/_web/synkworld.js",
        "synkworld/_web/synkworld.d.ts",
        "synkworld/_web/monitor.html",
        "synkworld/demo/static/index.html",
        "synkworld/demo/static/app.js",
        "synkworld/py.typed",
        "synkworld/_web/msgpack/LICENSE",
        *(f"synkworld/_web/msgpack/dist.esm/{m}" for m in MSGPACK_MODULES),
    ]:
        assert part in names, part
    # Of the npm package, the wheel holds only what the server serves, and the license.
    assert sorted(n for n in names if n.startswith("synkworld/_web/msgpack/")) == sorted(
        [
            "synkworld/_web/msgpack/LICENSE",
            "synkworld/_web/msgpack/package.json",
            *(f"synkworld/_web/msgpack/dist.esm/{m}" for m in MSGPACK_MODULES),
        ]
    )
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if n.startswith(("tests/", "bench/", "examples/", "web/"))]
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True)
    bin_dir = tmp / "venv" / "bin"
    subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        check=True,
        timeout=500,
    )
    return bin_dir


def outside_env(bin_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    return env


def test_the_installed_package_imports_from_the_environment(
    installed: Path, tmp_path: Path
) -> None:
    out = subprocess.run(
        [str(installed / "python"), "-c", "import synkworld; print(synkworld.__file__)"],
        cwd=tmp_path,
        env=outside_env(installed),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().startswith(str(installed.parent))
    version = subprocess.run(
        [str(installed / "synkworld"), "--version"],
        cwd=tmp_path,
        env=outside_env(installed),
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.startswith("synkworld 0.")


async def test_a_minimal_world_serves_the_client_from_the_wheel(
    installed: Path, tmp_path: Path
) -> None:
    app = tmp_path / "app"
    shutil.copytree(ROOT / "examples" / "hello", app)
    served = Served(
        [str(installed / "synkworld"), "serve", "app:make_server"],
        cwd=app,
        env=outside_env(installed),
        log=tmp_path / "serve.log",
    )
    try:
        await served.healthy()
        async with aiohttp.ClientSession() as http:
            async with http.get(served.url + "/synkworld/client.js") as r:
                assert r.status == 200
                assert r.headers["ETag"]
                source = (ROOT / "web" / "synkworld.js").read_bytes()
                bare, served_at = b'from "@msgpack/msgpack";', b'from "./msgpack/index.mjs";'
                assert await r.read() == source.replace(bare, served_at)
            for module in MSGPACK_MODULES:
                async with http.get(served.url + "/synkworld/msgpack/" + module) as r:
                    assert r.status == 200, module
                    assert r.content_type == "text/javascript", module
                    assert await r.read() == (MSGPACK / "dist.esm" / module).read_bytes()
            async with http.get(served.url + "/") as r:
                assert "/synkworld/client.js" in await r.text()
        assert served.stop() == 0
    finally:
        served.kill()


async def test_the_demo_and_the_load_test_run_from_the_wheel(
    installed: Path, tmp_path: Path
) -> None:
    demo = Served(
        [str(installed / "synkworld"), "demo", "--agents", "50", "--db", str(tmp_path / "d.db")],
        cwd=tmp_path,
        env=outside_env(installed),
        log=tmp_path / "demo.log",
    )
    try:
        await demo.healthy()
        async with aiohttp.ClientSession() as http, http.get(demo.url + "/") as r:
            assert r.status == 200
            assert "synkworld" in (await r.text()).lower()
        target = demo.url.replace("http", "ws") + "/ws"
        loadtest = subprocess.run(
            [
                str(installed / "synkworld"),
                "loadtest",
                target,
                *LOADTEST_FLAGS,
                str(tmp_path / "lt"),
            ],
            cwd=tmp_path,
            env=outside_env(installed),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert loadtest.returncode == 0, loadtest.stdout + loadtest.stderr
        assert (tmp_path / "lt" / "loadtest.json").exists()
        assert demo.stop() == 0
    finally:
        demo.kill()
