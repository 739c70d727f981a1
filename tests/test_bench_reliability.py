"""The reliability benches (bench/reliability/), each in a tiny configuration, end to end.

Every scenario runs as its own process, as an operator runs it: real servers,
real WebSockets, real FerretDB and SQLite. The tests check the JSON result's
fields and that the verdict passes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent

RESULT_FIELDS = {"scenario", "command", "started_at", "wall_s", "machine", "params", "figures"}


def run_scenario(out: Path, scenario: str, *flags: str, timeout: float = 50) -> dict[str, Any]:
    """Runs ``python -m bench.reliability <scenario> ...`` and returns its JSON result."""
    cmd = [sys.executable, "-m", "bench.reliability", scenario, "--quiet", "--out", str(out)]
    proc = subprocess.run(
        [*cmd, *flags], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    path = out / f"reliability-{scenario}.json"
    assert path.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    result: dict[str, Any] = orjson.loads(path.read_bytes())
    assert result.keys() >= RESULT_FIELDS
    assert result["scenario"] == scenario
    checks = result["verdict"]["checks"]
    failed = {name: c for name, c in checks.items() if not c["ok"]}
    assert result["verdict"]["passed"] and not failed, (failed, proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{scenario}: PASS" in proc.stdout
    return result


@pytest.mark.timeout(60)
def test_fuzz_leaves_the_server_up_answering_and_small(tmp_path: Path) -> None:
    result = run_scenario(
        tmp_path, "fuzz", "--frames", "500", "--connections", "30", "--entities", "300"
    )
    f = result["figures"]
    assert f["frames_sent"] == 500
    assert sum(f["frames_sent_by_category"].values()) == 500
    assert len(f["frames_sent_by_category"]) >= 8
    # Bad frames are answered with errors; oversized and non-UTF-8 ones close the connection.
    assert {"bad_json", "bad_message"} <= f["error_frames_by_code"].keys()
    assert sum(f["error_frames_by_code"].values()) > 100
    assert {"connected", "after_warmup", "end", "after_close"} <= f["rss_mib"].keys()
    assert f["rss_growth_mib"] <= 6.0
    assert f["fresh_client"]["ok"] and f["fresh_client"]["mismatches"] == 0
    assert f["fresh_client"]["objects"] > 0
    assert f["sigterm_exit_code"] == 0
    assert set(result["verdict"]["checks"]) == {
        "server_alive",
        "healthz",
        "still_ticking",
        "fresh_client",
        "every_slot_answered_a_ping_at_the_end",
        "rss_growth_mib",
    }


def _ferretdb_available() -> bool:
    if os.environ.get("MONGODB_URI"):
        return True
    return shutil.which("go") is not None or (ROOT / ".cache/go/bin/ferretdb").exists()


@pytest.mark.mongo
@pytest.mark.timeout(60)
@pytest.mark.skipif(not _ferretdb_available(), reason="no MONGODB_URI, and no Go for FerretDB")
def test_outage_every_change_is_stored_once_the_database_is_back(tmp_path: Path) -> None:
    result = run_scenario(
        tmp_path,
        "outage",
        *("--outage-s", "2", "--entities", "300", "--before-s", "0.5", "--after-s", "0.5"),
    )
    f = result["figures"]
    assert f["changes_during_outage"] > 0 and f["objects_changed_during_outage"] > 0
    assert f["pending_objects_peak"] > 0 and f["failed_write_attempts"] > 0
    assert f["stored_documents"] == f["world_documents"] == f["objects"]
    assert f["missing"] == f["extra"] == f["different"] == 0
    assert f["drain_s"] >= 0 and f["final_flush_s"] >= 0
    assert f["outage_s"] >= 2


@pytest.mark.timeout(60)
def test_reconnect_every_cache_is_right_after_a_restart(tmp_path: Path) -> None:
    result = run_scenario(tmp_path, "reconnect", "--clients", "30", "--entities", "1000")
    f = result["figures"]
    assert f["clients_correct"] == 30 and f["mismatches"] == 0
    assert f["close_codes_at_restart"] == {"1001": 30}
    assert f["same_caches_as_before_restart"] == 30
    tc = f["time_to_correct_s"]
    assert 0 < tc["p50"] <= tc["max"] == f["time_to_all_correct_s"] <= 1.6


@pytest.mark.timeout(60)
def test_kill9_leaves_a_sound_file_and_a_world_that_loads(tmp_path: Path) -> None:
    result = run_scenario(
        tmp_path,
        "kill9",
        *("--kills", "3", "--entities", "300", "--kill-min-s", "0.2", "--kill-max-s", "1.0"),
    )
    f = result["figures"]
    assert f["kills"] == f["kills_ok"] == 3
    assert f["integrity"] == {"ok": 3}
    for k in f["per_kill"]:
        assert k["integrity"] == "ok" and k["rows"] == k["loaded"] == 301
        assert k["gold"] == k["gold_loaded"] == 300 * 100
        assert k["healthz"] and k["skipped"] == 0 and not k["created"]
    assert f["final_after_sigterm"]["integrity"] == "ok"
