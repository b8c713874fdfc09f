//! The Kafka path's benchmark (BENCHMARKS.md, "Kafka path"): `scripts/bench_kafka.sh` starts a
//! tansu broker and runs this.
//!
//! 1. Generates a history of `--records` transactions and produces it to an input topic.
//! 2. Throughput, `--rounds` times alternately: the pipeline in pass-through mode (each record
//!    copied to an output topic: same clients, threads, queues and acknowledged-offset commits,
//!    no decoding or scoring) and in scoring mode (what `vigil serve` runs), each with a fresh
//!    consumer group draining the whole input topic. Time runs from the partitions being
//!    assigned to the group's committed offsets covering every record (so every output was
//!    acknowledged by the broker).
//! 3. Latency: vigil (and then the pass-through) on a fresh topic fed live at half vigil's
//!    measured throughput for `--latency-seconds`; a reader of the output topic takes
//!    receive time minus the input record's broker timestamp (carried in a header). The
//!    percentiles leave out records produced in the first `--latency-warmup-seconds`, which
//!    wait for the feeder's and the reader's connections and first fetches (a run's start, not
//!    its steady state); the all-records p99 and max are printed too.
//!
//! `cargo run --release --example kafka_bench -- --brokers 127.0.0.1:9092 [--records 200000]
//!  [--partitions 4] [--rounds 2] [--latency-seconds 10] [--latency-warmup-seconds 2]
//!  [--latency-rate N] [--workers 0]`

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The allocator `vigil` itself runs with (src/main.rs).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use vigil::scoring::ScoringCore;
use vigil::serve::Config;
use vigil::shutdown::Shutdown;
use vigil::stream::pipeline::{run_mode, Mode};
use vigil::stream::replay::{replay, ReplayOptions};
use vigil::stream::{kafka, wire, Status};

struct Args {
    brokers: String,
    /// The broker's process id, to report its CPU time per phase.
    broker_pid: Option<u32>,
    records: u64,
    partitions: u32,
    rounds: usize,
    latency_seconds: f64,
    /// Records produced in the first this many seconds of a latency run are left out of its
    /// steady-state percentiles (reported separately).
    latency_warmup_seconds: f64,
    /// Feed rate of the latency runs (default: half vigil's measured throughput).
    latency_rate: Option<f64>,
    /// Scoring threads (`pipeline.workers`; 0 = one per core, the default).
    workers: usize,
}

