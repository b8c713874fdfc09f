//! End-to-end tests of the `vigil` binary, the way a user drives it: generate a history, train,
//! inspect, evaluate, export features, and refuse broken inputs with a clear message.
//! On failure the harness prints the command line, its directory, stdout and stderr.

use std::path::{Path, PathBuf};

use crate::support::{s, vigil};

struct Trained {
    _dir: tempfile::TempDir,
    data: PathBuf,
    model: PathBuf,
    root: PathBuf,
}

/// `vigil evaluate --model M --data D --json --report ROOT/report` plus `extra`: its JSON.
fn evaluate_json(t: &Trained, report: &str, extra: &[&str]) -> serde_json::Value {
    serde_json::from_str(
        vigil()
            .args([
                "evaluate",
                "--model",
                s(&t.model),
                "--data",
                s(&t.data),
                "--json",
            ])
            .args(extra)
            .args(["--report", s(&t.root.join(report))])
            .assert_success()
            .stdout
            .trim(),
    )
    .expect("--json prints one JSON object")
}

fn generate_and_train() -> Trained {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let data = root.join("history.csv");
    let model = root.join("m.vgm");
    vigil()
        .args([
            "generate",
            "--rows",
            "30000",
            "--seed",
            "11",
            "--out",
            s(&data),
        ])
        .assert_success();
    let out = vigil()
        .args([
            "train",
            "--data",
            s(&data),
            "--out",
            s(&model),
            "--trees",
            "30",
            "--max-depth",
            "8",
            "--warmup",
            "3d",
            "--partitions",
            "3",
            "--report",
            s(&root.join("report")),
        ])
        .assert_success()
        .stdout;
    assert!(
        out.contains("AUC ROC"),
        "train prints the evaluation:\n{out}"
    );
    Trained {
        _dir: dir,
        data,
        model,
        root,
    }
}

#[test]
fn train_inspect_evaluate_round_trip() {
    let t = generate_and_train();
    assert!(t.root.join("report").join("roc.png").exists());

    let out = vigil()
        .args(["model", "inspect", s(&t.model)])
        .assert_success()
        .stdout;
    assert!(out.contains("30 trees"), "{out}");
    assert!(out.contains("thresholds"), "{out}");
    assert!(out.contains("state        3 partitions"), "{out}");

    // `evaluate` replays with the model's partitions: over the test period it reproduces the
    // evaluation the trainer stored.
    let header: serde_json::Value = serde_json::from_str(
        vigil()
            .args(["model", "inspect", "--json", s(&t.model)])
            .assert_success()
            .stdout
            .trim(),
    )
    .expect("inspect --json prints JSON");
    assert_eq!(header["state_partitions"], 3);
    let training = &header["training"];
    let v = evaluate_json(
        &t,
        "test-report",
        &[
            "--from",
            training["test_from"].as_str().expect("test_from"),
            "--to",
            training["test_to"].as_str().expect("test_to"),
        ],
    );
    let stored = header["evaluation"]["auc_roc"]
        .as_f64()
        .expect("stored auc");
    let again = v["auc_roc"].as_f64().expect("auc");
    assert!(
        (stored - again).abs() < 1e-9,
        "stored {stored}, evaluate {again}"
    );

    let preds = t.root.join("preds.csv");
    let v = evaluate_json(&t, "eval-report", &["--predictions", s(&preds)]);
    for key in [
        "auc_roc",
        "average_precision",
        "card_precision_at_k",
        "rows",
        "frauds",
    ] {
        assert!(v.get(key).is_some(), "missing key {key} in {v}");
    }
    let auc = v["auc_roc"].as_f64().expect("auc is a number");
    assert!(
        auc > 0.8,
        "a model trained on this history separates fraud: auc {auc}"
    );
    let rows = v["rows"].as_u64().expect("rows");
    let text = std::fs::read_to_string(&preds).expect("predictions written");
    assert_eq!(
        text.lines().next(),
        Some("transaction_id,card_id,timestamp,score,label")
    );
    assert_eq!(text.lines().count() as u64, rows + 1);
}

#[test]
fn broken_model_files_are_refused_with_a_reason() {
    let t = generate_and_train();
    let bytes = std::fs::read(&t.model).expect("model written");

    let truncated = t.root.join("truncated.vgm");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let err = inspect_fails(&truncated);
    assert!(err.contains("truncated"), "{err}");

    let corrupt = t.root.join("corrupt.vgm");
    let mut b = bytes.clone();
    let at = b.len() - 100;
    b[at] ^= 0x5a;
    std::fs::write(&corrupt, &b).expect("write");
    let err = inspect_fails(&corrupt);
    assert!(err.contains("corrupted"), "{err}");

    let not_model = t.root.join("not.vgm");
    std::fs::write(&not_model, b"hello").expect("write");
    let err = inspect_fails(&not_model);
    assert!(err.contains("not a vigil model"), "{err}");

    let mut b = bytes;
    b[8] = 99; // format version
    let wrong = t.root.join("wrong.vgm");
    std::fs::write(&wrong, &b).expect("write");
    let err = inspect_fails(&wrong);
    assert!(err.contains("version 99"), "{err}");
}

/// `vigil model inspect FILE`, which must fail: its stderr.
fn inspect_fails(file: &Path) -> String {
    vigil()
        .args(["model", "inspect", s(file)])
        .assert_failure()
        .stderr
}

#[test]
fn bad_history_rows_name_file_line_column_and_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("bad.csv");
    std::fs::write(
        &data,
        "transaction_id,timestamp,card_id,merchant_id,amount,label\n\
         t1,2018-04-01T00:00:31Z,c1,m1,10.00,0\n\
         t2,2018-04-01T00:01:00Z,c1,m1,-5,0\n\
         t3,yesterday,c2,m1,7.5,1\n",
    )
    .expect("write");
    let out = dir.path().join("f.csv");
    let err = vigil()
        .args(["features", "--data", s(&data), "--out", s(&out)])
        .assert_failure()
        .stderr;
    assert!(err.contains("bad.csv:3"), "{err}");
    assert!(err.contains("amount") && err.contains("-5"), "{err}");

    let stdout = vigil()
        .args([
            "features",
            "--data",
            s(&data),
            "--out",
            s(&out),
            "--skip-invalid",
        ])
        .assert_success()
        .stdout;
    assert!(stdout.contains("wrote 1 rows"), "{stdout}");
    let csv = std::fs::read_to_string(&out).expect("features written");
    assert!(csv.starts_with("transaction_id,"));
    assert_eq!(csv.lines().count(), 2);
}

#[test]
fn shipped_default_model_serves_the_sample() {
    let out = vigil()
        .args([
            "demo",
            "--show",
            "3",
            "--metrics-addr",
            "",
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .assert_success()
        .stdout;
    assert!(
        out.contains("40000 transactions") && out.contains("through Kafka"),
        "{out}"
    );
    assert!(out.contains("40000 verdicts"), "{out}");
    // The gRPC API ran next to it, announced with a command to try.
    assert!(out.contains("gRPC API on 127.0.0.1:"), "{out}");
    assert!(out.contains("vigil score --addr 127.0.0.1:"), "{out}");
}

/// The harness's own promise: a failed expectation shows the command line (with the variables
/// it set, quoted for a shell) and what the command printed, so it can be rerun by hand.
#[test]
#[should_panic(expected = "--- command\nVIGIL_X='a b' ")]
fn a_failed_expectation_prints_the_command_and_its_output() {
    vigil()
        .args(["model", "inspect", "/no such/model.vgm"])
        .env("VIGIL_X", "a b")
        .assert_success();
}
