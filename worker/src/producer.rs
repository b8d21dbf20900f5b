//! Kafka producers that count their failed deliveries, so a partition never checkpoints past
//! output the broker did not acknowledge: a flush waits for the partition's queued messages
//! and fails if any delivery failed. A partition's sink and dead-letter producers are its own
//! ([`DeliveryCountingProducer`]); the repartition producer of a two-stage job is one per
//! worker process, shared by its source partitions, and counts per partition
//! ([`PartialsProducer`]). Their failures are [`ProducerError`]s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Partitioner, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientConfig, ClientContext};
use tracing::warn;

use crate::kafka::{ClientSettings, ConsistentRandom};

/// A producer's failure; it stops the partition (`crate::runtime::RuntimeError` wraps it).
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    /// The producer could not be created.
    #[error("partition {partition}: creating the Kafka {role}: {source}")]
    CreateClient {
        /// Partition.
        partition: i32,
        /// sink producer, dead-letter producer, repartition producer.
        role: &'static str,
        /// Cause.
        source: KafkaError,
    },
    /// A message could not be delivered; the checkpoint did not advance.
    #[error("partition {partition}: delivering to {topic} failed: {message}")]
    Delivery {
        /// Partition.
        partition: i32,
        /// Target topic.
        topic: String,
        /// librdkafka's error.
        message: String,
    },
}

/// How long a flush before a checkpoint may take before the partition gives up (and its
/// process exits, to be restarted and replay).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Counts failed deliveries (of one producer, or of one sender of a shared one); the
/// checkpoint does not advance past one.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    last_error: Mutex<String>,
}

impl Deliveries {
    /// Count a delivery report: a failure is remembered.
    fn report(&self, result: &DeliveryResult<'_>) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = self.last_error.lock() {
                *last = e.to_string();
            }
        }
    }

    /// The last failure's error, if any delivery failed.
    fn failure(&self) -> Option<String> {
        (self.failed.load(Ordering::Relaxed) > 0).then(|| {
            self.last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default()
        })
    }
}

/// The producer's context: librdkafka reports each delivery to it, and asks it for each
/// message's partition (unless the settings name another partitioner).
struct DeliveryCounter {
    deliveries: Arc<Deliveries>,
    partitioner: Option<ConsistentRandom>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext<ConsistentRandom> for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        self.deliveries.report(result);
    }

    fn get_custom_partitioner(&self) -> Option<&ConsistentRandom> {
        self.partitioner.as_ref()
    }
}

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// The `message.max.bytes` of a producer created from `settings`.
fn max_message_bytes(settings: &ClientSettings) -> usize {
    settings
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES)
}

/// A producer with `context`, from `config` (errors name `partition` and `role`).
fn create<C: ProducerContext<Part> + 'static, Part: Partitioner + Send + Sync + 'static>(
    config: &ClientConfig,
    context: C,
    partition: i32,
    role: &'static str,
) -> Result<ThreadedProducer<C, Part>, ProducerError> {
    config
        .create_with_context(context)
        .map_err(|source| ProducerError::CreateClient {
            partition,
            role,
            source,
        })
}

/// What [`crate::kafka::send_when_room`] answered, as [`Sent`]: a message over
/// `message.max.bytes` is [`Sent::TooLarge`], any other refusal an error for `partition`.
fn sent(
    answer: Result<(), KafkaError>,
    partition: i32,
    topic: &str,
) -> Result<Sent, ProducerError> {
    match answer {
        Ok(()) => Ok(Sent::Queued),
        Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
            Ok(Sent::TooLarge)
        }
        Err(e) => Err(ProducerError::Delivery {
            partition,
            topic: topic.to_string(),
            message: e.to_string(),
        }),
    }
}

/// What became of a message handed to [`DeliveryCountingProducer::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Queued for delivery.
    Queued,
    /// Refused by the producer as larger than its `message.max.bytes`; nothing was queued.
    TooLarge,
}

/// A producer to one topic, with its delivery counter.
pub(crate) struct DeliveryCountingProducer {
    topic: String,
    /// The producer's `message.max.bytes`: no message it is given may be larger.
    max_message_bytes: usize,
    producer: ThreadedProducer<DeliveryCounter, ConsistentRandom>,
    deliveries: Arc<Deliveries>,
}