fn args() -> Result<Args> {
    let mut a = Args {
        brokers: "127.0.0.1:9092".into(),
        broker_pid: None,
        records: 200_000,
        partitions: 4,
        rounds: 2,
        latency_seconds: 10.0,
        latency_warmup_seconds: 2.0,
        latency_rate: None,
        workers: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--brokers" => a.brokers = v,
            "--broker-pid" => a.broker_pid = Some(v.parse()?),
            "--records" => a.records = v.parse()?,
            "--partitions" => a.partitions = v.parse()?,
            "--rounds" => a.rounds = v.parse()?,
            "--latency-seconds" => a.latency_seconds = v.parse()?,
            "--latency-warmup-seconds" => a.latency_warmup_seconds = v.parse()?,
            "--latency-rate" => a.latency_rate = Some(v.parse()?),
            "--workers" => a.workers = v.parse()?,
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(a)
}

fn config(a: &Args, input: &str, group: &str, output: &str) -> Config {
    let mut c = Config::default();
    c.kafka.brokers = a.brokers.clone();
    c.kafka.group = group.into();
    c.kafka.transactions_topic = input.into();
    c.kafka.verdicts_topic = output.into();
    c.kafka.alerts_topic = format!("{output}.alerts");
    c.kafka.dlq_topic = format!("{output}.dlq");
    c.pipeline.commit_interval = "100ms".into();
    c.pipeline.workers = a.workers;
    c.http.metrics_addr = String::new();
    for (var, map) in [
        ("TMP_PROD", &mut c.kafka.producer),
        ("TMP_CONS", &mut c.kafka.consumer),
    ] {
        if let Ok(v) = std::env::var(var) {
            for kv in v.split(',') {
                if let Some((k, v)) = kv.split_once('=') {
                    map.insert(k.into(), v.into());
                }
            }
        }
    }
    c
}

/// CPU seconds (user + system) a process has used so far, from /proc.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn committed_sum(consumer: &BaseConsumer, topic: &str, partitions: u32) -> i64 {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition(topic, p);
    }
    consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .map(|t| {
            t.elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Drains `input` with a fresh group in `mode`; returns records per second.
fn drain(
    a: &Args,
    model: &Arc<vigil::model::Model>,
    input: &str,
    mode: Mode,
    tag: &str,
) -> Result<(f64, f64, f64)> {
    let group = format!("bench-{tag}");
    let output = format!("bench-out-{tag}");
    let cfg = config(a, input, &group, &output);
    kafka::ensure_topics(
        &a.brokers,
        &[&output, &cfg.kafka.alerts_topic, &cfg.kafka.dlq_topic],
        a.partitions,
    )?;
    let core = Arc::new(ScoringCore::new(Arc::clone(model), a.partitions, 16));
    let (shutdown, status) = (Shutdown::new(), Arc::new(Status::default()));
    let runner = {
        let (cfg, shutdown, status) = (cfg.clone(), shutdown.clone(), Arc::clone(&status));
        std::thread::spawn(move || run_mode(&cfg.stream(), core, shutdown, status, mode))
    };
    let probe: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &a.brokers)
        .set("group.id", &group)
        .create()?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while !status.assigned.load(Ordering::Acquire) {
        if Instant::now() > deadline || runner.is_finished() {
            bail!("{tag}: partitions never assigned");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let t0 = Instant::now();
    let broker_pid = a.broker_pid.map(|p| p.to_string());
    let cpu0 = (
        cpu_seconds("self"),
        broker_pid.as_deref().map_or(0.0, cpu_seconds),
    );
    let mut last_print = Instant::now();
    loop {
        let done = committed_sum(&probe, input, a.partitions);
        if done >= a.records as i64 {
            break;
        }
        if Instant::now() > deadline || runner.is_finished() {
            bail!("{tag}: stopped at {done} of {}", a.records);
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            last_print = Instant::now();
            eprintln!("  {tag}: {done}/{} committed", a.records);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = t0.elapsed().as_secs_f64();
    let per = |c: f64| c * 1e6 / a.records as f64;
    let own = per(cpu_seconds("self") - cpu0.0);
    let broker = per(broker_pid.as_deref().map_or(0.0, cpu_seconds) - cpu0.1);
    shutdown.trigger();
    runner
        .join()
        .map_err(|_| anyhow::anyhow!("pipeline panicked"))??;
    Ok((a.records as f64 / secs, own, broker))
}

/// Runs `mode` on a fresh topic fed live at `rate`; returns (p50, p99, max) latency in ms.
fn latency(
    a: &Args,
    model: &Arc<vigil::model::Model>,
    history: &[vigil::record::Transaction],
    mode: Mode,
    rate: f64,
    tag: &str,
) -> Result<Latency> {
    let input = format!("bench-live-{tag}");
    kafka::ensure_topics(&a.brokers, &[&input], a.partitions)?;
    let group = format!("bench-{tag}");
    let output = format!("bench-out-{tag}");
    let cfg = config(a, &input, &group, &output);
    kafka::ensure_topics(
        &a.brokers,
        &[&output, &cfg.kafka.alerts_topic, &cfg.kafka.dlq_topic],
        a.partitions,
    )?;
    let core = Arc::new(ScoringCore::new(Arc::clone(model), a.partitions, 16));
    let (shutdown, status) = (Shutdown::new(), Arc::new(Status::default()));
    let runner = {
        let (cfg, shutdown, status) = (cfg.clone(), shutdown.clone(), Arc::clone(&status));
        std::thread::spawn(move || run_mode(&cfg.stream(), core, shutdown, status, mode))
    };
    while !status.assigned.load(Ordering::Acquire) {
        if runner.is_finished() {
            bail!("{tag}: pipeline stopped");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let n = ((rate * a.latency_seconds) as usize).min(history.len());
    let reader: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &a.brokers)
        .set("group.id", format!("bench-reader-{tag}"))
        .set("fetch.wait.max.ms", "5")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..a.partitions as i32 {
        tpl.add_partition_offset(&output, p, Offset::Beginning)?;
    }
    reader.assign(&tpl)?;
    let producer = {
        let opts = ReplayOptions {
            format: Default::default(),
            brokers: a.brokers.clone(),
            topic: input.clone(),
            labels_topic: None,
            label_latency_ms: 0,
            rate: Some(rate),
            producer: Vec::new(),
        };
        let txs = history[..n].to_vec();
        std::thread::spawn(move || replay(&txs, &opts, &Shutdown::new(), |_| {}))
    };
    // (source timestamp, latency) per output.
    let mut lat: Vec<(i64, f64)> = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs_f64(a.latency_seconds * 3.0 + 60.0);
    while lat.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(50)) {
            let now = wire::now_ms();
            let src = m.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == wire::HDR_SOURCE_TS)
                    .and_then(|x| std::str::from_utf8(x.value?).ok()?.parse::<i64>().ok())
            });
            if let Some(ts) = src {
                lat.push((ts, (now - ts) as f64));
            }
        }
    }
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))??;
    shutdown.trigger();
    runner
        .join()
        .map_err(|_| anyhow::anyhow!("pipeline panicked"))??;
    if lat.len() < n {
        bail!("{tag}: only {} of {n} outputs seen", lat.len());
    }
    Ok(Latency::of(&lat, a.latency_warmup_seconds))
}

