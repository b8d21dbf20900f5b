//! What a partition writes, made to fit: dead letters and results never exceed what the
//! producer takes (`message.max.bytes`), so one hostile record cannot stop a partition.
//!
//! - A dead letter carries the rejected record's key and value. One too large for the
//!   dead-letter producer is written cut to fit, with `weir.truncated` naming what was cut and
//!   `weir.value.size` / `weir.key.size` the original lengths; the source position headers say
//!   where the whole record is.
//! - A result too large for the sink producer is not written to the sink: it becomes a dead
//!   letter with reason `too_large` (its key and value cut to fit, as above), counted in
//!   `weir_results_too_large_total`.
//!
//! [`fit`] is the pure decision; [`Outbox`] owns the partition's producers and sends.

use rdkafka::message::{Header, OwnedHeaders};
use tracing::warn;
use weir_engine::{JobPlan, Record, RejectReason, Rejection, ResultText, WindowResult};

use crate::metrics::PartitionMetrics;
use crate::producer::{DeliveryCountingProducer, PartialsSender, ProducerError, Sent};
use crate::runtime::RuntimeError;

/// Bytes kept free below `message.max.bytes` for what librdkafka counts beyond key, value and
/// header bytes (its record overhead is well under this).
pub const OVERHEAD_BYTES: usize = 512;

/// A message cut to fit: its key and value, and the headers that say what was cut.
#[derive(Debug, PartialEq, Eq)]
pub struct Fitted<'a> {
    /// The key, whole or cut.
    pub key: &'a [u8],
    /// The value, whole or cut.
    pub value: &'a [u8],
    /// `weir.truncated` and the original sizes, when something was cut.
    pub headers: Vec<(&'static str, String)>,
}

/// `key` and `value` cut so that with `header_bytes` of headers the message stays within
/// `limit` (`message.max.bytes`) less [`OVERHEAD_BYTES`]. The value is cut first; the key only
/// when it alone takes more than half the room.
pub fn fit<'a>(limit: usize, header_bytes: usize, key: &'a [u8], value: &'a [u8]) -> Fitted<'a> {
    // Room for the headers this adds, too.
    let room = limit.saturating_sub(OVERHEAD_BYTES + header_bytes + 128);
    if key.len() + value.len() <= room {
        return Fitted {
            key,
            value,
            headers: Vec::new(),
        };
    }
    let key_room = if key.len() <= room / 2 {
        key.len()
    } else {
        room / 2
    };
    let value_room = room - key_room;
    let mut cut = Vec::new();
    let mut headers = Vec::new();
    if key_room < key.len() {
        cut.push("key");
        headers.push(("weir.key.size", key.len().to_string()));
    }
    if value_room < value.len() {
        cut.push("value");
        headers.push(("weir.value.size", value.len().to_string()));
    }
    headers.insert(0, ("weir.truncated", cut.join(",")));
    Fitted {
        key: &key[..key_room],
        value: &value[..value_room.min(value.len())],
        headers,
    }
}

/// Where a dead letter comes from, for its headers.
pub struct Origin<'a> {
    /// The job's name.
    pub job: &'a str,
    /// The source topic.
    pub topic: &'a str,
    /// The source partition.
    pub partition: i32,
}

/// A partition's producers: the sink, the dead-letter topic (if the job has one), and for a
/// source partition of a two-stage job the repartition topic.
pub(crate) struct Outbox {
    pub(crate) sink: DeliveryCountingProducer,
    pub(crate) dead_letter: Option<DeliveryCountingProducer>,
    pub(crate) repartition: Option<PartialsSender>,
    /// The key and value of the result being sent, written in place: no allocation per result.
    pub(crate) text: ResultText,
    /// The message of the partial being sent, written in place (as `text`).
    pub(crate) partial: Vec<u8>,
}

impl Outbox {
    /// Wait for every queued message (before a checkpoint claims them).
    pub(crate) fn flush(&self, partition: i32) -> Result<(), RuntimeError> {
        self.sink.flush(partition)?;
        if let Some(d) = &self.dead_letter {
            d.flush(partition)?;
        }
        if let Some(r) = &self.repartition {
            r.flush(partition)?;
        }
        Ok(())
    }

    /// Send a result to the sink; one over the sink's limit goes to the dead-letter topic with
    /// reason `too_large`. The value written (`None` when dead-lettered).
    pub(crate) fn result(
        &mut self,
        origin: &Origin<'_>,
        plan: &JobPlan,
        r: &WindowResult,
        pm: &PartitionMetrics,
    ) -> Result<Option<&str>, RuntimeError> {
        self.text.write(plan, r);
        let (key, value) = (&self.text.key, &self.text.value);
        let partition = origin.partition;
        let fits = key.len() + value.len() + OVERHEAD_BYTES <= self.sink.max_message_bytes();
        if fits {
            let sent = self
                .sink
                .send(partition, key.as_bytes(), value.as_bytes(), None)?;
            if sent == Sent::Queued {
                return Ok(Some(value));
            }
        }
        pm.results_too_large.inc();
        let detail = format!(
            "the result of window {} .. {} is {} bytes (key {}, value {}): more than the \
             sink's message.max.bytes ({}) takes",
            weir_engine::time::format(r.start),
            weir_engine::time::format(r.end),
            key.len() + value.len(),
            key.len(),
            value.len(),
            self.sink.max_message_bytes()
        );
        warn!(
            partition,
            detail, "a result too large for the sink: dead-lettered as too_large"
        );
        let rejection = Rejection {
            reason: RejectReason::TooLarge,
            detail,
        };
        let extra = [
            ("weir.window.start", weir_engine::time::format(r.start)),
            ("weir.window.end", weir_engine::time::format(r.end)),
        ];
        self.send_dead_letter(
            origin,
            &rejection,
            key.as_bytes(),
            value.as_bytes(),
            &extra,
            pm,
        )?;
        Ok(None)
    }