impl DeliveryCountingProducer {
    /// A producer to `topic`, for `partition`'s thread (errors name the partition and `role`).
    pub(crate) fn new(
        settings: &ClientSettings,
        topic: &str,
        partition: i32,
        role: &'static str,
    ) -> Result<DeliveryCountingProducer, ProducerError> {
        let deliveries = Arc::new(Deliveries::default());
        let (config, partitioner) = crate::kafka::producer_config(settings);
        let producer = create(
            &config,
            DeliveryCounter {
                deliveries: deliveries.clone(),
                partitioner,
            },
            partition,
            role,
        )?;
        Ok(DeliveryCountingProducer {
            topic: topic.to_string(),
            max_message_bytes: max_message_bytes(settings),
            producer,
            deliveries,
        })
    }

    /// The topic written to.
    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    /// The producer's `message.max.bytes` (librdkafka refuses a larger message).
    pub(crate) fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Queue a message, waiting while librdkafka's queue is full (backpressure: the partition
    /// stops reading until the sink keeps up). A message over `message.max.bytes` is not
    /// queued ([`Sent::TooLarge`]): the caller cuts it or dead-letters it. Any other refusal
    /// is an error (the message would be lost).
    pub(crate) fn send(
        &self,
        partition: i32,
        key: &[u8],
        value: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<Sent, ProducerError> {
        let mut rec = BaseRecord::to(&self.topic).key(key).payload(value);
        if let Some(h) = headers {
            rec = rec.headers(h);
        }
        sent(
            crate::kafka::send_when_room(&self.producer, rec),
            partition,
            &self.topic,
        )
    }

    /// Wait until every queued message is acknowledged; fail if any delivery failed.
    pub(crate) fn flush(&self, partition: i32) -> Result<(), ProducerError> {
        let failed = |message: String| ProducerError::Delivery {
            partition,
            topic: self.topic.clone(),
            message,
        };
        // Not `flush(FLUSH_TIMEOUT)`: rust-rdkafka's flush then polls in steps of 100 ms that
        // only end at their deadline, so each checkpoint with results in flight stalled the
        // partition for 100 ms. `flush(0)` asks librdkafka to send now and reports whether
        // everything is acknowledged (the producer's own thread serves the delivery reports).
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        loop {
            match self.producer.flush(Duration::ZERO) {
                Ok(()) => break,
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(failed(format!("flush: {e}"))),
            }
        }
        match self.deliveries.failure() {
            Some(last) => Err(failed(last)),
            None => Ok(()),
        }
    }
}

/// What one sender (a source partition thread) queued into a [`PartialsProducer`], and what of
/// it the broker answered.
#[derive(Default)]
struct SenderCounts {
    /// Messages queued; written by the sender's thread only.
    queued: AtomicU64,
    /// Messages delivered or failed (counted after `deliveries`).
    answered: AtomicU64,
    deliveries: Deliveries,
}

/// The context of a [`PartialsProducer`]: each delivery report goes to its sender's counts.
struct PerSender;

impl ClientContext for PerSender {}

impl ProducerContext for PerSender {
    type DeliveryOpaque = Arc<SenderCounts>;

    fn delivery(&self, result: &DeliveryResult<'_>, sender: Arc<SenderCounts>) {
        sender.deliveries.report(result);
        sender.answered.fetch_add(1, Ordering::Release);
    }
}

/// The producer of the repartition topic, one per worker process, shared by its source
/// partition threads (each holds a [`PartialsSender`]). One producer per source partition cost
/// a two-stage sparse job half its CPU: four producers each batching for four repartition
/// partitions made many small requests, and each one's broker thread spun while its requests
/// were in flight (docs/benchmarks.md, "One repartition producer per worker"). Shared, the
/// partials of every source partition for a repartition partition travel in one batch.
///
/// A checkpoint waits for its own partition's partials only: every delivery is reported
/// (`delivery.report.only.error` is off for this producer) to the counts of the thread that
/// queued it, so one partition's flush does not wait for the partials the others keep sending.
pub(crate) struct PartialsProducer {
    topic: String,
    max_message_bytes: usize,
    producer: ThreadedProducer<PerSender>,
}

impl PartialsProducer {
    /// librdkafka's fatal error on this producer, if it has one.
    fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code:?}: {reason}"))
    }
}

