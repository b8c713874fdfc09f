//! One way to serve, one configuration: `vigil serve` without Kafka is the same server as with
//! it (HTTP endpoints, verdict metrics of the gRPC path, SIGHUP reloads), the `[grpc]` table and
//! `VIGIL_GRPC__*` work and `config show` covers every table with secrets redacted, and no
//! command panics on a closed stdout. Each test pins a defect of the layout before issue 12.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn vigil() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vigil"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c.env_remove("VIGIL_TOKEN").env_remove("VIGIL_ADDR");
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET path` on `addr`: (status line, body).
fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connects to the HTTP endpoints");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// `vigil serve --no-kafka` on free ports, its stderr collected line by line.
struct Serve {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
    grpc: String,
    http: String,
}

impl Serve {
    fn start(extra: &[&str]) -> Serve {
        let http = format!("127.0.0.1:{}", free_port());
        let mut cmd = vigil();
        cmd.args(["serve", "--no-kafka", "--grpc-addr", "127.0.0.1:0"])
            .args(["--metrics-addr", &http])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("serve starts");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = Serve {
            child,
            lines,
            log: Vec::new(),
            grpc: String::new(),
            http,
        };
        let line = s.wait_for("gRPC API listening on ");
        s.grpc = line
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("the address is printed")
            .to_string();
        s.wait_for("serving model");
        s
    }

    /// Waits for a log line containing `needle`; returns it.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.log.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
        }
        panic!(
            "`{needle}` never logged; log so far:\n{}",
            self.log.join("\n")
        );
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill {sig}");
    }

    fn stop(mut self) {
        self.signal("-TERM");
        let status = self.child.wait().expect("exits");
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(500)) {
            self.log.push(l);
        }
        assert!(status.success(), "{status}: {}", self.log.join("\n"));
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TX: &str = r#"{"transaction_id":"one-serve-1","timestamp":"2018-06-20T10:00:00Z","card_id":"c1","merchant_id":"m1","amount":950.5}"#;

fn score(addr: &str, json: &str) -> String {
    let out = vigil()
        .args(["score", "--addr", addr, "--json-output", json])
        .output()
        .expect("score runs");
    assert!(
        out.status.success(),
        "score: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    let verdict: serde_json::Value =
        serde_json::from_str(score(&serve.grpc, TX).trim()).expect("JSON verdict");
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
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.vgm");
    std::fs::copy(&shipped, &path).expect("copy the model");
    let mut serve = Serve::start(&[
        "--model",
        path.to_str().expect("utf-8 path"),
        "--set",
        "model.watch=false",
    ]);
    // A new version of the model (other thresholds) replaces the file.
    let model = vigil::model::load(&path, None).expect("loads");
    let mut next = model.header.clone();
    next.thresholds = vigil::decision::Thresholds::new(0.01, 0.02).expect("thresholds");
    next.version = vigil::model::format::content_version(&next, &model.forest);
    vigil::model::save(&path, &next, &model.forest).expect("save");
    serve.signal("-HUP");
    serve.wait_for("model reloaded");
    let verdict: serde_json::Value =
        serde_json::from_str(score(&serve.grpc, TX).trim()).expect("JSON verdict");
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
    let info = vigil()
        .args(["score", "--addr", &serve.grpc, "--json-output", TX])
        .output()
        .expect("score runs");
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).expect("JSON");
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
        .args(["config", "show", "--config", file.to_str().expect("utf-8")])
        .args(["--set", "kafka.producer.ssl.key.password=hunter2-flag"])
        .env("VIGIL_GRPC__MAX_ALERT_SUBSCRIBERS", "7")
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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

    // The example has every table too, and parses to the defaults (unit-tested); the old
    // single-underscore variables are refused with the spelling that works.
    let out = vigil()
        .args(["config", "show"])
        .env("VIGIL_GRPC_MAX_BATCH", "10")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("VIGIL_GRPC__MAX_BATCH"), "{err}");
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
        drop(reader);
        let out = vigil()
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
fn the_default_model_path_is_named_as_the_default_when_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = vigil()
        .current_dir(dir.path())
        .args(["serve", "--no-kafka", "--grpc-addr", "127.0.0.1:0"])
        .args(["--metrics-addr", ""])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("models/default.vgm") && err.contains("default model path"),
        "{err}"
    );
}
