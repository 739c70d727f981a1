"""The core never imports the transport, the database drivers or redis."""

from __future__ import annotations

import subprocess
import sys

import pytest

CORE = [
    "synkworld._errors",
    "synkworld._limits",
    "synkworld._grid",
    "synkworld._objects",
    "synkworld._columns",
    "synkworld._world",
    "synkworld._batch",
    "synkworld._motion_json",
    "synkworld._protocol",
    "synkworld._sessions",
    "synkworld._client_protocol",
    "synkworld._bus",
    "synkworld._frames",
    "synkworld._tick",
    "synkworld._mirror",
    "synkworld._cell_counters",
    "synkworld._bus_backend",
    "synkworld.bus",
    "synkworld.bus.memory",
]
FORBIDDEN = ["aiohttp", "pymongo", "motor", "redis", "sqlite3", "prometheus_client"]


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_io_library(module: str) -> None:
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        f"print(','.join(sorted(m for m in {FORBIDDEN!r} if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