/// A worker's [`PartialsProducer`], created by the first source partition that needs it.
#[derive(Default)]
pub struct PartialsSlot(Mutex<Option<Arc<PartialsProducer>>>);

impl PartialsSlot {
    /// A sender for `partition`'s thread, creating the producer from `settings` (to `topic`)
    /// on first use.
    pub(crate) fn sender(
        &self,
        settings: &ClientSettings,
        topic: &str,
        partition: i32,
    ) -> Result<PartialsSender, ProducerError> {
        let mut slot = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A producer with a fatal error (an idempotent producer that lost its sequence) fails
        // every send from then on: the partition that meets it stops, and when it starts
        // again it gets a new producer, as it would with its own. The others' senders fail
        // on the old one and do the same.
        if let Some(fatal) = slot.as_ref().and_then(|p| p.fatal_error()) {
            warn!(
                partition,
                error = %fatal,
                "the repartition producer has a fatal error; creating a new one"
            );
            *slot = None;
        }
        let producer = match &*slot {
            Some(p) => p.clone(),
            None => {
                let mut settings = settings.clone();
                settings.set("delivery.report.only.error", "false");
                let producer = create(
                    &settings.config(),
                    PerSender,
                    partition,
                    "repartition producer",
                )?;
                let p = Arc::new(PartialsProducer {
                    topic: topic.to_string(),
                    max_message_bytes: max_message_bytes(&settings),
                    producer,
                });
                *slot = Some(p.clone());
                p
            }
        };
        Ok(PartialsSender {
            producer,
            counts: Arc::default(),
        })
    }
}

/// One source partition thread's handle on the worker's [`PartialsProducer`].
pub(crate) struct PartialsSender {
    producer: Arc<PartialsProducer>,
    counts: Arc<SenderCounts>,
}

impl PartialsSender {
    /// The topic written to.
    pub(crate) fn topic(&self) -> &str {
        &self.producer.topic
    }

    /// The producer's `message.max.bytes`.
    pub(crate) fn max_message_bytes(&self) -> usize {
        self.producer.max_message_bytes
    }

