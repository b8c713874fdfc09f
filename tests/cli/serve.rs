//! One way to serve, one configuration: `vigil serve` without Kafka is the same server as with
//! it (HTTP endpoints, verdict metrics of the gRPC path, SIGHUP reloads), the `[grpc]` table and
//! `VIGIL_GRPC__*` work and `config show` covers every table with secrets redacted, and no
//! command panics on a closed stdout. Each test pins a defect of the layout before issue 12.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use crate::support::{default_model_path, free_addr, s, vigil, Process};

/// `GET path` on `addr`: (status line, body).
fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connects to the HTTP endpoints");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// `vigil serve --no-kafka` on free ports.
struct Serve {
    process: Process,
    grpc: String,
    http: String,
}

impl Serve {
    fn start(extra: &[&str]) -> Serve {
        let http = free_addr();
        let mut process = vigil()
            .args(["serve", "--no-kafka", "--grpc-addr", "127.0.0.1:0"])
            .args(["--metrics-addr", &http])
            .args(extra)
            .env("RUST_LOG", "info")
            .spawn();
        let grpc = process.wait_for_stderr("the gRPC address", Duration::from_secs(30), |l| {
            let rest = l.split("gRPC API listening on ").nth(1)?;
            rest.split_whitespace().next().map(str::to_string)
        });
        process.wait_for_stderr("`serving model`", Duration::from_secs(30), |l| {
            l.contains("serving model").then_some(())
        });
        Serve {
            process,
            grpc,
            http,
        }
    }

    /// SIGTERM; the process must exit cleanly.
    fn stop(mut self) {
        let status = self.process.terminate();
        assert!(status.success(), "{status}: {}", self.process.stderr_text());
    }
}

const TX: &str = r#"{"transaction_id":"one-serve-1","timestamp":"2018-06-20T10:00:00Z","card_id":"c1","merchant_id":"m1","amount":950.5}"#;

/// `vigil score --json-output` against `addr`: the parsed response.
fn score(addr: &str, json: &str) -> serde_json::Value {
    let out = vigil()
        .args(["score", "--addr", addr, "--json-output", json])
        .assert_success();
    serde_json::from_str(out.stdout.trim()).expect("JSON verdict")
}

