//! The labels feed: every label on the labels topic goes to [`ScoringCore::observe_label`].
//!
//! Any partition may hold a label's transaction, so every process reads the whole labels topic
//! (assigned, not subscribed in a group) from its beginning, and offsets are never committed:
//! on restart the core learns the labels again, which also lets a rebuilt partition see them at
//! the event times it replays. The topic's retention bounds how far back that goes.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::config::StreamConfig;
use crate::scoring::ScoringCore;
use crate::shutdown::Shutdown;
use crate::telemetry;

use super::kafka;
use super::wire::decode_label;
use super::StreamError;

/// Reads `topic` into `core` until `shutdown`. Malformed labels are counted and skipped.
pub fn run(
    cfg: &StreamConfig,
    topic: &str,
    core: Arc<ScoringCore>,
    shutdown: Shutdown,
) -> Result<u64, StreamError> {
    let consumer: BaseConsumer =
        kafka::create(&kafka::consumer_config(cfg, None), "labels consumer")?;
    let n = kafka::partition_count(&consumer, topic, Duration::from_secs(30))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..n as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|e| StreamError::Client(format!("labels: {e}")))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| StreamError::Client(format!("labels: assign {topic}: {e}")))?;
    let mut count = 0u64;
    while !shutdown.is_triggered() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => match m.payload().map(decode_label) {
                Some(Ok(label)) => {
                    core.observe_label(&label);
                    telemetry::label_in("ok");
                    count += 1;
                }
                Some(Err(e)) => {
                    telemetry::label_in("invalid");
                    tracing::warn!(
                        partition = m.partition(),
                        offset = m.offset(),
                        "label skipped: {e}"
                    );
                }
                None => telemetry::label_in("invalid"),
            },
            Some(Err(e)) => tracing::warn!("labels consumer: {e}"),
            None => {}
        }
    }
    Ok(count)
}
