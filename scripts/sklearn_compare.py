"""Headline training benchmark: scikit-learn's RandomForestClassifier vs vigil's trainer.

Generates (once, fixed seed) an imbalanced synthetic problem with make_classification: 250k rows
x 30 features, ~3% positives, split 200k train / 50k test, saved as .npy. Then runs the vigil
example binary and fits sklearn with the same hyperparameters (100 trees, max_depth 12,
max_features='sqrt', bootstrap, 2 threads), and prints both fit times and test AUCs (both AUCs
computed here with sklearn.metrics.roc_auc_score).

Run through scripts/bench_sklearn.sh, which sets up the venv and builds the binary.
"""

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split


def make_data(out: Path) -> None:
    if (out / "y_test.npy").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    x, y = make_classification(
        n_samples=250_000,
        n_features=30,
        n_informative=12,
        n_redundant=6,
        n_clusters_per_class=3,
        weights=[0.97],
        flip_y=0.005,
        class_sep=0.8,
        random_state=20261125,
    )
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype(np.float32), y.astype(np.uint8), test_size=50_000, random_state=7, stratify=y
    )
    for name, arr in [("X_train", x_train), ("X_test", x_test), ("y_train", y_train), ("y_test", y_test)]:
        np.save(out / f"{name}.npy", np.ascontiguousarray(arr))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--vigil", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--skip-sklearn", action="store_true")
    args = ap.parse_args()

    make_data(args.data)
    y_test = np.load(args.data / "y_test.npy")
    y_train = np.load(args.data / "y_train.npy")
    print(f"train rows {len(y_train)}, positives {y_train.mean():.4f}; test rows {len(y_test)}")

    out = subprocess.run(
        [str(args.vigil), "--data", str(args.data), "--threads", str(args.threads),
         "--trees", str(args.trees), "--depth", str(args.depth)],
        check=True, capture_output=True, text=True,
    ).stdout
    ours = json.loads(out.strip().splitlines()[-1])
    scores = np.fromfile(args.data / "vigil_scores.f32", dtype="<f4")
    ours_auc = roc_auc_score(y_test, scores)
    print(f"vigil:   fit {ours['fit_seconds']:.2f} s wall, {ours['fit_cpu_seconds']} s CPU  "
          f"test AUC {ours_auc:.5f}  ({ours['nodes']} nodes)")

    if args.skip_sklearn:
        return
    x_train = np.load(args.data / "X_train.npy")
    x_test = np.load(args.data / "X_test.npy")
    rf = RandomForestClassifier(
        n_estimators=args.trees, max_depth=args.depth, max_features="sqrt",
        n_jobs=args.threads, random_state=0,
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    rf.fit(x_train, y_train)
    sk_seconds = time.perf_counter() - start
    sk_cpu = time.process_time() - cpu_start
    sk_auc = roc_auc_score(y_test, rf.predict_proba(x_test)[:, 1])
    print(f"sklearn: fit {sk_seconds:.2f} s wall, {sk_cpu:.2f} s CPU  test AUC {sk_auc:.5f}")
    cpu_ratio = sk_cpu / ours["fit_cpu_seconds"] if ours["fit_cpu_seconds"] else float("nan")
    print(f"speed-up {sk_seconds / ours['fit_seconds']:.1f}x wall, {cpu_ratio:.1f}x CPU; "
          f"AUC difference (vigil - sklearn) {ours_auc - sk_auc:+.5f}")


if __name__ == "__main__":
    main()