    /// Dead-letter a rejected record (counted either way; written when the job has a
    /// dead-letter topic).
    pub(crate) fn dead_letter(
        &self,
        origin: &Origin<'_>,
        rec: &Record<'_>,
        rejection: &Rejection,
        pm: &PartitionMetrics,
    ) -> Result<(), RuntimeError> {
        pm.rejected(rejection.reason);
        let extra = [
            ("weir.source.partition", rec.partition.to_string()),
            ("weir.source.offset", rec.offset.to_string()),
        ];
        let key = rec.key.unwrap_or_default();
        self.send_dead_letter(origin, rejection, key, rec.value, &extra, pm)
    }

    fn send_dead_letter(
        &self,
        origin: &Origin<'_>,
        rejection: &Rejection,
        key: &[u8],
        value: &[u8],
        extra: &[(&'static str, String)],
        pm: &PartitionMetrics,
    ) -> Result<(), RuntimeError> {
        let Some(dlq) = &self.dead_letter else {
            return Ok(());
        };
        let mut headers: Vec<(&'static str, &str)> = vec![
            ("weir.reason", rejection.reason.as_str()),
            ("weir.error", rejection.detail.as_str()),
            ("weir.source.topic", origin.topic),
            ("weir.job", origin.job),
        ];
        headers.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        let header_bytes = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        let fitted = fit(dlq.max_message_bytes(), header_bytes, key, value);
        let mut sent = dlq.send(
            origin.partition,
            fitted.key,
            fitted.value,
            Some(owned(&headers, &fitted.headers)),
        )?;
        if sent == Sent::TooLarge {
            // librdkafka counted more than we did: keep the headers and the key's start only.
            let key_only = fit(dlq.max_message_bytes(), header_bytes, key, &[]);
            let size = [
                ("weir.truncated", "key,value".to_string()),
                ("weir.value.size", value.len().to_string()),
            ];
            sent = dlq.send(
                origin.partition,
                key_only.key,
                &[],
                Some(owned(&headers, &size)),
            )?;
        }
        if sent == Sent::TooLarge {
            return Err(ProducerError::Delivery {
                partition: origin.partition,
                topic: dlq.topic().to_string(),
                message: "a dead letter's headers alone exceed the dead-letter producer's \
                          message.max.bytes"
                    .to_string(),
            }
            .into());
        }
        if !fitted.headers.is_empty() {
            pm.messages_truncated.inc();
        }
        pm.dead_letters.inc();
        Ok(())
    }
}

/// Kafka headers: `base`, then `more`.
fn owned(base: &[(&'static str, &str)], more: &[(&'static str, String)]) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(base.len() + more.len());
    for (key, value) in base {
        h = h.insert(Header {
            key,
            value: Some(*value),
        });
    }
    for (key, value) in more {
        h = h.insert(Header {
            key,
            value: Some(value.as_str()),
        });
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_that_fits_is_left_whole() {
        let f = fit(1_000_000, 300, b"k", &[b'x'; 10_000]);
        assert_eq!((f.key.len(), f.value.len()), (1, 10_000));
        assert!(f.headers.is_empty());
    }

    #[test]
    fn a_large_value_is_cut_and_its_size_said() {
        let value = vec![b'x'; 2_000_000];
        let f = fit(1_000_000, 300, b"key", &value);
        assert_eq!(f.key, b"key");
        assert!(f.value.len() > 990_000, "{}", f.value.len());
        assert_eq!(f.headers[0], ("weir.truncated", "value".to_string()));
        assert_eq!(f.headers[1], ("weir.value.size", "2000000".to_string()));
    }

    #[test]
    fn nothing_cut_ever_exceeds_the_limit() {
        for limit in [1_000, 10_000, 1_000_000] {
            for key in [0, 10, 600, 5_000, 2_000_000] {
                for value in [0, 10, 900, 50_000, 3_000_000] {
                    for header_bytes in [0, 200, 1_500] {
                        let (k, v) = (vec![1u8; key], vec![2u8; value]);
                        let f = fit(limit, header_bytes, &k, &v);
                        let added: usize = f.headers.iter().map(|(a, b)| a.len() + b.len()).sum();
                        let total = f.key.len() + f.value.len() + header_bytes + added;
                        if key + value + header_bytes + OVERHEAD_BYTES + 128 <= limit {
                            assert!(f.headers.is_empty(), "{limit} {key} {value}: cut");
                        } else if header_bytes + OVERHEAD_BYTES + 128 <= limit {
                            assert!(
                                total <= limit - OVERHEAD_BYTES,
                                "limit {limit} key {key} value {value} headers {header_bytes}: {total}"
                            );
                        }
                        assert!(f.key.len() <= key && f.value.len() <= value);
                        assert_eq!(
                            f.headers.is_empty(),
                            f.key.len() == key && f.value.len() == value
                        );
                    }
                }
            }
        }
    }
}