    /// Queue a message to partition `to`, waiting while the queue is full (as
    /// [`DeliveryCountingProducer::send`]).
    pub(crate) fn send_to(
        &self,
        partition: i32,
        to: i32,
        key: &[u8],
        value: &[u8],
    ) -> Result<Sent, ProducerError> {
        let rec = BaseRecord::with_opaque_to(&self.producer.topic, self.counts.clone())
            .key(key)
            .payload(value)
            .partition(to);
        let answer = sent(
            crate::kafka::send_when_room(&self.producer.producer, rec),
            partition,
            &self.producer.topic,
        );
        if let Ok(Sent::Queued) = answer {
            self.counts.queued.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    /// Wait until every message this sender queued is acknowledged; fail if any delivery
    /// failed.
    pub(crate) fn flush(&self, partition: i32) -> Result<(), ProducerError> {
        let failed = |message: String| ProducerError::Delivery {
            partition,
            topic: self.producer.topic.clone(),
            message,
        };
        let queued = self.counts.queued.load(Ordering::Relaxed);
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        while self.counts.answered.load(Ordering::Acquire) < queued {
            if Instant::now() >= deadline {
                return Err(failed(format!(
                    "flush: {} of {queued} messages unanswered after {FLUSH_TIMEOUT:?}",
                    queued - self.counts.answered.load(Ordering::Acquire)
                )));
            }
            // Sends what is queued now, whatever the linger (the other senders' messages too);
            // it reports whether the whole producer is empty, which is not the question here.
            let _ = self.producer.producer.flush(Duration::ZERO);
            std::thread::sleep(Duration::from_millis(1));
        }
        match self.counts.deliveries.failure() {
            Some(last) => Err(failed(last)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use std::sync::atomic::AtomicBool;

    fn settings(
        cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    ) -> ClientSettings {
        let mut s = ClientSettings::default();
        s.set("bootstrap.servers", cluster.bootstrap_servers())
            .set("linger.ms", "100")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "2000")
            .set("delivery.report.only.error", "true");
        s
    }

    #[test]
    fn a_flush_waits_for_its_own_partials_while_another_sender_keeps_sending() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("rep", 2, 1).expect("topic");
        let slot = PartialsSlot::default();
        let s = settings(&cluster);
        let a = slot.sender(&s, "rep", 0).expect("sender");
        let b = slot.sender(&s, "rep", 1).expect("sender");
        assert!(
            Arc::ptr_eq(&a.producer, &b.producer),
            "one producer per process"
        );
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            // The other source partition never pauses: the producer as a whole is never empty.
            let busy = scope.spawn(|| {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    b.send_to(1, 1, b"k", b"from b").expect("queued");
                    n += 1;
                }
                n
            });
            for round in 0..5 {
                for i in 0..100 {
                    let v = format!("a {round} {i}");
                    assert_eq!(
                        a.send_to(0, 0, b"k", v.as_bytes()).expect("send"),
                        Sent::Queued
                    );
                }
                a.flush(0).expect("a's partials acknowledged");
                assert_eq!(a.counts.answered.load(Ordering::Acquire), 100 * (round + 1));
            }
            stop.store(true, Ordering::Relaxed);
            let sent_by_b = busy.join().expect("b");
            assert!(sent_by_b > 0);
            b.flush(1).expect("b's partials acknowledged");
            assert_eq!(b.counts.answered.load(Ordering::Acquire), sent_by_b);
        });
    }

    #[test]
    fn a_failed_delivery_fails_the_flush_of_its_sender_only() {
        let cluster = MockCluster::new(2).expect("mock cluster");
        cluster.create_topic("rep", 2, 1).expect("topic");
        cluster.partition_leader("rep", 0, Some(1)).expect("leader");
        cluster.partition_leader("rep", 1, Some(2)).expect("leader");
        let slot = PartialsSlot::default();
        let s = settings(&cluster);
        let a = slot.sender(&s, "rep", 0).expect("sender");
        let b = slot.sender(&s, "rep", 1).expect("sender");
        // Both partitions reachable first (the producer knows their leaders).
        a.send_to(0, 0, b"k", b"first").expect("send");
        b.send_to(1, 1, b"k", b"first").expect("send");
        a.flush(0).expect("a");
        b.flush(1).expect("b");
        cluster.broker_down(1).expect("down");
        a.send_to(0, 0, b"k", b"lost").expect("send");
        b.send_to(1, 1, b"k", b"kept").expect("send");
        b.flush(1).expect("b's partition's leader is up");
        let err = a.flush(0).expect_err("a's partial timed out");
        assert!(err.to_string().contains("rep"), "{err}");
    }

    #[test]
    fn a_producer_with_a_fatal_error_is_replaced_for_the_next_sender() {
        use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("rep", 2, 1).expect("topic");
        // The idempotent producer's first InitProducerId is refused: librdkafka's fatal error.
        cluster.request_errors(
            RDKafkaApiKey::InitProducerId,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED],
        );
        let slot = PartialsSlot::default();
        let s = settings(&cluster);
        let a = slot.sender(&s, "rep", 0).expect("sender");
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.producer.fatal_error().is_none() {
            assert!(Instant::now() < deadline, "no fatal error raised");
            std::thread::sleep(Duration::from_millis(10));
        }
        let b = slot.sender(&s, "rep", 1).expect("sender");
        assert!(
            !Arc::ptr_eq(&a.producer, &b.producer),
            "the next sender gets a new producer"
        );
        assert!(b.producer.fatal_error().is_none());
        b.send_to(1, 1, b"k", b"after").expect("send");
        b.flush(1).expect("the new producer delivers");
        // The next one shares the new producer again.
        let c = slot.sender(&s, "rep", 0).expect("sender");
        assert!(Arc::ptr_eq(&b.producer, &c.producer));
    }
}
