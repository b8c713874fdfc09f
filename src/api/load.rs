//! The Score load generator behind `vigil load-grpc`: a realistic request stream (a history's
//! rows in event-time order, replayed in passes with timestamps shifted past the previous pass
//! and ids made unique per pass, so every request is a new transaction in the future of the
//! state), sent over a few HTTP/2 connections by a fixed number of concurrent callers, either as
//! fast as the server answers (closed loop) or at a fixed rate (open loop).
//!
//! At a fixed rate, request `i` is due at `start + i / rate`; a caller sleeps until then (tokio's
//! timer has millisecond resolution, so requests leave in small bursts), sends, and records the
//! latency from send to answer. How late each send left against its due time is recorded too
//! (`schedule lag`): if the callers cannot keep up, that lag grows and shows it, instead of the
//! latency figures silently omitting the wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::record::Transaction;

use super::client::Client;
use crate::proto::{self as pb, codec};

/// What to send and how.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Requests per second; `None` sends as fast as answers come back.
    pub rate: Option<f64>,
    /// Measured duration (after the warm-up).
    pub duration: Duration,
    /// Time sent but not measured, first.
    pub warmup: Duration,
    /// Calls in flight at once.
    pub concurrency: usize,
    /// Per-call deadline.
    pub timeout: Duration,
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(mut v: Vec<u32>) -> Percentiles {
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)] as f64;
        Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: v[v.len() - 1] as f64,
        }
    }
}

/// What a run measured (warm-up excluded).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    /// Calls answered over the whole run, warm-up included (to divide CPU time by).
    pub total_calls: u64,
    pub ok: u64,
    pub errors: u64,
    /// The first few error messages, for diagnosis.
    pub error_samples: Vec<String>,
    pub seconds: f64,
    /// Successful calls per second.
    pub throughput: f64,
    /// Send to answer, microseconds.
    pub latency_us: Percentiles,
    /// Due time to send (fixed rate only), microseconds.
    pub schedule_lag_us: Percentiles,
    /// Verdicts by decision.
    pub approve: u64,
    pub review: u64,
    pub decline: u64,
}

/// The request stream: row `i % n` of `rows` (sorted by event time) in pass `i / n`.
pub struct RequestStream {
    rows: Vec<Transaction>,
    /// Event-time length of one pass, plus a day.
    shift_ms: i64,
}

impl RequestStream {
    pub fn new(mut rows: Vec<Transaction>) -> RequestStream {
        rows.sort_by_key(|t| t.timestamp_ms);
        let span = match (rows.first(), rows.last()) {
            (Some(a), Some(b)) => b.timestamp_ms - a.timestamp_ms,
            _ => 0,
        };
        RequestStream {
            rows,
            shift_ms: span + 86_400_000,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Request number `i`.
    pub fn request(&self, i: u64) -> pb::ScoreRequest {
        let n = self.rows.len() as u64;
        let (pass, row) = (i / n, &self.rows[(i % n) as usize]);
        let mut t = codec::transaction_to_pb(row);
        if pass > 0 {
            t.transaction_id = format!("{}#{pass}", row.transaction_id);
            t.time = Some(pb::transaction::Time::TimestampMs(
                row.timestamp_ms + self.shift_ms * pass as i64,
            ));
        }
        pb::ScoreRequest {
            transaction: Some(t),
            dry_run: false,
            include_features: false,
        }
    }
}

#[derive(Default)]
struct WorkerResult {
    total: u64,
    ok: u64,
    errors: u64,
    error_samples: Vec<String>,
    latency_us: Vec<u32>,
    lag_us: Vec<u32>,
    decisions: [u64; 3],
}

/// Runs the load over `clients` (one per connection; callers are spread over them).
pub async fn run(
    clients: Vec<Client>,
    stream: Arc<RequestStream>,
    opts: LoadOptions,
) -> LoadReport {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + opts.warmup;
    let end = measure_from + opts.duration;
    let mut tasks = Vec::new();
    for w in 0..opts.concurrency.max(1) {
        let mut client = clients[w % clients.len()].clone();
        let (next, stream, opts) = (Arc::clone(&next), Arc::clone(&stream), opts.clone());
        tasks.push(tokio::spawn(async move {
            let mut r = WorkerResult::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let due = match opts.rate {
                    Some(rate) => start + Duration::from_secs_f64(i as f64 / rate),
                    None => Instant::now(),
                };
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                let mut req = tonic::Request::new(stream.request(i));
                req.set_timeout(opts.timeout);
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let result = client.score(req).await;
                let done = Instant::now();
                r.total += 1;
                if sent < measure_from {
                    continue;
                }
                match result {
                    Ok(resp) => {
                        r.ok += 1;
                        r.latency_us
                            .push((done - sent).as_micros().min(u32::MAX as u128) as u32);
                        if opts.rate.is_some() {
                            r.lag_us.push(
                                sent.saturating_duration_since(due)
                                    .as_micros()
                                    .min(u32::MAX as u128) as u32,
                            );
                        }
                        let d = resp.into_inner().verdict.map_or(0, |v| v.decision);
                        if let Some(k) = codec::decision_from_pb(d) {
                            r.decisions[k as usize] += 1;
                        }
                    }
                    Err(status) => {
                        r.errors += 1;
                        if r.error_samples.len() < 3 {
                            r.error_samples.push(format!(
                                "{:?}: {}",
                                status.code(),
                                status.message()
                            ));
                        }
                    }
                }
            }
            r
        }));
    }
    let mut total = WorkerResult::default();
    for t in tasks {
        // A panicking caller is a bug in this generator; count its calls as lost.
        let Ok(r) = t.await else { continue };
        total.total += r.total;
        total.ok += r.ok;
        total.errors += r.errors;
        total.latency_us.extend(r.latency_us);
        total.lag_us.extend(r.lag_us);
        for k in 0..3 {
            total.decisions[k] += r.decisions[k];
        }
        for s in r.error_samples {
            if total.error_samples.len() < 5 {
                total.error_samples.push(s);
            }
        }
    }
    let seconds = opts.duration.as_secs_f64();
    LoadReport {
        total_calls: total.total,
        ok: total.ok,
        errors: total.errors,
        error_samples: total.error_samples,
        seconds,
        throughput: total.ok as f64 / seconds,
        latency_us: Percentiles::of(total.latency_us),
        schedule_lag_us: Percentiles::of(total.lag_us),
        approve: total.decisions[0],
        review: total.decisions[1],
        decline: total.decisions[2],
    }
}
