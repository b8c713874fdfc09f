#!/usr/bin/env bash
# Rebuilds the committed sample history and the default model from scratch (deterministic: the
# generator and the trainer are seeded). Run from anywhere; writes data/sample.csv,
# models/default.vgm and reports/default/. The model is trained for a transactions topic of 4
# partitions (`vigil serve --set kafka.create_partitions=4`, the demo and the Kafka tests).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
target/release/vigil generate --out data/sample.csv --rows 40000 --seed 7 --cards 800
target/release/vigil train --data data/sample.csv --features training/features.toml \
    --out models/default.vgm --name default --trees 100 --max-depth 12 --seed 42 \
    --partitions 4
