//! Test harness for the Kafka tests, on top of the shared one (`tests/support`): a real tansu
//! broker per test (sqlite storage in a temporary directory, a free loopback port), `vigil serve`
//! as a child process, random topic and group names, and readers that collect what a topic holds.
//!
//! The broker binary comes from `TANSU_BIN` (scripts/test.sh installs tansu 0.6.0 and sets it),
//! else `target/tools/bin/tansu`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::DefaultProducerContext;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use vigil::decision::Decision;
use vigil::record::Transaction;
use vigil::scoring::ScoringCore;
use vigil::stream::wire::{encode_transaction, VerdictRecord};

use crate::support::{default_model_path, free_port, model, repo, vigil, Process};

fn tansu_bin() -> PathBuf {
    let bin = std::env::var_os("TANSU_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/tools/bin/tansu"));
    assert!(
        bin.exists(),
        "no tansu broker at {} (run scripts/test.sh, which installs it, or set TANSU_BIN)",
        bin.display()
    );
    // The broker runs in its own directory: a relative path would not resolve there.
    bin.canonicalize().unwrap_or(bin)
}

/// A tansu broker, killed when dropped: sqlite storage (survives a restart) unless started
/// with [`Broker::start_in_memory`].
pub struct Broker {
    dir: tempfile::TempDir,
    port: u16,
    storage: &'static str,
    child: Option<Child>,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with("sqlite://tansu.db")
    }

    /// sqlite storage whose maintenance (deleting records older than a topic's `retention.ms`
    /// when its `cleanup.policy` is `delete`) runs every second instead of every 10 minutes.
    pub fn start_with_fast_retention() -> Broker {
        Broker::start_with("sqlite://tansu.db?maintenance_interval=1s")
    }

    /// Memory storage, as `scripts/tansu.sh start DIR memory` and the benchmarks run it (its
    /// fetch behaviour differs from sqlite's at the newest batch of a partition).
    pub fn start_in_memory() -> Broker {
        Broker::start_with("memory://tansu/")
    }

    fn start_with(storage: &'static str) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = Broker {
            dir,
            port: free_port(),
            storage,
            child: None,
        };
        b.launch();
        b
    }

    fn launch(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .expect("broker log");
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", self.storage])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Random topic and group names for one test.
#[derive(Clone, Debug)]
pub struct Names {
    pub transactions: String,
    pub alerts: String,
    pub verdicts: String,
    pub dlq: String,
    pub group: String,
}

impl Names {
    pub fn new(test: &str) -> Names {
        let tag = format!("{test}-{:08x}", rand::random::<u32>());
        Names {
            transactions: format!("tx-{tag}"),
            alerts: format!("alerts-{tag}"),
            verdicts: format!("verdicts-{tag}"),
            dlq: format!("dlq-{tag}"),
            group: format!("group-{tag}"),
        }
    }

    pub fn create(&self, brokers: &str, partitions: u32) {
        vigil::stream::kafka::ensure_topics(
            brokers,
            &[&self.transactions, &self.alerts, &self.verdicts, &self.dlq],
            partitions,
        )
        .expect("create topics");
    }
}

pub struct ServeSpec<'a> {
    pub brokers: &'a str,
    pub names: &'a Names,
    pub model: PathBuf,
    pub metrics_addr: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl<'a> ServeSpec<'a> {
    pub fn new(brokers: &'a str, names: &'a Names) -> ServeSpec<'a> {
        ServeSpec {
            brokers,
            names,
            model: default_model_path(),
            metrics_addr: String::new(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Starts `vigil serve` (a [`Process`]: killed when dropped, its log printed if the test
    /// fails; `vigil` logs to stderr).
    pub fn start(&self) -> Process {
        let n = self.names;
        vigil()
            .arg("serve")
            .args(["--brokers", self.brokers, "--group", &n.group])
            .args([
                "--transactions-topic",
                &n.transactions,
                "--alerts-topic",
                &n.alerts,
            ])
            .args(["--verdicts-topic", &n.verdicts, "--dlq-topic", &n.dlq])
            .args(["--metrics-addr", &self.metrics_addr])
            .arg("--model")
            .arg(&self.model)
            .args(["--set", "pipeline.commit_interval=200ms"])
            // A killed member is noticed after this long (the default is 45 s).
            .args(["--set", "kafka.consumer.session.timeout.ms=6000"])
            .args(["--set", "kafka.consumer.heartbeat.interval.ms=1000"])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info,rdkafka=warn")
            .env("NO_COLOR", "1")
            .spawn()
    }
}

/// A copy of the shipped model to serve from (in `dir`), and the header of another version of
/// it: same features and trees, thresholds `review`/`decline`, content version recomputed.
pub fn serving_copy(
    dir: &std::path::Path,
    review: f32,
    decline: f32,
) -> (PathBuf, vigil::model::ModelHeader) {
    let path = dir.join("serving.vgm");
    std::fs::copy(default_model_path(), &path).expect("copy model");
    let old = model();
    let mut header = old.header.clone();
    header.thresholds = vigil::decision::Thresholds::new(review, decline).expect("thresholds");
    header.version = vigil::model::format::content_version(&header, &old.forest);
    assert_ne!(header.version, old.header.version);
    (path, header)
}

/// One input record: key and payload as produced.
#[derive(Clone, Debug)]
pub struct Input {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

impl Input {
    pub fn tx(tx: &Transaction) -> Input {
        Input {
            key: Some(tx.card_id.as_bytes().to_vec()),
            payload: Some(encode_transaction(tx)),
        }
    }
}

fn producer(brokers: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Produces `inputs` at `rate` records/s (None: at once) and waits for every acknowledgement.
pub fn produce(brokers: &str, topic: &str, inputs: &[Input], rate: Option<f64>) {
    let p = producer(brokers);
    let started = Instant::now();
    for (i, input) in inputs.iter().enumerate() {
        if let Some(r) = rate {
            let due = started + Duration::from_secs_f64(i as f64 / r);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        send(&p, topic, input, None);
    }
    p.flush(Duration::from_secs(120))
        .expect("all inputs acknowledged");
}

/// Queues one input (with a record timestamp, when given), waiting while the queue is full.
fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, input: &Input, ts: Option<i64>) {
    let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
    if let Some(ts) = ts {
        rec = rec.timestamp(ts);
    }
    if let Some(k) = &input.key {
        rec = rec.key(k.as_slice());
    }
    if let Some(v) = &input.payload {
        rec = rec.payload(v.as_slice());
    }
    loop {
        match p.send(rec) {
            Ok(()) => break,
            Err((_, r)) => {
                rec = r;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// Produces `inputs` with the given record timestamps (ms) and waits for every
/// acknowledgement.
pub fn produce_timed(brokers: &str, topic: &str, inputs: &[(Input, i64)]) {
    let p = producer(brokers);
    for (input, ts) in inputs {
        send(&p, topic, input, Some(*ts));
    }
    p.flush(Duration::from_secs(120))
        .expect("all inputs acknowledged");
}

/// Commits `offsets` (partition, next offset) of `topic` for `group`, as a member that scored
/// up to them would have.
pub fn commit_offsets(brokers: &str, group: &str, topic: &str, offsets: &[(i32, i64)]) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for &(p, at) in offsets {
        tpl.add_partition_offset(topic, p, Offset::Offset(at))
            .expect("offset");
    }
    consumer.commit(&tpl, CommitMode::Sync).expect("commit");
}

/// Creates `topic` with `configs` (e.g. a retention), before [`Names::create`] makes the rest.
pub fn create_topic_with(brokers: &str, topic: &str, partitions: u32, configs: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let mut t = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let results = rt
        .block_on(admin.create_topics([&t], &AdminOptions::new()))
        .expect("create topics");
    for r in results {
        r.expect("topic created");
    }
}

/// Produces in a background thread.
pub fn produce_in_background(
    brokers: &str,
    topic: &str,
    inputs: Vec<Input>,
    rate: f64,
) -> std::thread::JoinHandle<()> {
    let (b, t) = (brokers.to_string(), topic.to_string());
    std::thread::spawn(move || produce(&b, &t, &inputs, Some(rate)))
}

/// A record read back from a topic.
#[derive(Clone, Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
    /// The record's timestamp (ms), -1 when it has none.
    pub timestamp_ms: i64,
}

impl Record {
    pub fn verdict(&self) -> VerdictRecord {
        serde_json::from_slice(self.payload.as_deref().unwrap_or_default()).expect("a verdict")
    }
}

/// Follows every partition of a topic from the beginning.
pub struct Reader {
    consumer: BaseConsumer,
    pub records: Vec<Record>,
}

impl Reader {
    pub fn new(brokers: &str, topic: &str, read_committed: bool) -> Reader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "test-reader")
            .set("enable.auto.commit", "false")
            .set(
                "isolation.level",
                if read_committed {
                    "read_committed"
                } else {
                    "read_uncommitted"
                },
            )
            .create()
            .expect("reader");
        let n = vigil::stream::kafka::partition_count(&consumer, topic, Duration::from_secs(30))
            .expect("topic exists");
        let mut tpl = TopicPartitionList::new();
        for p in 0..n as i32 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("tpl");
        }
        consumer.assign(&tpl).expect("assign");
        Reader {
            consumer,
            records: Vec::new(),
        }
    }

    /// Reads for `dur`.
    pub fn read_for(&mut self, dur: Duration) -> &[Record] {
        let deadline = Instant::now() + dur;
        while Instant::now() < deadline {
            self.poll_once();
        }
        &self.records
    }

    fn poll_once(&mut self) {
        if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(50)) {
            let mut headers = HashMap::new();
            if let Some(h) = m.headers() {
                for hd in h.iter() {
                    headers.insert(
                        hd.key.to_string(),
                        String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                    );
                }
            }
            self.records.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
                headers,
                timestamp_ms: m.timestamp().to_millis().unwrap_or(-1),
            });
        }
    }

    /// Reads until every transaction id in `ids` has at least one verdict.
    pub fn read_until_verdicts_for(&mut self, ids: &HashSet<&str>, timeout: Duration) -> &[Record] {
        let mut seen: HashSet<String> = HashSet::new();
        let mut parsed = 0;
        self.read_until(timeout, "a verdict for every transaction", |recs| {
            for r in &recs[parsed..] {
                seen.insert(r.verdict().transaction_id);
            }
            parsed = recs.len();
            ids.iter().all(|id| seen.contains(*id))
        })
    }

    /// Reads until `done(records)` or `timeout` (then panics with `what`).
    pub fn read_until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&[Record]) -> bool,
    ) -> &[Record] {
        let deadline = Instant::now() + timeout;
        while !done(&self.records) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} ({} records read)",
                self.records.len()
            );
            self.poll_once();
        }
        &self.records
    }
}

