//! The gRPC commands of the `vigil` binary, as a user drives them: `vigil serve --no-kafka` on
//! port 0, `vigil score` against it (argument, stdin, refusals, tokens), flag errors naming the
//! flag, a clean stop on SIGTERM, and the demo's gRPC API.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::{sample_path, vigil, Cmd, Process};

const TOKEN: &str = "cli-test-token-0123456789";

/// `vigil serve --no-kafka` on port 0, stopped with SIGTERM by [`Server::stop`].
struct Server {
    process: Process,
    addr: String,
}

impl Server {
    /// Starts `vigil serve --no-kafka` on port 0 and waits until it serves the model.
    fn start(extra: &[&str]) -> Server {
        let mut process = vigil()
            .args([
                "serve",
                "--no-kafka",
                "--grpc-addr",
                "127.0.0.1:0",
                "--partitions",
                "2",
                // Tests run servers side by side: no fixed HTTP port.
                "--metrics-addr",
                "",
            ])
            .args(extra)
            .env("VIGIL_CLI_TEST_TOKENS", TOKEN)
            .spawn();
        process.wait_for_stderr("`serving model`", Duration::from_secs(30), |l| {
            l.contains("serving model").then_some(())
        });
        let addr = process
            .stderr_lines()
            .iter()
            .find_map(|l| l.strip_prefix("gRPC API listening on "))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .expect("the address was printed");
        Server { process, addr }
    }

    /// SIGTERM, then the process must exit cleanly and say so.
    fn stop(mut self) {
        let exit = self.process.terminate();
        let rest = self.process.stderr_lines();
        assert!(exit.success(), "serve exited with {exit}: {rest:?}");
        assert!(
            rest.iter().any(|l| l.contains("gRPC API stopped")),
            "{rest:?}"
        );
    }
}

const TX: &str = r#"{"transaction_id":"cli-1","timestamp":"2018-06-20T10:00:00Z","card_id":"c1","merchant_id":"m1","amount":950.5,"channel":"online"}"#;

#[test]
fn score_calls_a_running_server() {
    let server = Server::start(&[]);
    let stdout = vigil()
        .args(["score", "--addr", &server.addr, TX])
        .assert_success()
        .stdout;
    assert!(stdout.contains("tx cli-1 card c1"), "{stdout}");
    assert!(stdout.contains("because "), "reasons are printed: {stdout}");
    assert!(stdout.contains("model default@"), "{stdout}");
    assert!(stdout.contains("in order"), "{stdout}");

    // JSON lines on stdin, JSON out; the retry of cli-1 is reported as a duplicate.
    let input = format!(
        "{TX}\n{}\n",
        TX.replace("cli-1", "cli-2").replace("10:00:00", "10:05:00")
    );
    let out = vigil()
        .args([
            "score",
            "--addr",
            &server.addr,
            "--json-output",
            "--dry-run",
        ])
        .stdin(input)
        .assert_success();
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["verdict"]["transaction_id"], "cli-1");
    assert_eq!(lines[1]["placement"], "dry run (not recorded)");

    // The server's refusal is shown, naming the field, with a failing exit code.
    let bad = TX.replace("950.5", "-2");
    let err = vigil()
        .args(["score", "--addr", &server.addr, &bad])
        .assert_failure()
        .stderr;
    assert!(err.contains("InvalidArgument"), "{err}");
    assert!(err.contains("`transaction.amount`"), "{err}");
    server.stop();
}

#[test]
fn tokens_from_an_environment_variable_are_required() {
    let server = Server::start(&["--grpc-tokens-env", "VIGIL_CLI_TEST_TOKENS"]);
    let err = vigil()
        .args(["score", "--addr", &server.addr, TX])
        .assert_failure()
        .stderr;
    assert!(err.contains("Unauthenticated"), "{err}");
    vigil()
        .args(["score", "--addr", &server.addr, "--token", TOKEN, TX])
        .assert_success();
    server.stop();
}

/// `vigil ARGS`, which must fail: its stderr.
fn fails(cmd: &mut Cmd) -> String {
    cmd.assert_failure().stderr
}

#[test]
fn bad_flags_are_named() {
    // State partitions are the topic's with Kafka; choosing them needs --no-kafka.
    let err = fails(vigil().args(["serve", "--partitions", "4", "--grpc-addr", "127.0.0.1:0"]));
    assert!(err.contains("--no-kafka"), "{err}");

    let err = fails(vigil().args(["serve", "--no-kafka", "--grpc-max-message-bytes", "10"]));
    assert!(err.contains("--grpc-max-message-bytes"), "{err}");

    // The same key through its environment variable, named as the variable and the key.
    let err = fails(
        vigil()
            .args(["serve", "--no-kafka"])
            .env("VIGIL_GRPC__MAX_BATCH", "0"),
    );
    assert!(
        err.contains("VIGIL_GRPC__MAX_BATCH") && err.contains("grpc.max_batch"),
        "{err}"
    );

    let err = fails(vigil().args([
        "serve",
        "--no-kafka",
        "--grpc-token-file",
        "/nonexistent/vigil-tokens",
    ]));
    assert!(err.contains("--grpc-token-file"), "{err}");

    let err = fails(vigil().args(["serve", "--no-kafka", "--grpc-addr", "not-an-address"]));
    assert!(err.contains("--grpc-addr"), "{err}");

    let err = fails(vigil().args([
        "serve",
        "--no-kafka",
        "--grpc-addr",
        "127.0.0.1:0",
        "--model",
        "/nonexistent/model.vgm",
    ]));
    assert!(err.contains("/nonexistent/model.vgm"), "{err}");
}

