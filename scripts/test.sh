#!/usr/bin/env bash
# The project's test entry point (README: "Test"). Installs nothing beyond the Rust toolchain
# components it needs, then checks formatting, lints and runs the whole test suite.
# Works on a machine that has never built vigil.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s ==\n' "$*"; }

step "toolchain"
cargo --version
rustup component add rustfmt clippy >/dev/null 2>&1 || true

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
# One closing line summing every test binary's "test result" line.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"