/// Latency percentiles of one live run, in ms.
struct Latency {
    /// Over the records produced after the warm-up: the steady state.
    p50: f64,
    p99: f64,
    max: f64,
    steady: usize,
    /// Over every record, including the first ones, which wait for the clients' connections,
    /// metadata and first fetches (the reader and the feeder start with the run).
    all_p99: f64,
    all_max: f64,
    all: usize,
}

impl Latency {
    fn of(samples: &[(i64, f64)], warmup_seconds: f64) -> Latency {
        let first = samples.iter().map(|s| s.0).min().unwrap_or(0);
        let cut = first + (warmup_seconds * 1000.0) as i64;
        let sorted = |keep: &dyn Fn(i64) -> bool| {
            let mut v: Vec<f64> = samples.iter().filter(|s| keep(s.0)).map(|s| s.1).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let q = |v: &[f64], f: f64| {
            v.get(((v.len() as f64 - 1.0) * f).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        let (steady, all) = (sorted(&|ts| ts >= cut), sorted(&|_| true));
        Latency {
            p50: q(&steady, 0.5),
            p99: q(&steady, 0.99),
            max: q(&steady, 1.0),
            steady: steady.len(),
            all_p99: q(&all, 0.99),
            all_max: q(&all, 1.0),
            all: all.len(),
        }
    }
}

fn main() -> Result<()> {
    let a = args()?;
    let tag = format!("{:08x}", rand::random::<u32>());
    let model = Arc::new(vigil::model::load(
        std::path::Path::new("models/default.vgm"),
        None,
    )?);

    eprintln!("generating {} transactions ...", a.records);
    let dir = tempfile::tempdir()?;
    let csv = dir.path().join("history.csv");
    let gen = vigil::generate::GeneratorConfig {
        rows: a.records,
        seed: 11,
        cards: Some((a.records / 40).max(1000)),
        ..Default::default()
    };
    vigil::generate::generate(
        &gen,
        std::io::BufWriter::new(std::fs::File::create(&csv)?),
        &mut |_| {},
    )?;
    let mut history = vigil::record::read_history(&csv, Default::default())?;
    history.sort_by_time();
    let txs = history.transactions;

    let input = format!("bench-in-{tag}");
    kafka::ensure_topics(&a.brokers, &[&input], a.partitions)?;
    let opts = ReplayOptions {
        format: Default::default(),
        brokers: a.brokers.clone(),
        topic: input.clone(),
        labels_topic: None,
        label_latency_ms: 0,
        rate: None,
        producer: Vec::new(),
    };
    let loaded = replay(&txs, &opts, &Shutdown::new(), |_| {})?;
    println!(
        "loaded {} records into {input} ({} partitions) in {:.1}s ({:.0}/s)",
        loaded.acknowledged,
        a.partitions,
        loaded.seconds,
        loaded.acknowledged as f64 / loaded.seconds
    );

    let mut rates: HashMap<&str, Vec<f64>> = HashMap::new();
    for round in 0..a.rounds {
        for (name, mode) in [("pass-through", Mode::PassThrough), ("vigil", Mode::Score)] {
            let (r, own, broker) =
                drain(&a, &model, &input, mode, &format!("{name}-{round}-{tag}"))?;
            println!(
                "round {round}: {name:<12} {r:>9.0} records/s; CPU per record: pipeline {own:.1} us, broker {broker:.1} us"
            );
            rates.entry(name).or_default().push(r);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (pt, vg) = (mean(&rates["pass-through"]), mean(&rates["vigil"]));
    println!(
        "throughput: pass-through {pt:.0}/s, vigil {vg:.0}/s: vigil = {:.1} % of the pass-through",
        100.0 * vg / pt
    );

    let half = a.latency_rate.unwrap_or(vg / 2.0);
    for (name, mode) in [("vigil", Mode::Score), ("pass-through", Mode::PassThrough)] {
        let l = latency(&a, &model, &txs, mode, half, &format!("lat-{name}-{tag}"))?;
        println!(
            "latency at {half:.0}/s ({name}, {} records after {:.0} s of warm-up): p50 {:.0} ms, \
             p99 {:.0} ms, max {:.0} ms; all {} records: p99 {:.0} ms, max {:.0} ms",
            l.steady, a.latency_warmup_seconds, l.p50, l.p99, l.max, l.all, l.all_p99, l.all_max
        );
    }
    Ok(())
}
