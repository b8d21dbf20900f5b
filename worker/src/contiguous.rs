//! Reading a partition without silent holes.
//!
//! Kafka answers a fetch with a partition's records from the fetch offset on. A broker that
//! stores concurrently produced batches out of order can instead answer with a batch that
//! starts *after* the fetch offset, while the batch in between has its offsets assigned but is
//! not stored yet. The client takes the later batch, moves its position past it, and the
//! records in between are never read, although the topic holds them a moment later.
//!
//! nisshi 0.8.1, the broker weir's tests run on, does this: its object-store engine raises a
//! partition's high watermark before it writes the batch, and a fetch lists the batches stored
//! at that moment. 24 idempotent producers wrote small batches to one partition. Three readers
//! followed it concurrently. Across 15 runs the readers skipped a batch 6 times. A reader
//! started afterwards read every record. `worker/tests/broker_holes.rs` shows it, and
//! docs/development.md has the numbers.
//!
//! A hole is not always a fault: offsets of transaction markers, of aborted transactions'
//! records, of compacted-away records and of records deleted by retention are legitimately
//! never delivered. So how a hole is handled depends on the topic:
//! - weir's own repartition topic is written without transactions or compaction, so a hole
//!   there is re-read a few times (seek back to the next offset, after a short pause) before
//!   it is believed (it then means retention deleted records the merge stage had not read);
//! - a source topic is whatever its producers made it; re-reading would throw away the
//!   consumer's prefetched records at every transaction marker, so its holes are believed at
//!   once (counted in `weir_offsets_skipped_total` and logged at debug level).
//!
//! [`Contiguous::check`] is the decision only (no I/O), tested as a pure function; [`step`]
//! applies it to a consumer; [`continues`] is what a partition's loop calls: `step`, counted in
//! the partition's metrics and logged.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::Offset;
use tracing::{debug, warn};

use crate::metrics::PartitionMetrics;
use crate::runtime::RuntimeError;

/// What to do with a message read at `got` when the next offset expected is `expected`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The message continues the partition: use it.
    Take,
    /// Already read (`got` < `expected`): drop it.
    Duplicate,
    /// A hole: drop the message, wait `pause`, seek back to `at` and read again.
    Reread {
        /// The offset to seek to (the expected one).
        at: i64,
        /// How long to wait before seeking.
        pause: Duration,
    },
    /// A hole confirmed by every re-read allowed: offsets `from..to` are skipped; use the
    /// message.
    Skip {
        /// First offset skipped.
        from: i64,
        /// The message's offset (one past the last skipped).
        to: i64,
    },
}

/// Re-read policy for one partition, and the state of the hole being checked.
#[derive(Clone, Debug)]
pub struct Contiguous {
    rereads: u32,
    pause: Duration,
    /// The hole being re-read: (expected offset, re-reads done).
    checking: Option<(i64, u32)>,
}

impl Contiguous {
    /// Re-read a hole up to `rereads` times, waiting `pause` before each, then believe it.
    pub fn new(rereads: u32, pause: Duration) -> Contiguous {
        Contiguous {
            rereads,
            pause,
            checking: None,
        }
    }

    /// Believe every hole at once (source topics).
    pub fn trusting() -> Contiguous {
        Contiguous::new(0, Duration::ZERO)
    }

    /// Re-read holes (weir's own topics, where a hole is never legitimate): 10 times, 10 ms
    /// apart, so a batch a broker is still storing has about 100 ms to appear.
    pub fn rereading() -> Contiguous {
        Contiguous::new(10, Duration::from_millis(10))
    }

    /// Decide what to do with a message at `got` when `expected` is the next offset.
    pub fn check(&mut self, expected: i64, got: i64) -> Step {
        if got == expected {
            self.checking = None;
            return Step::Take;
        }
        if got < expected {
            return Step::Duplicate;
        }
        let done = match self.checking {
            Some((at, n)) if at == expected => n,
            _ => 0,
        };
        if done >= self.rereads {
            self.checking = None;
            return Step::Skip {
                from: expected,
                to: got,
            };
        }
        self.checking = Some((expected, done + 1));
        Step::Reread {
            at: expected,
            pause: self.pause,
        }
    }

    /// Re-reads of the hole being checked so far (0 when none is).
    pub fn rereads_pending(&self) -> u32 {
        self.checking.map_or(0, |(_, n)| n)
    }

    /// Re-reads allowed per hole (0: holes are believed at once).
    pub fn rereads(&self) -> u32 {
        self.rereads
    }
}

