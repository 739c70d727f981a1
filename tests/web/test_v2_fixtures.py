"""Protocol v2 frames the server encodes, decoded by the JavaScript client to the same caches.

The Python side records frames with the reference applier's view after each
(tests/web/v2_frames.py); web/test/v2-fixtures.test.js feeds them to the
library's `ObjectCache` in Node and compares, frame by frame.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

from tests.web.support import WEB
from tests.web.v2_frames import record_grid_world, record_mixed


def test_the_js_client_decodes_recorded_v2_frames_to_the_reference_caches(
    node: str, tmp_path: Path
) -> None:
    mixed, grid = tmp_path / "mixed.json", tmp_path / "grid-world.json"
    record_mixed(mixed)
    record_grid_world(grid, ticks=60)
    recorded = json.loads(mixed.read_text())
    kinds = {base64.b64decode(f)[0] for f in recorded["frames"]}
    assert kinds == {1, 2}  # tick frames, and the resync of the lagging stretch
    run = subprocess.run(
        [node, "--test", "--test-reporter=tap", "test/v2-fixtures.test.js"],
        cwd=WEB,
        env={**os.environ, "SYNK_V2_FRAMES": os.pathsep.join([str(mixed), str(grid)])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "# pass 2" in run.stdout and "# skipped 0" in run.stdout, run.stdout[-2000:]