/// What an uninterrupted scorer makes of the transactions topic as it is: every partition
/// replayed in offset order through a fresh in-process core. `(partition, offset)` -> verdict.
pub fn reference(
    brokers: &str,
    topic: &str,
    total: usize,
) -> HashMap<(i32, i64), (f32, Decision, String)> {
    reference_as(
        brokers,
        topic,
        total,
        vigil::stream::wire::InputFormat::Json,
    )
}

/// [`reference`] for a topic of records in `format`.
pub fn reference_as(
    brokers: &str,
    topic: &str,
    total: usize,
    format: vigil::stream::wire::InputFormat,
) -> HashMap<(i32, i64), (f32, Decision, String)> {
    let mut r = Reader::new(brokers, topic, false);
    r.read_until(Duration::from_secs(60), "the whole input topic", |recs| {
        recs.len() >= total
    });
    let partitions = r.records.iter().map(|x| x.partition).max().unwrap_or(0) as u32 + 1;
    let n = vigil::stream::kafka::partition_count(&r.consumer, topic, Duration::from_secs(10))
        .expect("partitions")
        .max(partitions);
    let core = ScoringCore::new(model(), n, 16);
    let mut recs = r.records.clone();
    recs.sort_by_key(|x| (x.partition, x.offset));
    let mut out = HashMap::new();
    for x in recs {
        if let Ok(tx) = vigil::stream::wire::decode_transaction_as(
            format,
            x.key.as_deref(),
            x.payload.as_deref(),
        ) {
            // As the scorer does: a transaction dated beyond max_future_skew after its record is
            // refused, and never reaches the state.
            if !core.is_timely(&tx, x.timestamp_ms) {
                continue;
            }
            let v = core
                .score_in(vigil::scoring::ScoringPath::Kafka, x.partition as u32, &tx)
                .verdict;
            out.insert(
                (x.partition, x.offset),
                (v.score, v.decision, v.transaction_id),
            );
        }
    }
    out
}

/// Checks every verdict against the reference; returns the verdicts per transaction id.
pub fn check_against_reference(
    verdicts: &[Record],
    reference: &HashMap<(i32, i64), (f32, Decision, String)>,
) -> HashMap<String, usize> {
    let mut per_tx: HashMap<String, usize> = HashMap::new();
    for r in verdicts {
        let v = r.verdict();
        let want = reference
            .get(&(v.partition, v.offset))
            .unwrap_or_else(|| panic!("verdict for an unknown input {}:{}", v.partition, v.offset));
        assert_eq!(
            (v.score, v.decision, &v.transaction_id),
            (want.0, want.1, &want.2),
            "verdict at {}:{} differs from an uninterrupted run",
            v.partition,
            v.offset
        );
        *per_tx.entry(v.transaction_id).or_default() += 1;
    }
    per_tx
}

/// Scrapes one metric value from a /metrics endpoint (sum over label sets).
pub fn scrape(addr: &str, name: &str) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0.0;
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