/// [`Contiguous::check`] for a message of `topic`/`partition` that `consumer` read at `got`,
/// `expected` being the next offset. On [`Step::Reread`] it waits and seeks the consumer back
/// before returning. The message is to be used on [`Step::Take`] and [`Step::Skip`].
pub fn step<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    guard: &mut Contiguous,
    topic: &str,
    partition: i32,
    expected: i64,
    got: i64,
) -> KafkaResult<Step> {
    let step = guard.check(expected, got);
    if let Step::Reread { at, pause } = step {
        std::thread::sleep(pause);
        consumer.seek(
            topic,
            partition,
            Offset::Offset(at),
            Duration::from_secs(10),
        )?;
    }
    Ok(step)
}

/// Whether a message of `topic`/`partition` at `got` is to be used, `expected` being the next
/// offset (see [`crate::contiguous`]): on a hole the policy re-reads, the consumer is sent back
/// to `expected` and the message dropped; a hole believed is counted in
/// `weir_offsets_skipped_total` and the message used.
pub(crate) fn continues(
    consumer: &BaseConsumer,
    guard: &mut Contiguous,
    pm: &PartitionMetrics,
    expected: i64,
    got: i64,
) -> Result<bool, RuntimeError> {
    let labels = pm.labels();
    let (topic, partition) = (labels.topic.as_str(), labels.partition);
    let step = step(consumer, guard, topic, partition, expected, got).map_err(|source| {
        RuntimeError::Kafka {
            partition,
            action: "seeking back to re-read a hole",
            source,
        }
    })?;
    match step {
        Step::Take => Ok(true),
        Step::Duplicate => {
            debug!(
                topic,
                partition, expected, got, "dropping a message read before"
            );
            Ok(false)
        }
        Step::Reread { .. } => {
            pm.offset_rereads.inc();
            debug!(
                topic,
                partition, expected, got, "the broker's answer jumped ahead; read again"
            );
            Ok(false)
        }
        Step::Skip { from, to } => {
            pm.offsets_skipped
                .inc_by(u64::try_from(to - from).unwrap_or(0));
            if guard.rereads() > 0 {
                // A topic weir wrote without transactions: records were lost to retention, or
                // to a broker that does not hold what it acknowledged.
                warn!(
                    topic,
                    partition,
                    from,
                    to,
                    rereads = guard.rereads(),
                    "offsets missing from the partition after re-reading; skipped"
                );
            } else {
                // Transaction markers, aborted or compacted records, retention: usually fine.
                debug!(
                    topic,
                    partition, from, to, "offsets skipped by the broker's answer"
                );
            }
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAUSE: Duration = Duration::from_millis(5);

    #[test]
    fn the_next_offset_is_taken_and_an_earlier_one_dropped() {
        let mut c = Contiguous::new(2, PAUSE);
        assert_eq!(c.check(10, 10), Step::Take);
        assert_eq!(c.check(11, 3), Step::Duplicate);
        assert_eq!(c.rereads_pending(), 0);
    }

    #[test]
    fn a_hole_is_reread_then_believed() {
        let mut c = Contiguous::new(2, PAUSE);
        let reread = Step::Reread {
            at: 10,
            pause: PAUSE,
        };
        assert_eq!(c.check(10, 20), reread);
        assert_eq!(c.rereads_pending(), 1);
        // The broker answers past the hole again (a later batch can come first this time).
        assert_eq!(c.check(10, 25), reread);
        assert_eq!(c.check(10, 20), Step::Skip { from: 10, to: 20 });
        assert_eq!(c.rereads_pending(), 0);
        // The next hole gets its own re-reads.
        assert_eq!(
            c.check(21, 30),
            Step::Reread {
                at: 21,
                pause: PAUSE
            }
        );
    }

    #[test]
    fn a_hole_that_fills_on_a_reread_costs_nothing_later() {
        let mut c = Contiguous::new(2, PAUSE);
        assert!(matches!(c.check(10, 20), Step::Reread { .. }));
        assert_eq!(c.check(10, 10), Step::Take);
        // A new hole at another offset starts from zero re-reads.
        assert!(matches!(c.check(11, 20), Step::Reread { at: 11, .. }));
        assert!(matches!(c.check(11, 20), Step::Reread { at: 11, .. }));
        assert_eq!(c.check(11, 20), Step::Skip { from: 11, to: 20 });
    }

    #[test]
    fn a_trusting_reader_skips_at_once() {
        let mut c = Contiguous::trusting();
        assert_eq!(c.check(10, 12), Step::Skip { from: 10, to: 12 });
        assert_eq!(c.check(13, 13), Step::Take);
    }
}
