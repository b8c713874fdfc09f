//! `vigil.v1.Scoring`: a plain struct implementing the generated trait. Each handler checks its
//! deadline, finds the serving core, converts the request (refusing it before anything changes),
//! takes a concurrency slot and calls [`ScoringCore`]; nothing here scores or knows the record
//! rules.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, watch, Semaphore, SemaphorePermit};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::scoring::{ScoringCore, ScoringPath};

use super::auth::Arrival;
use super::config::ApiSettings;
use crate::proto as pb;

use super::{convert, AlertFilter, CoreSlot};

/// Alerts buffered between the broadcast and one subscriber's connection. When the connection
/// does not keep up, this fills, the forwarding task waits, and the broadcast receiver falls
/// behind and is told how many alerts it lost: the scorer never waits.
const ALERT_QUEUE: usize = 256;

/// Transactions of a batch scored between two checks of the deadline (and yields to the
/// runtime, so one large batch does not hold a worker thread for long).
const BATCH_CHUNK: usize = 64;

pub struct ScoringApi {
    slot: CoreSlot,
    /// Unary calls in progress (`max_concurrent_requests`).
    permits: Semaphore,
    /// StreamAlerts subscribers (`max_alert_subscribers`).
    subscribers: Arc<Semaphore>,
    max_concurrent: usize,
    queue_timeout: Duration,
    max_batch: usize,
    /// Becomes true when the server shuts down: alert streams end, so the graceful shutdown is
    /// not held open by subscribers that would never leave.
    stopping: watch::Receiver<bool>,
}

/// The instant a request must be answered by, if the client set one.
#[derive(Debug, Clone, Copy)]
struct Deadline(Option<Instant>);

impl Deadline {
    fn of<T>(req: &Request<T>) -> Deadline {
        let arrival = req
            .extensions()
            .get::<Arrival>()
            .map_or_else(Instant::now, |a| a.0);
        Deadline(convert::deadline_of(req.metadata(), arrival))
    }

    fn check(self) -> Result<(), Status> {
        match self.0 {
            Some(at) if Instant::now() >= at => Err(Status::deadline_exceeded(
                "the request's deadline passed before it could be scored; nothing was changed",
            )),
            _ => Ok(()),
        }
    }
}

impl ScoringApi {
    pub fn new(slot: CoreSlot, settings: &ApiSettings, stopping: watch::Receiver<bool>) -> Self {
        ScoringApi {
            slot,
            permits: Semaphore::new(settings.max_concurrent_requests),
            subscribers: Arc::new(Semaphore::new(settings.max_alert_subscribers)),
            max_concurrent: settings.max_concurrent_requests,
            queue_timeout: settings.queue_timeout,
            max_batch: settings.max_batch,
            stopping,
        }
    }

    fn core(&self) -> Result<Arc<ScoringCore>, Status> {
        self.slot
            .get()
            .ok_or_else(|| Status::unavailable("no model loaded yet; retry shortly"))
    }

    /// A concurrency slot, waiting for one until the request's deadline (or `queue_timeout`
    /// without one).
    async fn permit(&self, deadline: Deadline) -> Result<SemaphorePermit<'_>, Status> {
        if let Ok(p) = self.permits.try_acquire() {
            return Ok(p);
        }
        let until = deadline
            .0
            .unwrap_or_else(|| Instant::now() + self.queue_timeout);
        match tokio::time::timeout_at(until.into(), self.permits.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(Status::unavailable("the server is shutting down")),
            Err(_) if deadline.0.is_some() => Err(Status::deadline_exceeded(
                "the deadline passed while waiting for a free slot; nothing was changed",
            )),
            Err(_) => Err(Status::resource_exhausted(format!(
                "the server is at its limit of {} concurrent requests; retry with backoff",
                self.max_concurrent
            ))),
        }
    }
}

/// Which alerts a subscriber wants.
pub(super) fn filter_matches(f: &AlertFilter, v: &crate::scoring::Verdict) -> bool {
    use crate::decision::Decision;
    let wanted = match v.decision {
        Decision::Approve => false,
        Decision::Review => f.review,
        Decision::Decline => f.decline,
    };
    wanted && v.score >= f.min_score
}

#[tonic::async_trait]
impl pb::scoring_server::Scoring for ScoringApi {
    async fn score(
        &self,
        req: Request<pb::ScoreRequest>,
    ) -> Result<Response<pb::ScoreResponse>, Status> {
        let deadline = Deadline::of(&req);
        let core = self.core()?;
        let (tx, opts) = convert::score_request(req.into_inner())?;
        convert::timely(&core, &tx)?;
        let _permit = self.permit(deadline).await?;
        deadline.check()?;
        let scored = core.score_with(ScoringPath::Grpc, &tx, opts)?;
        let model = core.model();
        Ok(Response::new(convert::score_response(
            scored,
            &model.header.feature_names,
            core.partition_of(&tx.card_id),
        )))
    }

