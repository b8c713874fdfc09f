#!/usr/bin/env bash
# The project's test entry point (README: "Test"). Installs what it needs (the Rust toolchain
# components, and the tansu Kafka broker the Kafka tests run against, pinned, under
# target/tools), then checks formatting, lints and runs the whole test suite.
# Works on a machine that has never built vigil. TANSU_BIN=/path/to/tansu-0.6.0 skips the
# broker build (about 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s ==\n' "$*"; }

step "toolchain"
cargo --version
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "tansu (Kafka-API broker for the Kafka tests)"
TANSU_BIN="$(scripts/tansu.sh install)"
export TANSU_BIN
"$TANSU_BIN" --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "benchmarks compile (timings are measured by hand, see BENCHMARKS.md)"
cargo bench --locked --no-run

step "cargo test (release: the equivalence and statistical tests replay real histories)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --locked 2>&1 | tee "$log"

step "Kafka tests against tansu (each starts its own broker; see tests/kafka/)"
cargo test --release --locked --test kafka -- --ignored 2>&1 | tee -a "$log"
# One closing line summing every test binary's "test result" line.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"