/// The first `rows` transactions of the committed sample, as a history file of their own.
fn small_history(dir: &std::path::Path, rows: usize) -> std::path::PathBuf {
    let sample = std::fs::read_to_string(sample_path()).expect("the committed sample");
    let path = dir.join("history.csv");
    let head: Vec<&str> = sample.lines().take(rows + 1).collect();
    std::fs::write(&path, head.join("\n") + "\n").expect("write the history");
    path
}

#[test]
fn demo_serves_grpc_on_the_kafka_paths_state_and_alerts() {
    use tokio_stream::StreamExt;
    use vigil::api::client::ClientOptions;
    use vigil::proto as pb;

    let dir = tempfile::tempdir().expect("tempdir");
    let rows = 2000;
    let data = small_history(dir.path(), rows);
    // Slow enough (about 8 s) for calls while the replay is still going.
    let mut demo = vigil()
        .args(["demo", "--grpc-addr", "127.0.0.1:0", "--metrics-addr", ""])
        .args(["--rate", "250", "--show", "1000000", "--data"])
        .arg(&data)
        .spawn();
    let example = demo.wait_for_stdout("a `vigil score` example", Duration::from_secs(120), |l| {
        l.trim().strip_prefix("vigil score ").map(str::to_string)
    });
    let stdout = demo.stdout_lines();
    let at = stdout
        .iter()
        .position(|l| l.trim().strip_prefix("vigil score ") == Some(example.as_str()))
        .expect("the example line");
    let printed = &stdout[..=at];
    assert!(
        printed
            .iter()
            .any(|l| l.starts_with("gRPC API on 127.0.0.1:")),
        "{printed:?}"
    );
    let addr = example
        .split_whitespace()
        .skip_while(|w| *w != "--addr")
        .nth(1)
        .expect("the example names the address")
        .to_string();

    // Subscribe to the alert stream while the demo runs (a thread of its own drives it).
    #[allow(clippy::disallowed_methods)] // a finite number of items, read by this test
    let (subscribed_tx, subscribed) = std::sync::mpsc::channel();
    let collected = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut client = ClientOptions {
                addr,
                ..Default::default()
            }
            .connect()
            .await
            .expect("connects to the demo's gRPC API");
            let mut stream = client
                .stream_alerts(pb::AlertFilter::default())
                .await
                .expect("subscribes")
                .into_inner();
            let _ = subscribed_tx.send(());
            let mut ids = Vec::new();
            while let Some(alert) = stream.next().await {
                let alert = alert.expect("the alert stream ends without an error");
                if let Some(pb::alert::Event::Verdict(v)) = alert.event {
                    ids.push(v.transaction_id);
                }
            }
            ids
        })
    });
    subscribed
        .recv_timeout(Duration::from_secs(30))
        .expect("subscribed to StreamAlerts");

    // The printed command, pasted into a shell, works and sees the card's history as the
    // Kafka path builds it.
    let vigil_bin = env!("CARGO_BIN_EXE_vigil");
    let mut saw_history = false;
    for _ in 0..40 {
        let out = Cmd::new("sh")
            .arg("-c")
            .arg(format!("'{vigil_bin}' score {example} --json-output"))
            .assert_success();
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("one JSON verdict");
        assert_eq!(v["placement"], "dry run (not recorded)", "{v}");
        let count = v["features"]["card_count_30d"]
            .as_f64()
            .unwrap_or_else(|| panic!("no card_count_30d feature: {v}"));
        if count > 0.0 {
            saw_history = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(
        saw_history,
        "the gRPC API never saw the card's transactions from Kafka"
    );

    let status = demo.wait(Duration::from_secs(120));
    let stdout = demo.stdout_lines();
    let rest = &stdout[at + 1..];
    assert!(
        status.success(),
        "demo: {status}: {rest:?}\n{}",
        demo.stderr_text()
    );
    assert!(
        rest.iter().any(|l| l.contains(&format!("{rows} verdicts"))),
        "{rest:?}"
    );
    // The stream ended with the demo, and every alert on it is one the Kafka path printed
    // (alerts scored before the subscription are not on it).
    let on_grpc = collected.join().expect("collector thread");
    let printed_alerts: HashSet<String> = stdout
        .iter()
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip_while(|w| *w != "tx");
            w.next()?;
            w.next().map(str::to_string)
        })
        .collect();
    assert!(!on_grpc.is_empty(), "no alert reached the gRPC stream");
    for id in &on_grpc {
        assert!(printed_alerts.contains(id), "{id} was not a Kafka alert");
    }
}

#[test]
fn demo_on_a_busy_grpc_port_says_what_to_do() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let err = fails(vigil().args(["demo", "--metrics-addr", "", "--grpc-addr", &addr]));
    assert!(
        err.contains(&format!("--grpc-addr {addr}: cannot listen")),
        "{err}"
    );
    assert!(err.contains("--grpc-addr 127.0.0.1:0"), "{err}");
    assert!(err.contains("--grpc-addr ''"), "{err}");
}
