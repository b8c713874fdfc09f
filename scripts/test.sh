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

step "cargo test (release: the statistical and equivalence tests replay real history)"
cargo test --release --locked

step "benchmarks compile and run once each (no timing asserted)"
cargo bench --locked --no-run
