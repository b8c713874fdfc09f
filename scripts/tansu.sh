#!/usr/bin/env bash
# The Kafka-API broker vigil's Kafka tests and benchmarks run against: tansu, pinned.
#
#   scripts/tansu.sh install          installs tansu 0.6.0 under target/tools (skipped when that
#                                     version is already there) and prints the binary's path
#   scripts/tansu.sh start DIR [memory|sqlite]
#                                     starts a broker on a free loopback port with its data and
#                                     log in DIR; prints BROKERS=127.0.0.1:PORT (also in DIR/brokers)
#   scripts/tansu.sh stop DIR         stops the broker started in DIR
#
# TANSU_BIN=/path/to/tansu uses an existing binary instead of installing (it must be 0.6.0).
# Storage: sqlite (default) keeps data across a broker restart and serves fetches from any
# offset; tansu 0.6.0's memory engine answers a fetch from an offset inside a record batch with
# nothing (and reports wrong high watermarks), so a consumer resuming mid-batch stalls on it.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.6.0
ROOT="${TANSU_ROOT:-$PWD/target/tools}"

installed_ok() { [ -x "$1" ] && "$1" --version 2>/dev/null | grep -qx "tansu $VERSION"; }

tansu_bin() {
    if [ -n "${TANSU_BIN:-}" ]; then
        installed_ok "$TANSU_BIN" || { echo "TANSU_BIN=$TANSU_BIN is not tansu $VERSION" >&2; exit 1; }
        echo "$TANSU_BIN"; return
    fi
    local bin="$ROOT/bin/tansu"
    if ! installed_ok "$bin"; then
        echo "installing tansu $VERSION into $ROOT (about 10 minutes on 2 cores) ..." >&2
        # --locked: the newest dependencies do not build; dynostore: the memory engine;
        # libsql: the sqlite engine.
        cargo install tansu --version "$VERSION" --locked --features dynostore,libsql \
            --root "$ROOT" >&2
    fi
    echo "$bin"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

case "${1:-}" in
install)
    tansu_bin
    ;;
start)
    dir="${2:?usage: scripts/tansu.sh start DIR [memory|sqlite]}"
    storage="${3:-sqlite}"
    bin="$(tansu_bin)"
    mkdir -p "$dir"
    port="$(free_port)"
    case "$storage" in
    memory) engine="memory://tansu/" ;;
    sqlite) engine="sqlite://tansu.db" ;;
    *) echo "storage must be memory or sqlite, not $storage" >&2; exit 2 ;;
    esac
    (cd "$dir" && exec "$bin" broker --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine "$engine" \
        >tansu.log 2>&1) &
    echo $! >"$dir/pid"
    echo "127.0.0.1:$port" >"$dir/brokers"
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "BROKERS=127.0.0.1:$port"
            exit 0
        fi
        sleep 0.1
    done
    echo "tansu did not start listening on $port; log:" >&2
    cat "$dir/tansu.log" >&2
    exit 1
    ;;
stop)
    dir="${2:?usage: scripts/tansu.sh stop DIR}"
    if [ -f "$dir/pid" ]; then
        kill "$(cat "$dir/pid")" 2>/dev/null || true
        rm -f "$dir/pid"
    fi
    ;;
*)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
