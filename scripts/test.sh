#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: sets up what it needs, then lint,
# types, the JavaScript client's tests, and pytest (which starts FerretDB,
# redis-server, synkworld servers and headless Chromium itself).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/bootstrap.sh python system web ferretdb

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
step "mypy (strict)"
.venv/bin/mypy
step "web: tsc --noEmit"
(cd web && npx --no-install tsc -p tsconfig.json)
step "web: node --test"
(cd web && node --test test/)
step "pytest"
.venv/bin/python -m pytest "$@"