/// The value of the Prometheus sample `name{labels}` in `text`, if present.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[test]
fn serve_without_kafka_has_the_http_endpoints_and_counts_grpc_verdicts() {
    let serve = Serve::start(&[]);
    assert!(http_get(&serve.http, "/healthz").0.contains("200"));
    assert!(http_get(&serve.http, "/readyz").0.contains("200"));
    let verdict = score(&serve.grpc, TX);
    let decision = verdict["verdict"]["decision"]
        .as_str()
        .expect("a decision")
        .to_string();
    let (status, metrics) = http_get(&serve.http, "/metrics");
    assert!(status.contains("200"), "{status}");
    let counted = format!("vigil_verdicts_total{{decision=\"{decision}\",path=\"grpc\"}}");
    assert_eq!(sample(&metrics, &counted), Some(1.0), "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "vigil_scoring_latency_seconds_count{path=\"grpc\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    // Nothing was read from Kafka.
    assert!(
        sample(&metrics, "vigil_transactions_in_total").unwrap_or(0.0) == 0.0,
        "{metrics}"
    );
    serve.stop();
}

#[test]
fn sighup_reloads_the_model_without_kafka() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.vgm");
    std::fs::copy(default_model_path(), &path).expect("copy the model");
    let mut serve = Serve::start(&["--model", s(&path), "--set", "model.watch=false"]);
    // A new version of the model (other thresholds) replaces the file.
    let model = vigil::model::load(&path, None).expect("loads");
    let mut next = model.header.clone();
    next.thresholds = vigil::decision::Thresholds::new(0.01, 0.02).expect("thresholds");
    next.version = vigil::model::format::content_version(&next, &model.forest);
    vigil::model::save(&path, &next, &model.forest).expect("save");
    serve.process.signal("HUP");
    serve
        .process
        .wait_for_stderr("`model reloaded`", Duration::from_secs(30), |l| {
            l.contains("model reloaded").then_some(())
        });
    let verdict = score(&serve.grpc, TX);
    assert_eq!(
        verdict["verdict"]["model_version"].as_str(),
        Some(next.version.as_str()),
        "{verdict}"
    );
    serve.stop();
}

#[test]
fn the_alert_buffer_and_partitions_flags_size_the_core_without_kafka() {
    let serve = Serve::start(&["--alert-buffer", "8", "--partitions", "3"]);
    let v = score(&serve.grpc, TX);
    assert!(v["partition"].as_u64().expect("partition") < 3, "{v}");
    serve.stop();
}

#[test]
fn config_show_covers_every_table_and_redacts_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("vigil.toml");
    std::fs::write(
        &file,
        "[grpc]\nmax_batch = 10\n[kafka.consumer]\n\"sasl.password\" = \"hunter2-file\"\n",
    )
    .expect("write config");
    let out = vigil()
        .args(["config", "show", "--config", s(&file)])
        .args(["--set", "kafka.producer.ssl.key.password=hunter2-flag"])
        .env("VIGIL_GRPC__MAX_ALERT_SUBSCRIBERS", "7")
        .assert_success();
    let text = &out.stdout;
    for table in [
        "[kafka]",
        "[pipeline]",
        "[grpc]",
        "[scoring]",
        "[model]",
        "[http]",
    ] {
        assert!(text.contains(table), "{table} missing:\n{text}");
    }
    assert!(text.contains("max_batch = 10"), "{text}");
    assert!(text.contains("max_alert_subscribers = 7"), "{text}");
    assert!(!text.contains("hunter2"), "a secret was printed:\n{text}");
    assert!(text.contains("<redacted>"), "{text}");

    // The old single-underscore variables are refused with the spelling that works.
    let out = vigil()
        .args(["config", "show"])
        .env("VIGIL_GRPC_MAX_BATCH", "10")
        .assert_failure();
    assert!(
        out.stderr.contains("VIGIL_GRPC__MAX_BATCH"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    for args in [
        &["model", "inspect", "models/default.vgm"][..],
        &["config", "example"][..],
        &["model", "inspect", "--json", "models/default.vgm"][..],
    ] {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        // The reader is gone before the command writes anything: every write fails with EPIPE.
        // (The harness pipes stdout to read it, so this one command is built by hand.)
        drop(reader);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "vigil {args:?} panicked: {err}");
        assert!(out.status.success(), "vigil {args:?}: {} {err}", out.status);
    }
}

#[test]
fn default_paths_are_named_as_defaults_when_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = vigil()
        .current_dir(dir.path())
        .args(["serve", "--no-kafka", "--grpc-addr", "127.0.0.1:0"])
        .args(["--metrics-addr", ""])
        .assert_failure();
    assert!(
        out.stderr.contains("models/default.vgm") && out.stderr.contains("default model path"),
        "{}",
        out.stderr
    );

    // The trainer's defaults too: the feature spec, then the history.
    let out = vigil()
        .current_dir(dir.path())
        .args(["train"])
        .assert_failure();
    assert!(
        out.stderr
            .contains("training/features.toml is the default feature spec path")
            && out.stderr.contains("--features"),
        "{}",
        out.stderr
    );
    std::fs::create_dir(dir.path().join("training")).expect("mkdir");
    std::fs::copy(
        crate::support::default_spec_path(),
        dir.path().join("training/features.toml"),
    )
    .expect("copy the spec");
    let out = vigil()
        .current_dir(dir.path())
        .args(["train"])
        .assert_failure();
    assert!(
        out.stderr
            .contains("data/sample.csv is the default history path")
            && out.stderr.contains("--data"),
        "{}",
        out.stderr
    );
}
