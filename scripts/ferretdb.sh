#!/usr/bin/env bash
# Builds FerretDB once and runs it on its SQLite backend: the MongoDB-compatible
# server that the MongoDB store's tests and benchmarks use when MONGODB_URI is unset.
#
#   scripts/ferretdb.sh build            build if needed; print the binary's path
#   scripts/ferretdb.sh run PORT DIR     run in the foreground on 127.0.0.1:PORT,
#                                        SQLite files and state in DIR
#   scripts/ferretdb.sh command PORT DIR print the command line `run` executes
#
# Everything Go writes stays under <repo>/.cache/go (git-ignored).
#
# Why not a plain `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2`:
# a binary built that way panics at start-up ("Invalid build/version/version.txt
# file content"), because the module zip lacks the generated version.txt that
# FerretDB's build/version package requires when FerretDB is the main module. So
# the script copies the module's source out of the module cache, writes
# version.txt, applies two fixes to FerretDB 1.24.2 bugs that make it unusable
# for our batches (see apply_patches), and builds from the copy.
set -euo pipefail

FERRETDB_VERSION=v1.24.2
# Bump when apply_patches changes, so that an older build is not reused.
BUILD_STAMP="$FERRETDB_VERSION+synkworld.1"
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
GO_DIR=$ROOT/.cache/go
BIN=$GO_DIR/bin/ferretdb

export GOPATH=$GO_DIR/path
export GOBIN=$GO_DIR/bin
export GOCACHE=$GO_DIR/build
export GOMODCACHE=$GO_DIR/mod
export GOTOOLCHAIN=local
export GOFLAGS=-buildvcs=false

usage() {
    sed -n '4,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# A binary is usable when this script built it with the current patches and it
# starts far enough to print its version.
binary_works() {
    [[ -x $BIN && "$(cat "$BIN.stamp" 2>/dev/null)" == "$BUILD_STAMP" ]] \
        && "$BIN" --version >/dev/null 2>&1
}

# Replaces one exact, unique piece of a source file; fails loudly if it is not there.
replace_in() {
    local file=$1 old=$2 new=$3
    python3 - "$file" "$old" "$new" <<'PY'
import sys
path, old, new = sys.argv[1:]
text = open(path, encoding="utf-8").read()
if text.count(old) != 1:
    sys.exit(f"ferretdb.sh: patch does not apply to {path}")
open(path, "w", encoding="utf-8").write(text.replace(old, new))
PY
}

apply_patches() {
    local src=$1
    # 1. The SQLite backend looks documents up by `_ferretdb_sjson->'$._id'`, but
    #    creates the unique _id index on `_ferretdb_sjson->"_id"`. SQLite matches
    #    index expressions textually, so every lookup by _id (each update, upsert
    #    and delete) scans the whole table: a batch of N upserts costs O(N^2), and
    #    10,000 upserts take minutes. Use the indexed expression (same value).
    replace_in "$src/internal/backends/sqlite/metadata/metadata.go" \
        'IDColumn = DefaultColumn + "->'"'"'$._id'"'"'"' \
        'IDColumn = DefaultColumn + "->\"_id\""'
    # 2. The update command defers closing each update's query iterator until the
    #    whole command returns; an update that matched a document keeps its
    #    connection, so the 100th (SQLite) or 50th (PostgreSQL) update of an
    #    existing document in one command waits for a connection forever, and the
    #    server is wedged. Close each iterator when its update is done.
    replace_in "$src/internal/handler/msg_update.go" \
        $'\t\tcloser := iterator.NewMultiCloser()\n\t\tdefer closer.Close()\n' \
        $'\t\tcloser := iterator.NewMultiCloser()\n'
    replace_in "$src/internal/handler/msg_update.go" \
        $'\t\tresult, err := common.UpdateDocument(ctx, c, "update", iter, &u)\n' \
        $'\t\tresult, err := common.UpdateDocument(ctx, c, "update", iter, &u)\n\t\tcloser.Close()\n'
}

build() {
    if binary_works; then
        echo "$BIN"
        return
    fi
    command -v go >/dev/null || { echo "ferretdb.sh: 'go' is not on PATH" >&2; exit 1; }
    mkdir -p "$GO_DIR/bin" "$GO_DIR/src"
    # Two test sessions may build at once; the second waits and reuses the result.
    exec 9>"$GO_DIR/build.lock"
    if command -v flock >/dev/null; then flock 9; fi
    if binary_works; then
        echo "$BIN"
        return
    fi

    local mod_dir src log
    mod_dir=$(go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [[ -d $mod_dir ]] || { echo "ferretdb.sh: module download failed" >&2; exit 1; }
    src=$GO_DIR/src/FerretDB-$FERRETDB_VERSION
    rm -rf "$src"
    cp -R "$mod_dir" "$src"
    chmod -R u+w "$src"
    echo "$FERRETDB_VERSION" >"$src/build/version/version.txt"
    apply_patches "$src"

    log=$GO_DIR/build.log
    echo "ferretdb.sh: building FerretDB $FERRETDB_VERSION (about 1.5 min the first time)" >&2
    if ! (cd "$src" && go build -trimpath -o "$BIN.tmp" ./cmd/ferretdb) >"$log" 2>&1; then
        # Newer Go linkers refuse old dependencies' //go:linkname pulls.
        if grep -q 'linkname' "$log"; then
            echo "ferretdb.sh: linker refused //go:linkname; retrying with -checklinkname=0" >&2
            (cd "$src" && go build -trimpath -ldflags=-checklinkname=0 -o "$BIN.tmp" ./cmd/ferretdb) \
                >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
        else
            cat "$log" >&2
            exit 1
        fi
    fi
    mv -f "$BIN.tmp" "$BIN"
    echo "$BUILD_STAMP" >"$BIN.stamp"
    binary_works || { echo "ferretdb.sh: the built binary does not start" >&2; "$BIN" --version >&2; exit 1; }
    echo "$BIN"
}

# The command line that runs FerretDB on 127.0.0.1:PORT with its files in DIR.
# synchronous(NORMAL): FerretDB commits each document in its own transaction, and
# an fsync per commit halves its throughput; a test server need not survive a
# power cut.
command_line() {
    local port=$1 dir=$2
    printf '%s\n' "$BIN" \
        --listen-addr="127.0.0.1:$port" \
        --handler=sqlite \
        --sqlite-url="file:$dir/?_pragma=synchronous(NORMAL)" \
        --state-dir="$dir" \
        --telemetry=disable \
        --log-level=warn \
        --debug-addr=-
}

case ${1:-} in
    build)
        build
        ;;
    run)
        [[ $# -eq 3 ]] || usage
        build >/dev/null
        mkdir -p "$3"
        mapfile -t cmd < <(command_line "$2" "$3")
        exec "${cmd[@]}"
        ;;
    command)
        [[ $# -eq 3 ]] || usage
        command_line "$2" "$3" | paste -sd' '
        ;;
    *)
        usage
        ;;
esac
