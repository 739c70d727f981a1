"""Where the JavaScript client lives, for the tests of it; a plain module to import."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
