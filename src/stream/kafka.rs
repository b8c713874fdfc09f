//! Kafka client construction and cluster look-ups: the settings vigil puts on every client, the
//! configured pass-through properties, topic creation and partition counts.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use super::config::StreamConfig;

use super::StreamError;

/// Consumer settings: vigil's, then the configured pass-through properties.
/// `group` is `None` for the helper consumers that only `assign` (rebuild, labels).
pub fn consumer_config(cfg: &StreamConfig, group: Option<&str>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.brokers)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Rebuilding a partition's state happens on the polling thread; allow it time.
        .set("max.poll.interval.ms", "600000")
        // Latency: tansu 0.6 holds a fetch for its whole max wait even when records are there,
        // so librdkafka's default (500 ms) lands on every verdict; on Kafka this only bounds
        // idle fetches (BENCHMARKS.md, "Figures moved from code comments (stream pipeline)").
        .set("fetch.wait.max.ms", "5")
        // librdkafka postpones a partition's next fetch by this much once its local queue is
        // over `queued.min.messages` / `queued.max.messages.kbytes` (default 1 s). The reader
        // hands records to bounded scoring queues, so when scoring is the slower side the local
        // queue fills, and with the default the fetcher then idled a whole second after it had
        // drained, with every core idle (BENCHMARKS.md has the Kafka bench's figures).
        .set("fetch.queue.backoff.ms", "10")
        .set(
            "isolation.level",
            if cfg.kafka.exactly_once {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        );
    match group {
        Some(g) => {
            // Consumer lag per partition comes from librdkafka's statistics.
            c.set("group.id", g).set("statistics.interval.ms", "5000");
        }
        None => {
            // librdkafka wants a group id for some calls even when it never joins the group.
            c.set("group.id", format!("{}.helper", cfg.kafka.group));
        }
    }
    for (k, v) in &cfg.kafka.consumer {
        c.set(k, v);
    }
    c
}

/// Producer settings: idempotent, murmur2 partitioning of card-id keys (as the Java client and
/// `vigil replay`), a short linger; then the configured pass-through properties.
pub fn producer_config(cfg: &StreamConfig, transactional_id: Option<&str>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random");
    if let Some(id) = transactional_id {
        c.set("transactional.id", id);
    }
    for (k, v) in &cfg.kafka.producer {
        c.set(k, v);
    }
    c
}

/// Builds a client, turning librdkafka's configuration errors (which name the property) into
/// [`StreamError::Client`].
pub fn create<T: rdkafka::config::FromClientConfig>(
    c: &ClientConfig,
    what: &str,
) -> Result<T, StreamError> {
    c.create()
        .map_err(|e| StreamError::Client(format!("{what}: {e}")))
}

/// Creates the topics that do not exist yet (`partitions` each, replication 1). Existing topics
/// are left as they are.
pub fn ensure_topics(brokers: &str, topics: &[&str], partitions: u32) -> Result<(), StreamError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| StreamError::Client(format!("admin client: {e}")))?;
    let partitions = i32::try_from(partitions).unwrap_or(i32::MAX);
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StreamError::Client(format!("admin runtime: {e}")))?;
    let results = rt
        .block_on(admin.create_topics(&new, &opts))
        .map_err(|e| StreamError::Client(format!("creating topics {topics:?}: {e}")))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(StreamError::Client(format!(
                    "creating topic {topic}: {code}"
                )))
            }
        }
    }
    Ok(())
}

/// The partition count of `topic`, waiting up to `timeout` for it to appear in the metadata.
pub fn partition_count<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<u32, StreamError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5));
        let found = md.as_ref().ok().and_then(|md| {
            md.topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().len() as u32)
                .filter(|n| *n > 0)
        });
        if let Some(n) = found {
            return Ok(n);
        }
        if std::time::Instant::now() >= deadline {
            let why = match md {
                Err(e) => e.to_string(),
                Ok(_) => "the topic does not exist (create it, or set kafka.create_topics = true)"
                    .to_string(),
            };
            return Err(StreamError::Client(format!(
                "cannot read the partitions of topic `{topic}`: {why}"
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The partition count of `topic`, with a throwaway consumer.
pub fn topic_partitions(
    cfg: &StreamConfig,
    topic: &str,
    timeout: Duration,
) -> Result<u32, StreamError> {
    let consumer: BaseConsumer = create(&consumer_config(cfg, None), "metadata consumer")?;
    partition_count(&consumer, topic, timeout)
}

/// Fetches the producer's metadata for `topics` before the first send. A producer learns a
/// topic's partitions and leaders on its first message to it, and until then every message to it
/// waits, with all cores idle (BENCHMARKS.md has what it cost the Kafka bench).
/// `timeout` bounds the whole warm-up (a broker that is down delays the start by at most that);
/// a failure is only logged, since sending waits and retries on its own.
pub fn warm_producer<C: ProducerContext + 'static>(
    producer: &ThreadedProducer<C>,
    topics: &[&str],
    timeout: Duration,
) {
    let started = std::time::Instant::now();
    for topic in topics {
        let left = timeout.saturating_sub(started.elapsed());
        match producer.client().fetch_metadata(Some(topic), left) {
            Ok(_) => tracing::debug!(topic, elapsed = ?started.elapsed(), "producer metadata"),
            Err(e) => {
                tracing::warn!(topic, "fetching the producer's metadata: {e}");
                return;
            }
        }
    }
}

/// Sends a record, waiting while the producer's queue is full (backpressure: never dropping,
/// never growing memory past librdkafka's bounded queue). Any other error is returned.
pub fn send_waiting<C, K, P>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> Result<(), KafkaError>
where
    C: ProducerContext + 'static,
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e),
        }
    }
}
