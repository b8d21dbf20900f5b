//! Progress visible to Kafka's own tools: every source partition's checkpointed offset is also
//! committed to a consumer group named after the job ([`weir_crds::topics::consumer_group`],
//! `weir.<namespace>.<job>`), so that `kafka-consumer-groups --describe`, Burrow, lag exporters
//! and KEDA's Kafka scaler see the job's lag (docs/running.md, "Lag in Kafka tools").
//!
//! The group is only ever committed to, never joined: partitions are still read with
//! `assign()` (DESIGN.md invariant 1) and the checkpoints stay the truth. A commit is written
//! after the checkpoint that records the same offset, so the group never claims more than the
//! checkpoints do; it may lag behind them by up to [`COMMIT_EVERY`]. Commits go through one
//! thread per worker, so a slow or refusing broker never holds a partition back: a failed commit
//! is logged (rarely) and counted, and the next one carries the latest offsets again.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, warn};

use crate::kafka::ClientSettings;

/// Longest time between a checkpoint and the commit of its offset.
pub const COMMIT_EVERY: Duration = Duration::from_secs(5);

/// Sends checkpointed offsets to the committing thread. Dropping every clone ends the thread
/// after a last commit.
#[derive(Clone)]
pub struct GroupCommitter {
    tx: Sender<(String, i32, i64)>,
    group: String,
}

impl GroupCommitter {
    /// A client of `settings` (the source consumer's) for `group`, and its thread.
    /// `failures` is called with each failed commit's error, for a metric.
    pub fn start(
        settings: &ClientSettings,
        group: &str,
        failures: impl Fn() + Send + 'static,
    ) -> Result<GroupCommitter, rdkafka::error::KafkaError> {
        let mut s = settings.clone();
        s.set("group.id", group)
            .set("client.id", format!("{group}.progress"));
        let consumer: BaseConsumer = s.config().create()?;
        let (tx, rx) = mpsc::channel::<(String, i32, i64)>();
        let name = group.to_string();
        let spawned = std::thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || {
                let mut pending: BTreeMap<(String, i32), i64> = BTreeMap::new();
                let mut last = Instant::now();
                let mut failed = 0u64;
                loop {
                    let closed = match rx.recv_timeout(COMMIT_EVERY) {
                        Ok((topic, partition, offset)) => {
                            pending.insert((topic, partition), offset);
                            false
                        }
                        Err(RecvTimeoutError::Timeout) => false,
                        Err(RecvTimeoutError::Disconnected) => true,
                    };
                    if pending.is_empty() || (!closed && last.elapsed() < COMMIT_EVERY) {
                        if closed {
                            return;
                        }
                        continue;
                    }
                    last = Instant::now();
                    let mut tpl = TopicPartitionList::new();
                    for ((topic, partition), offset) in &pending {
                        // An offset the list refuses (negative) is simply not committed.
                        let _ =
                            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
                    }
                    match consumer.commit(&tpl, CommitMode::Sync) {
                        Ok(()) => {
                            debug!(group = %name, partitions = pending.len(), "committed progress");
                            pending.clear();
                        }
                        Err(e) => {
                            failed += 1;
                            failures();
                            if failed <= 3 || failed.is_multiple_of(100) {
                                warn!(group = %name, error = %e, failed,
                                    "could not commit progress to the job's consumer group \
                                     (only Kafka tools' view of the lag is behind; the \
                                     checkpoints are not affected)");
                            }
                        }
                    }
                    if closed {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "no thread for committing progress to the consumer group");
        }
        Ok(GroupCommitter {
            tx,
            group: group.to_string(),
        })
    }

    /// Commit `next_offset` for `partition` of `topic` soon (never blocks).
    pub fn record(&self, topic: &str, partition: i32, next_offset: i64) {
        let _ = self.tx.send((topic.to_string(), partition, next_offset));
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }
}
