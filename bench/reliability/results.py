"""What a scenario hands back and how it is reported: figures, verdicts, the JSON result."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.reliability.processes import ROOT

# What a scenario hands back: figures, verdict checks, summary lines.
Outcome = tuple[dict[str, Any], dict[str, dict[str, Any]], list[str]]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank); 0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    return float(s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))])


def rounded(v: float, nd: int = 3) -> float:
    """`v` as a float rounded to `nd` digits, for the JSON figures."""
    return round(float(v), nd)


class Notes:
    """Progress lines on stderr (none with --quiet)."""

    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled = enabled
        self.label = label
        self.t0 = time.monotonic()

    def __call__(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(f"[{self.label} {time.monotonic() - self.t0:6.1f}s] {text}\n")
            sys.stderr.flush()


def check(ok: bool, value: Any = None, limit: Any = None) -> dict[str, Any]:
    """One line of a verdict."""
    out: dict[str, Any] = {"ok": bool(ok), "value": value}
    if limit is not None:
        out["limit"] = limit
    return out


def _engine_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "synkworld_modified": bool(git("status", "--porcelain", "--", "synkworld")),
    }


def finish(
    scenario: str,
    a: argparse.Namespace,
    argv: Sequence[str],
    params: dict[str, Any],
    figures: dict[str, Any],
    checks: dict[str, dict[str, Any]],
    summary: list[str],
    started: float,
) -> int:
    """Writes the JSON result, prints the summary; returns the exit status."""
    passed = all(c["ok"] for c in checks.values())
    result = {
        "scenario": scenario,
        "command": "python -m bench.reliability " + " ".join(shlex.quote(v) for v in argv),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_s": rounded(time.time() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_at_end": [round(v, 2) for v in os.getloadavg()],
            "engine": _engine_commit(),
        },
        "params": params,
        "figures": figures,
        "verdict": {"passed": passed, "checks": checks},
    }
    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"reliability-{scenario}.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    lines = [f"{scenario}: {'PASS' if passed else 'FAIL'}", *(f"  {s}" for s in summary)]
    for name, c in checks.items():
        limit = f" (limit {c['limit']})" if "limit" in c else ""
        lines.append(f"  [{'ok' if c['ok'] else 'FAILED'}] {name}: {c['value']}{limit}")
    lines.append(f"  results: {path}")
    print("\n".join(lines), flush=True)
    return 0 if passed else 1
