#!/usr/bin/env bash
# Headline training benchmark: vigil's forest vs scikit-learn's RandomForestClassifier on the same
# synthetic imbalanced data (200k train rows x 30 features), same split, same hyperparameters
# (100 trees, depth 12, sqrt features), 2 threads each.
#
# Creates a throwaway venv under target/ (kept between runs), installs scikit-learn from PyPI,
# generates the data once, builds and runs `examples/train_matrix.rs`, then fits sklearn and
# prints both fit times and both test AUCs. Not part of the test suite.
#
# Usage: scripts/bench_sklearn.sh [--skip-sklearn]
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/sklearn-venv
DATA=target/sklearn-data
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet scikit-learn numpy
fi

cargo build --release --example train_matrix
exec "$VENV/bin/python" scripts/sklearn_compare.py --data "$DATA" \
    --vigil target/release/examples/train_matrix "$@"
