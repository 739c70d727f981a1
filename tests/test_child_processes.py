"""Regression: when a test run was killed, the servers it had started kept running (and ticking)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(90)

PARENT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from tests.browser.demo_helpers import DemoServer

    async def main():
        demo = DemoServer(Path(sys.argv[1]), Path(sys.argv[2]), agents=50)
        await demo.start()
        print(demo.proc.pid, flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
    """
)


def _ended(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # a zombie has ended; only its parent's wait is missing


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_server_a_test_started_ends_when_the_test_process_is_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "w.sqlite3"), str(tmp_path / "demo.log")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert parent.stdout is not None
    with parent.stdout:
        server_pid = int(parent.stdout.readline())
        assert not _ended(server_pid)
        parent.kill()  # as a CI timeout or a second Ctrl-C would
        parent.wait()
    deadline = time.monotonic() + 30
    while not _ended(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _ended(server_pid), (tmp_path / "demo.log").read_text()[-2000:]
