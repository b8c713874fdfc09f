//! The alert stream: alerts from both scoring paths, filters, slow subscribers, shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;

use vigil::api::{self, ApiSettings, CoreSlot};
use vigil::decision::Decision;
use vigil::partition::partition_for;
use vigil::proto::{self as pb, codec};
use vigil::scoring::{ScoringCore, ScoringPath};

use crate::support::{model, sample, tx};
use crate::{core, score_req, TestServer, T0};

/// The alert stream carries alerts from the Kafka path's call (`score_in`, what the consumer
/// loop does per record) and from gRPC Score, filtered as asked.
#[tokio::test]
async fn alert_stream_receives_alerts_from_both_paths_filtered() {
    let partitions = 2;
    let core = core(partitions);
    let server = TestServer::start(CoreSlot::with(Arc::clone(&core)), ApiSettings::default()).await;
    let mut client = server.client().await;
    let mut all = client
        .stream_alerts(pb::AlertFilter::default())
        .await
        .unwrap()
        .into_inner();
    let min_score = 0.6;
    let mut declines = client
        .stream_alerts(pb::AlertFilter {
            decisions: vec![pb::Decision::Decline as i32],
            min_score,
        })
        .await
        .unwrap()
        .into_inner();

    let rows = sample(3000);
    let (kafka_rows, grpc_rows) = rows.split_at(2000);
    let mut expected = Vec::new();
    for t in kafka_rows {
        // As the Kafka loop would: the record's partition is its card's.
        let p = partition_for(t.card_id.as_bytes(), partitions);
        let v = core
            .score_in(vigil::scoring::ScoringPath::Kafka, p, t)
            .verdict;
        if v.decision != Decision::Approve {
            expected.push(v);
        }
    }
    let from_kafka = expected.len();
    for t in grpc_rows {
        let r = client.score(score_req(t)).await.unwrap().into_inner();
        let v = codec::verdict_from_pb(r.verdict.unwrap()).unwrap();
        if v.decision != Decision::Approve {
            expected.push(v);
        }
    }
    assert!(
        from_kafka > 0 && expected.len() > from_kafka,
        "the sample produces alerts on both paths ({from_kafka} of {})",
        expected.len()
    );

    let mut received = Vec::new();
    while received.len() < expected.len() {
        let msg = tokio::time::timeout(Duration::from_secs(10), all.next())
            .await
            .expect("alerts keep coming")
            .expect("stream open")
            .expect("ok");
        match msg.event {
            Some(pb::alert::Event::Verdict(v)) => received.push(codec::verdict_from_pb(v).unwrap()),
            other => panic!("no subscriber should lag here: {other:?}"),
        }
    }
    assert_eq!(received, expected);

    let wanted: Vec<&vigil::scoring::Verdict> = expected
        .iter()
        .filter(|v| v.decision == Decision::Decline && v.score >= min_score)
        .collect();
    assert!(!wanted.is_empty() && wanted.len() < expected.len());
    for w in wanted {
        let msg = tokio::time::timeout(Duration::from_secs(10), declines.next())
            .await
            .expect("filtered alerts arrive")
            .unwrap()
            .unwrap();
        let Some(pb::alert::Event::Verdict(v)) = msg.event else {
            panic!("unexpected {msg:?}");
        };
        assert_eq!(v.transaction_id, w.transaction_id);
    }
    server.stop().await;
}

/// A subscriber that does not read loses alerts, is told how many, and never holds the scorer
/// up: everything published is either received or counted as skipped.
#[tokio::test]
async fn a_slow_subscriber_skips_with_a_count_and_never_blocks_publishing() {
    let core = Arc::new(ScoringCore::new(model(), 1, 8));
    let server = TestServer::start(CoreSlot::with(Arc::clone(&core)), ApiSettings::default()).await;
    let mut client = server.client().await;
    let mut stream = client
        .stream_alerts(pb::AlertFilter::default())
        .await
        .unwrap()
        .into_inner();
    let mut base = core
        .score(
            ScoringPath::Grpc,
            &tx("t").card("c").at(T0).amount(1.0).build(),
        )
        .verdict;
    base.decision = Decision::Review;
    let published = 20_000u64;
    let started = std::time::Instant::now();
    for i in 0..published {
        let mut v = base.clone();
        v.transaction_id = format!("a{i}");
        core.publish_alert(Arc::new(v));
    }
    // Publishing never waited for the subscriber (which has read nothing yet).
    assert!(started.elapsed() < Duration::from_secs(5));

    let (mut verdicts, mut skipped, mut notices) = (0u64, 0u64, 0u64);
    let mut last = String::new();
    while verdicts + skipped < published {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the stream keeps delivering")
            .unwrap()
            .unwrap();
        match msg.event {
            Some(pb::alert::Event::Verdict(v)) => {
                verdicts += 1;
                last = v.transaction_id;
            }
            Some(pb::alert::Event::Skipped(s)) => {
                assert!(s.count > 0);
                skipped += s.count;
                notices += 1;
            }
            None => panic!("empty alert"),
        }
    }
    assert_eq!(verdicts + skipped, published);
    assert!(
        notices > 0 && skipped > 0,
        "the subscriber was told it lagged"
    );
    assert_eq!(
        last,
        format!("a{}", published - 1),
        "the newest alert arrives"
    );
    server.stop().await;
}

/// Shutdown ends open alert streams instead of waiting for subscribers that would never leave.
#[tokio::test]
async fn shutdown_ends_alert_streams_promptly() {
    let server = TestServer::start(CoreSlot::with(core(1)), ApiSettings::default()).await;
    let mut client = server.client().await;
    let mut stream = client
        .stream_alerts(pb::AlertFilter::default())
        .await
        .unwrap()
        .into_inner();
    let started = std::time::Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < api::SHUTDOWN_GRACE,
        "the server waited out its grace period ({:?}): alert streams held it open",
        started.elapsed()
    );
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stream ends");
    assert!(
        !matches!(end, Some(Ok(_))),
        "no alert, just the end: {end:?}"
    );
}
