//! A Kafka producer that counts its failed deliveries, so a partition never checkpoints past
//! output the broker did not acknowledge: [`DeliveryCountingProducer::flush`] waits for every
//! queued message and fails if any delivery failed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::kafka::ClientSettings;
use crate::runtime::RuntimeError;

/// How long a flush before a checkpoint may take before the partition gives up (and its
/// process exits, to be restarted and replay).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Counts failed deliveries of one producer; the checkpoint does not advance past one.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    last_error: Mutex<String>,
}

/// The producer's context: librdkafka reports each delivery to it.
#[derive(Clone)]
struct DeliveryCounter(Arc<Deliveries>);

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.0.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = self.0.last_error.lock() {
                *last = e.to_string();
            }
        }
    }
}

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

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
    producer: ThreadedProducer<DeliveryCounter>,
    deliveries: Arc<Deliveries>,
}

impl DeliveryCountingProducer {
    /// A producer to `topic`, for `partition`'s thread (errors name the partition and `role`).
    pub(crate) fn new(
        settings: &ClientSettings,
        topic: &str,
        partition: i32,
        role: &'static str,
    ) -> Result<DeliveryCountingProducer, RuntimeError> {
        let deliveries = Arc::new(Deliveries::default());
        let producer = settings
            .config()
            .create_with_context(DeliveryCounter(deliveries.clone()))
            .map_err(|source| RuntimeError::CreateClient {
                partition,
                role,
                source,
            })?;
        let max_message_bytes = settings
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        Ok(DeliveryCountingProducer {
            topic: topic.to_string(),
            max_message_bytes,
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
    ) -> Result<Sent, RuntimeError> {
        self.send_to(partition, None, key, value, headers)
    }

    /// [`DeliveryCountingProducer::send`] to partition `to` of the topic (`None`: the
    /// partitioner's choice).
    pub(crate) fn send_to(
        &self,
        partition: i32,
        to: Option<i32>,
        key: &[u8],
        value: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<Sent, RuntimeError> {
        let mut rec = BaseRecord::to(&self.topic).key(key).payload(value);
        if let Some(to) = to {
            rec = rec.partition(to);
        }
        if let Some(h) = headers {
            rec = rec.headers(h);
        }
        match crate::kafka::send_when_room(&self.producer, rec) {
            Ok(()) => Ok(Sent::Queued),
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                Ok(Sent::TooLarge)
            }
            Err(e) => Err(RuntimeError::Delivery {
                partition,
                topic: self.topic.clone(),
                message: e.to_string(),
            }),
        }
    }

    /// Wait until every queued message is acknowledged; fail if any delivery failed.
    pub(crate) fn flush(&self, partition: i32) -> Result<(), RuntimeError> {
        let failed = |message: String| RuntimeError::Delivery {
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
        if self.deliveries.failed.load(Ordering::Relaxed) > 0 {
            let last = self
                .deliveries
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default();
            return Err(failed(last));
        }
        Ok(())
    }
}
