#!/usr/bin/env bash
# The Kafka path's benchmark (BENCHMARKS.md, "Kafka path"): starts a tansu broker (memory storage,
# as in shared/FACTS.md; every consumer here reads from offset 0, which that engine serves) and
# runs examples/kafka_bench.rs against it. Arguments go to the example
# (--records N --partitions P --rounds R --latency-seconds S).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$(mktemp -d)"
trap 'scripts/tansu.sh stop "$dir"; rm -rf "$dir"' EXIT
cargo build --release --locked --example kafka_bench
brokers="$(scripts/tansu.sh start "$dir" "${TANSU_STORAGE:-memory}" | sed -n 's/^BROKERS=//p')"
echo "tansu at $brokers (${TANSU_STORAGE:-memory} storage); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
target/release/examples/kafka_bench --brokers "$brokers" --broker-pid "$(cat "$dir/pid")" "$@"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
