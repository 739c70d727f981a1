"""A command started wrongly says what is wrong in one line on stderr and exits with 2."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.served import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)


def run(
    args: list[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "synkworld", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def one_line_failure(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


def test_a_factory_module_that_does_not_exist(tmp_path: Path) -> None:
    line = one_line_failure(run(["serve", "nosuchmodule:make"], cwd=tmp_path))
    assert line == (
        "synkworld: cannot import 'nosuchmodule' (for 'nosuchmodule:make'): no module "
        f"'nosuchmodule' in {tmp_path} or on the Python path"
    )


def test_a_factory_module_that_fails_to_import(tmp_path: Path) -> None:
    (tmp_path / "broken_app.py").write_text("import nosuchdependency\n")
    out = run(["serve", "broken_app:make"], cwd=tmp_path)
    line = one_line_failure(out)
    assert line == (
        "synkworld: importing 'broken_app' failed: ModuleNotFoundError: "
        "No module named 'nosuchdependency' (--debug shows the traceback)"
    )
    debug = run(["serve", "broken_app:make", "--debug"], cwd=tmp_path)
    assert debug.returncode == 2
    assert "Traceback" in debug.stderr and 'broken_app.py", line 1' in debug.stderr


def test_a_factory_that_raises(tmp_path: Path) -> None:
    (tmp_path / "raising_app.py").write_text("def make():\n    raise RuntimeError('no map file')\n")
    line = one_line_failure(run(["serve", "raising_app:make"], cwd=tmp_path))
    assert line == (
        "synkworld: the factory make failed: RuntimeError: no map file "
        "(--debug shows the traceback)"
    )


def test_a_port_already_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_failure(
            run(["serve", "examples.minimal_server:make_server", "--port", str(port)])
        )
    assert line.startswith("synkworld: cannot listen: error while attempting to bind on address")
    assert line.endswith(
        "address already in use (another server has it? choose a port with --port)"
    )


def test_a_store_that_cannot_be_reached(tmp_path: Path) -> None:
    # Nothing listens on the port; the example's factory loads from the store first.
    uri = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300"
    out = run(
        ["serve", "examples.persistent_server:make_server"], env={"MONGODB_URI": uri}, cwd=tmp_path
    )
    line = one_line_failure(out)
    assert line.startswith("synkworld: the store failed: ")
    assert "cannot reach" in line or "unavailable" in line or "refused" in line, line


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("SYNKWORLD_PORT", "eighty", "SYNKWORLD_PORT='eighty' is not an integer"),
        ("SYNKWORLD_TICK_RATE_HZ", "fast", "SYNKWORLD_TICK_RATE_HZ='fast' is not a number"),
        ("SYNKWORLD_MAX_KEYS", "1.5", "SYNKWORLD_MAX_KEYS='1.5' is not an integer"),
        ("SYNKWORLD_COMPRESSION", "maybe", "SYNKWORLD_COMPRESSION='maybe' is not a yes or no"),
    ],
)
def test_a_bad_environment_value(name: str, value: str, says: str) -> None:
    line = one_line_failure(
        run(["serve", "examples.minimal_server:make_server"], env={name: value})
    )
    assert line.startswith(f"synkworld: {says}")


def test_an_unknown_log_level_and_format() -> None:
    args = ["serve", "examples.minimal_server:make_server"]
    line = one_line_failure(run([*args, "--log-level", "loud"]))
    assert (
        line == "synkworld: unknown log level 'loud': one of debug, info, warning, error, critical"
    )
    line = one_line_failure(run([*args, "--log-format", "xml"]))
    assert line == "synkworld: unknown log format 'xml': one of text, json"


def test_a_bad_flag_is_one_line_too() -> None:
    line = one_line_failure(run(["serve", "examples.minimal_server:make_server", "--port", "x"]))
    assert line == (
        "synkworld serve: argument --port: invalid int value: 'x' (see synkworld serve --help)"
    )


def test_the_version() -> None:
    out = run(["--version"])
    assert out.returncode == 0
    assert out.stdout.strip().startswith("synkworld 0.")


def serve_until_ready(*flags: str) -> tuple[str, str]:
    """Serves the minimal server with `flags`, stops it once ready: its first line, its stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "synkworld", "serve", "examples.minimal_server:make_server", *flags],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    return first, err


def test_the_url_is_printed_whatever_the_log_level_and_logs_can_be_json() -> None:
    port = free_port()
    first, err = serve_until_ready("--port", str(port), "--log-level", "error")
    assert first.strip() == (
        f"synkworld: serving http://127.0.0.1:{port}/ (WebSocket at ws://127.0.0.1:{port}/ws)"
    )
    assert err == ""  # nothing at ERROR; the INFO lines of a start and a stop are not shown

    _, err = serve_until_ready("--port", str(free_port()), "--log-format", "json")
    records = [json.loads(line) for line in err.strip().splitlines()]
    assert records, "a start and a stop log something at INFO"
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert any(r["level"] == "info" for r in records)
