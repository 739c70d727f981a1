#!/usr/bin/env bash
# Sets up what synkworld's commands need on a fresh machine, each part only once:
#   python   a virtual environment in .venv with the package and its dev tools
#   system   redis-server and chromium (Debian packages; installed when run as root)
#   web      the JavaScript client's npm packages (web/node_modules; servers serve its
#            MessagePack library from there, so the demos need it too)
#   ferretdb a MongoDB-compatible server for the store tests (built with Go into .cache/)
# Usage: scripts/bootstrap.sh [python] [system] [web] [ferretdb]   (no argument: python only)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[bootstrap] %s\033[0m\n' "$*" >&2; exit 1; }

python_part() {
  local py="${PYTHON:-python3}"
  command -v "$py" >/dev/null || die "Python 3.11 or newer is needed: no '$py' on PATH."
  "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "Python 3.11 or newer is needed; '$py' is $("$py" --version 2>&1)."
  local stamp=".venv/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    if [ ! -x .venv/bin/python ]; then
      say "creating .venv"
      "$py" -m venv .venv || die "could not create a virtual environment (Debian: apt-get install python3-venv)."
    fi
    say "installing synkworld and its dev tools into .venv"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[mongo,motor,redis,bench]" --group dev
    rm -f .venv/.installed-*
    touch "$stamp"
  fi
}

system_part() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing ${missing[*]} with apt-get"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    die "missing system packages: ${missing[*]}. Install them (Debian: sudo apt-get install ${missing[*]}) and run again."
  fi
}

web_part() {
  command -v npm >/dev/null || die "Node.js 20 with npm is needed for the JavaScript client (its tests, and the MessagePack library a server serves with it)."
  if [ ! -d web/node_modules ] || [ web/package-lock.json -nt web/node_modules ]; then
    say "installing web/ npm packages"
    (cd web && npm ci --silent --no-audit --no-fund)
    touch web/node_modules
  fi
}

ferretdb_part() {
  if [ -n "${MONGODB_URI:-}" ]; then
    say "MONGODB_URI is set: the store tests use that server, no FerretDB build"
    return 0
  fi
  scripts/ferretdb.sh build >/dev/null
}

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(python)
for part in "${parts[@]}"; do
  case "$part" in
    python) python_part ;;
    system) system_part ;;
    web) web_part ;;
    ferretdb) ferretdb_part ;;
    *) die "unknown part '$part' (python, system, web, ferretdb)" ;;
  esac
done
