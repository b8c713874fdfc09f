//! The gRPC commands of the `vigil` binary, as a user drives them: `vigil serve --no-kafka` on
//! port 0, `vigil score` against it (argument, stdin, refusals, tokens), flag errors naming the
//! flag, and a clean stop on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const TOKEN: &str = "cli-test-token-0123456789";

fn vigil() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vigil"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c.env_remove("VIGIL_TOKEN").env_remove("VIGIL_GRPC_ADDR");
    c
}

fn stderr_of(mut cmd: Command) -> String {
    let out = cmd.output().expect("runs");
    assert!(!out.status.success(), "{cmd:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    addr: String,
}

impl Server {
    /// Starts `vigil serve --no-kafka` on port 0 and waits until it serves the model.
    fn start(extra: &[&str]) -> Server {
        let mut cmd = vigil();
        cmd.args([
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
        let mut addr = None;
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(30))
                .expect("serve reports its progress");
            if let Some(rest) = line.strip_prefix("gRPC API listening on ") {
                addr = rest.split_whitespace().next().map(str::to_string);
            }
            if line.contains("serving model") {
                break;
            }
        }
        Server {
            child,
            lines,
            addr: addr.expect("the address was printed"),
        }
    }

    /// SIGTERM, then the process must exit cleanly and say so.
    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(15)) {
            rest.push(line);
        }
        let exit = self.child.wait().expect("exits");
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
    let out = vigil()
        .args(["score", "--addr", &server.addr, TX])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("tx cli-1 card c1"), "{stdout}");
    assert!(stdout.contains("because "), "reasons are printed: {stdout}");
    assert!(stdout.contains("model default@"), "{stdout}");
    assert!(stdout.contains("in order"), "{stdout}");

    // JSON lines on stdin, JSON out; the retry of cli-1 is reported as a duplicate.
    let mut child = vigil()
        .args([
            "score",
            "--addr",
            &server.addr,
            "--json-output",
            "--dry-run",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let input = format!(
        "{TX}\n{}\n",
        TX.replace("cli-1", "cli-2").replace("10:00:00", "10:05:00")
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["verdict"]["transaction_id"], "cli-1");
    assert_eq!(lines[1]["placement"], "dry run (not recorded)");

    // The server's refusal is shown, naming the field, with a failing exit code.
    let bad = TX.replace("950.5", "-2");
    let err = stderr_of({
        let mut c = vigil();
        c.args(["score", "--addr", &server.addr, &bad]);
        c
    });
    assert!(err.contains("InvalidArgument"), "{err}");
    assert!(err.contains("`transaction.amount`"), "{err}");
    server.stop();
}

#[test]
fn tokens_from_an_environment_variable_are_required() {
    let server = Server::start(&["--grpc-tokens-env", "VIGIL_CLI_TEST_TOKENS"]);
    let err = stderr_of({
        let mut c = vigil();
        c.args(["score", "--addr", &server.addr, TX]);
        c
    });
    assert!(err.contains("Unauthenticated"), "{err}");
    let out = vigil()
        .args(["score", "--addr", &server.addr, "--token", TOKEN, TX])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();
}

#[test]
fn bad_flags_are_named() {
    // State partitions are the topic's with Kafka; choosing them needs --no-kafka.
    let err = stderr_of({
        let mut c = vigil();
        c.args(["serve", "--partitions", "4", "--grpc-addr", "127.0.0.1:0"]);
        c
    });
    assert!(err.contains("--no-kafka"), "{err}");

    let err = stderr_of({
        let mut c = vigil();
        c.args(["serve", "--no-kafka", "--grpc-max-message-bytes", "10"]);
        c
    });
    assert!(err.contains("--grpc-max-message-bytes"), "{err}");

    // The same key through its environment variable, named as the variable and the key.
    let err = stderr_of({
        let mut c = vigil();
        c.args(["serve", "--no-kafka"])
            .env("VIGIL_GRPC__MAX_BATCH", "0");
        c
    });
    assert!(
        err.contains("VIGIL_GRPC__MAX_BATCH") && err.contains("grpc.max_batch"),
        "{err}"
    );

    let err = stderr_of({
        let mut c = vigil();
        c.args([
            "serve",
            "--no-kafka",
            "--grpc-token-file",
            "/nonexistent/vigil-tokens",
        ]);
        c
    });
    assert!(err.contains("--grpc-token-file"), "{err}");

    let err = stderr_of({
        let mut c = vigil();
        c.args(["serve", "--no-kafka", "--grpc-addr", "not-an-address"]);
        c
    });
    assert!(err.contains("--grpc-addr"), "{err}");

    let err = stderr_of({
        let mut c = vigil();
        c.args([
            "serve",
            "--no-kafka",
            "--grpc-addr",
            "127.0.0.1:0",
            "--model",
            "/nonexistent/model.vgm",
        ]);
        c
    });
    assert!(err.contains("/nonexistent/model.vgm"), "{err}");
}

/// The first `rows` transactions of the committed sample, as a history file of their own.
fn small_history(dir: &std::path::Path, rows: usize) -> std::path::PathBuf {
    let sample = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample.csv"),
    )
    .expect("the committed sample");
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
    let mut child = vigil()
        .args(["demo", "--grpc-addr", "127.0.0.1:0", "--metrics-addr", ""])
        .args(["--rate", "250", "--show", "1000000", "--data"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("demo starts");
    let stdout = child.stdout.take().expect("piped");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    let example = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the demo printed no `vigil score` example: {printed:?}"));
        printed.push(line.clone());
        if let Some(cmd) = line.trim().strip_prefix("vigil score ") {
            break cmd.to_string();
        }
    };
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
    let (subscribed_tx, subscribed) = mpsc::channel();
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
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("'{vigil_bin}' score {example} --json-output"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("sh runs");
        assert!(
            out.status.success(),
            "the printed example fails: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON verdict");
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

    let status = child.wait().expect("the demo exits");
    let rest: Vec<String> = lines.try_iter().collect();
    let mut stderr = String::new();
    let _ = child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr);
    assert!(status.success(), "demo: {status}: {rest:?}\n{stderr}");
    assert!(
        rest.iter().any(|l| l.contains(&format!("{rows} verdicts"))),
        "{rest:?}"
    );
    // The stream ended with the demo, and every alert on it is one the Kafka path printed
    // (alerts scored before the subscription are not on it).
    let on_grpc = collected.join().expect("collector thread");
    let printed_alerts: std::collections::HashSet<String> = printed
        .iter()
        .chain(&rest)
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
    let err = stderr_of({
        let mut c = vigil();
        c.args(["demo", "--metrics-addr", "", "--grpc-addr", &addr]);
        c
    });
    assert!(
        err.contains(&format!("--grpc-addr {addr}: cannot listen")),
        "{err}"
    );
    assert!(err.contains("--grpc-addr 127.0.0.1:0"), "{err}");
    assert!(err.contains("--grpc-addr ''"), "{err}");
}
