#!/usr/bin/env bash
# gRPC Score benchmark (BENCHMARKS.md, "gRPC API"): starts `vigil serve --no-kafka` on a local
# port, drives it with `vigil load-grpc` on the same machine, and prints the load average around
# each run. Each run gets a freshly started server, so every request is a new transaction to the
# engine (a second run against the same server would replay the same transaction ids, which the
# engine scores as duplicates of what it already holds).
#
#   scripts/bench_grpc.sh                 # throughput (as fast as answered), then latency at 5k/s
#   DURATION=20 RATE=5000 scripts/bench_grpc.sh
#
# Environment: PORT (default 50071), DURATION (measured seconds, default 10), WARMUP (2),
# CONCURRENCY (128), CONNECTIONS (4), RATE (fixed-rate run, default 5000), PARTITIONS (4),
# SERVER_THREADS (2), LOAD_THREADS (2), NICE (scheduling priority of server and generator,
# default 0; e.g. NICE=-10, as root, lets them run ahead of other jobs on a shared machine,
# approximating dedicated cores: say so next to any figure measured that way). With the
# kernel's autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled = 1), a process's nice
# value only ranks it within its own session; across sessions the session's autogroup nice
# counts. So with NICE set, the script re-runs itself in a new session (setsid) and sets that
# session's autogroup nice, which ends with the session.
set -euo pipefail
script=$(readlink -f "$0")
cd "$(dirname "$script")/.."

PORT=${PORT:-50071}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONCURRENCY=${CONCURRENCY:-128}
CONNECTIONS=${CONNECTIONS:-4}
RATE=${RATE:-5000}
PARTITIONS=${PARTITIONS:-4}
SERVER_THREADS=${SERVER_THREADS:-2}
LOAD_THREADS=${LOAD_THREADS:-2}
NICE=${NICE:-0}

if [ "$NICE" != 0 ] && [ -z "${BENCH_GRPC_SESSION:-}" ]; then
    BENCH_GRPC_SESSION=1 exec setsid --wait "$script" "$@"
fi
if [ "$NICE" != 0 ] && [ -w /proc/self/autogroup ]; then
    echo "$NICE" >/proc/self/autogroup
    echo "session autogroup: $(cat /proc/self/autogroup)"
fi

cargo build --release --locked --quiet
bin=target/release/vigil
server_pid=

stop_server() {
    if [ -n "$server_pid" ]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
trap stop_server EXIT

start_server() {
    nice -n "$NICE" "$bin" serve --no-kafka --grpc-addr "127.0.0.1:$PORT" --partitions "$PARTITIONS" \
        --threads "$SERVER_THREADS" 2>"target/bench_grpc_server.log" &
    server_pid=$!
    for _ in $(seq 100); do
        grep -q '^serving model' target/bench_grpc_server.log 2>/dev/null && return 0
        sleep 0.1
    done
    echo "server did not start:" >&2
    cat target/bench_grpc_server.log >&2
    exit 1
}

# CPU time (user + system, clock ticks) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Runs the load generator against a fresh server. Besides the generator's own figures it prints
# the CPU time server and generator spent per call: on a machine shared with other jobs,
# throughput and tail latency move with their load, CPU per call much less, and
# 2 cores / (CPU per call, both sides) is what two dedicated cores would sustain.
run() {
    local name=$1
    shift
    echo
    echo "== $name (nice $NICE; load average before: $(cut -d' ' -f1-3 /proc/loadavg))"
    start_server
    local s0 s1 tick calls
    tick=$(getconf CLK_TCK)
    s0=$(cpu_ticks "$server_pid")
    /usr/bin/time -f "%U %S" -o target/bench_grpc_load.time \
        nice -n "$NICE" "$bin" load-grpc --addr "127.0.0.1:$PORT" --duration "$DURATION" --warmup "$WARMUP" \
        --connections "$CONNECTIONS" --threads "$LOAD_THREADS" "$@" | tee target/bench_grpc_load.out
    s1=$(cpu_ticks "$server_pid")
    stop_server
    calls=$(awk '/including warm-up/ {print $NF}' target/bench_grpc_load.out)
    awk -v s="$((s1 - s0))" -v tick="$tick" -v calls="$calls" '
        { server = s / tick * 1e6 / calls; load = ($1 + $2) * 1e6 / calls
          printf "CPU per call: server %.1f us, load generator %.1f us, both %.1f us (2 cores / both = %.0f calls/s)\n",
                 server, load, server + load, 2e6 / (server + load) }' target/bench_grpc_load.time
    echo "(load average after: $(cut -d' ' -f1-3 /proc/loadavg))"
}

run "throughput: as fast as answered, $CONCURRENCY in flight" --concurrency "$CONCURRENCY"
run "latency at a fixed $RATE requests/s" --rate "$RATE" --concurrency "$CONCURRENCY"
