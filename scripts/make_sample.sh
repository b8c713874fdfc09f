#!/usr/bin/env bash
# Rebuilds the committed sample history and the default model from scratch (deterministic: the
# generator and the trainer are seeded). Run from anywhere; writes data/sample.csv,
# models/default.vgm and reports/default/.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
target/release/vigil generate --out data/sample.csv --rows 40000 --seed 7 --cards 800
target/release/vigil train --data data/sample.csv --features training/features.toml \
    --out models/default.vgm --name default --trees 100 --max-depth 12 --seed 42