    async fn score_batch(
        &self,
        req: Request<pb::ScoreBatchRequest>,
    ) -> Result<Response<pb::ScoreBatchResponse>, Status> {
        let deadline = Deadline::of(&req);
        let core = self.core()?;
        let (items, opts) = convert::batch_request(req.into_inner(), self.max_batch)?;
        let _permit = self.permit(deadline).await?;
        let model = core.model();
        let mut results = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            if i % BATCH_CHUNK == 0 {
                if i > 0 {
                    tokio::task::yield_now().await;
                }
                if let Err(status) = deadline.check() {
                    return Err(if i == 0 {
                        status
                    } else {
                        // Scoring is not transactional across a batch; what is already in the
                        // windows stays, and a retry of the whole batch is safe because
                        // transaction ids already counted are not counted again.
                        Status::deadline_exceeded(format!(
                            "the deadline passed after {i} of the batch's transactions were \
                             scored; retrying the batch is safe (ids already counted are not \
                             counted twice)"
                        ))
                    });
                }
            }
            let item = item
                .and_then(|tx| convert::timely(&core, &tx).map(|()| tx))
                .map_err(convert::ItemFailure::from)
                .and_then(|tx| {
                    let scored = core
                        .score_with(ScoringPath::Grpc, &tx, opts)
                        .map_err(convert::ItemFailure::Unavailable)?;
                    Ok(convert::score_response(
                        scored,
                        &model.header.feature_names,
                        core.partition_of(&tx.card_id),
                    ))
                });
            results.push(convert::batch_item(item));
        }
        Ok(Response::new(pb::ScoreBatchResponse { results }))
    }

    type StreamAlertsStream = ReceiverStream<Result<pb::Alert, Status>>;

    async fn stream_alerts(
        &self,
        req: Request<pb::AlertFilter>,
    ) -> Result<Response<Self::StreamAlertsStream>, Status> {
        let core = self.core()?;
        let filter = convert::alert_filter(req.into_inner())?;
        let permit = Arc::clone(&self.subscribers)
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted("too many alert subscribers; retry later"))?;
        let mut alerts = core.subscribe_alerts();
        drop(core);
        let mut stopping = self.stopping.clone();
        let (out, rx) = mpsc::channel(ALERT_QUEUE);
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                let next = tokio::select! {
                    r = alerts.recv() => r,
                    _ = out.closed() => break,
                    _ = stopping.wait_for(|s| *s) => break,
                };
                let msg = match next {
                    Ok(v) if filter_matches(&filter, &v) => convert::alert(&v),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => convert::skipped(n),
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                let sent = tokio::select! {
                    r = out.send(Ok(msg)) => r.is_ok(),
                    _ = stopping.wait_for(|s| *s) => false,
                };
                if !sent {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_model(
        &self,
        req: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let deadline = Deadline::of(&req);
        let core = self.core()?;
        let _permit = self.permit(deadline).await?;
        deadline.check()?;
        Ok(Response::new(convert::model_info(
            &core.model(),
            core.partitions(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::config::ApiConfig;
    use crate::proto::scoring_server::Scoring;
    use crate::scoring::DEFAULT_ALERT_BUFFER;

    fn api(queue_timeout_ms: u64) -> ScoringApi {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.vgm");
        let model = Arc::new(crate::model::load(&path, None).expect("shipped model"));
        let core = Arc::new(ScoringCore::new(model, 1, DEFAULT_ALERT_BUFFER));
        let settings = ApiConfig {
            max_concurrent_requests: 1,
            queue_timeout_ms,
            ..ApiConfig::default()
        }
        .check()
        .unwrap();
        ScoringApi::new(CoreSlot::with(core), &settings, watch::channel(false).1)
    }

    fn request(timeout: Option<&str>) -> Request<pb::ScoreRequest> {
        let mut req = Request::new(pb::ScoreRequest {
            transaction: Some(pb::Transaction {
                transaction_id: "t1".into(),
                time: Some(pb::transaction::Time::TimestampMs(1_600_000_000_000)),
                card_id: "c1".into(),
                merchant_id: "m1".into(),
                amount: Some(5.0),
                ..pb::Transaction::default()
            }),
            dry_run: false,
            include_features: false,
        });
        if let Some(t) = timeout {
            req.metadata_mut()
                .insert("grpc-timeout", t.parse().unwrap());
        }
        req
    }

    fn events(api: &ScoringApi) -> u64 {
        api.slot.get().unwrap().stats(0).events_in_order
    }

    #[tokio::test]
    async fn at_the_concurrency_limit_calls_wait_until_their_deadline() {
        let api = api(1000);
        let held = api.permits.try_acquire().expect("the only slot");
        let err = api.score(request(Some("30m"))).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(events(&api), 0, "nothing changed");
        drop(held);
        api.score(request(Some("30m"))).await.expect("a free slot");
        assert_eq!(events(&api), 1);
    }

    #[tokio::test]
    async fn without_a_deadline_calls_wait_the_queue_timeout_then_are_shed() {
        let api = api(20);
        let held = api.permits.try_acquire().expect("the only slot");
        let err = api.score(request(None)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("limit of 1 concurrent"), "{err:?}");
        assert_eq!(events(&api), 0);
        // A slot freed while waiting is taken.
        let waiter = api.score(request(Some("5S")));
        let release = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(held);
        };
        let (r, ()) = tokio::join!(waiter, release);
        r.expect("scored once the slot is free");
        assert_eq!(events(&api), 1);
    }
}
