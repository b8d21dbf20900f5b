//! Checkpoints: where each partition's owner records how far it got, and how the owner of a
//! newer assignment epoch fences out an older one.
//!
//! A checkpoint is small on purpose (DESIGN.md invariant 3): the Kafka log is the changelog of
//! the window state, so a checkpoint only says where to replay from and what was already
//! emitted. Stores only do conditional writes; the fencing rule (a newer epoch wins, an older
//! owner stops) lives once, in [`PartitionLease`], for every store.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

mod configmap;
mod dir;
mod memory;
mod migrate;
mod object;

pub use configmap::{ConfigMapStore, CHECKPOINT_KEY, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
pub use dir::DirStore;
pub use memory::MemoryStore;
pub use migrate::{LegacyAccess, MigratingStore};
pub use object::{ObjectStoreConfig, ObjectStoreStore};

// The record is the contract between the workers and the operator, so it lives in the API
// crate; re-exported here where the stores use it.
pub use weir_crds::checkpoint::{
    PartitionCheckpoint, Progress, Run, SourceProgress, StateFull, FORMAT,
};

/// Opaque store version of a checkpoint (a resourceVersion, an e-tag, a generation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version(pub String);

/// A checkpoint as read, with the version a conditional write must name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The checkpoint.
    pub checkpoint: PartitionCheckpoint,
    /// Its version.
    pub version: Version,
}

/// What went wrong in a store. Variants name the failure a caller reacts to differently.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The stored version is not the one the write named (someone else wrote first).
    #[error(
        "checkpoint of partition {partition} changed since it was read (conditional write refused)"
    )]
    Conflict {
        /// The partition.
        partition: i32,
    },
    /// The backend failed (I/O, network, permissions): worth retrying later.
    #[error("checkpoint store could not {action} partition {partition}: {source}")]
    Backend {
        /// What the store was doing ("read", "write", "lock", ...).
        action: &'static str,
        /// The partition.
        partition: i32,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored record that cannot be read, or of a `format` this worker does not know.
    #[error("checkpoint of partition {partition} is unreadable: {message}")]
    Corrupt {
        /// The partition.
        partition: i32,
        /// Why.
        message: String,
    },
}

impl StoreError {
    pub(crate) fn backend(
        action: &'static str,
        partition: i32,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError::Backend {
            action,
            partition,
            source: source.into(),
        }
    }
}

/// Where checkpoints of one stream (one job + one topic) live, keyed by partition.
///
/// Fencing ([`PartitionLease`]) is built on exactly two guarantees, which every implementation
/// must give: read-after-write, and an atomic conditional write.
#[async_trait::async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    /// Latest checkpoint of `partition`. Read-after-write: a successful `put` (from any
    /// process) is visible to the next `get`.
    async fn get(&self, partition: i32) -> Result<Option<Versioned>, StoreError>;
    /// Write iff the stored version is still `expected` (`None`: iff nothing is stored yet).
    /// Atomic: of concurrent writers naming the same version, at most one succeeds; the others
    /// get [`StoreError::Conflict`].
    async fn put(
        &self,
        cp: &PartitionCheckpoint,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError>;
    /// Human description for logs ("configmap default/payments-checkpoint-*", "s3://b/p", ...).
    fn describe(&self) -> String;
}

/// The bytes every store keeps for a checkpoint (the JSON of the record).
pub(crate) fn encode(cp: &PartitionCheckpoint) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(cp).map_err(|e| StoreError::backend("encode", cp.partition, e))
}

/// Reads stored bytes back, refusing unknown formats and records of another partition.
pub(crate) fn decode(partition: i32, bytes: &[u8]) -> Result<PartitionCheckpoint, StoreError> {
    weir_crds::checkpoint::parse(partition, bytes)
        .map_err(|message| StoreError::Corrupt { partition, message })
}

/// Why a lease refused to go on.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A newer owner holds the partition: stop processing it (DESIGN.md invariant 2).
    #[error(
        "partition {partition} is fenced: our epoch {epoch}, the checkpoint belongs to {newer_owner} at epoch {newer_epoch}"
    )]
    Fenced {
        /// The partition.
        partition: i32,
        /// Our epoch.
        epoch: i64,
        /// The epoch found in the store.
        newer_epoch: i64,
        /// The owner found in the store.
        newer_owner: String,
    },
    /// The checkpoint disappeared while we held the partition (deleted by the operator or a
    /// person): we cannot tell who owns it now, so we stop rather than recreate it.
    #[error("checkpoint of partition {partition} disappeared while held at epoch {epoch}")]
    Lost {
        /// The partition.
        partition: i32,
        /// Our epoch.
        epoch: i64,
    },
    /// Conflicts kept coming without a newer owner showing up; try again later.
    #[error("checkpoint of partition {partition}: still conflicting after {attempts} attempts")]
    Contended {
        /// The partition.
        partition: i32,
        /// How many conditional writes were tried.
        attempts: u32,
    },
    /// The checkpoint is for another topic: two streams share a store prefix.
    #[error("checkpoint of partition {partition} is for topic {stored:?}, not {ours:?}: two jobs share a checkpoint location")]
    WrongTopic {
        /// The partition.
        partition: i32,
        /// The topic in the store.
        stored: String,
        /// Ours.
        ours: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CheckpointError {
    /// True when the partition must be given up (another owner has it, or it vanished),
    /// as opposed to a failure worth retrying.
    pub fn is_fenced(&self) -> bool {
        matches!(
            self,
            CheckpointError::Fenced { .. } | CheckpointError::Lost { .. }
        )
    }
}

/// How many conditional writes a lease tries before reporting [`CheckpointError::Contended`].
/// Only two owners of different epochs ever race for one partition, so a few are plenty.
const MAX_ATTEMPTS: u32 = 8;

/// The right to write one partition's checkpoint at one assignment epoch.
///
/// The fencing rule, for every store: a checkpoint written at epoch `e` by owner `o` can be
/// overwritten only by a writer with an epoch `> e`, or by `o` itself at `e`. Because every
/// write is conditional on the version last seen, a writer that lost the partition learns it
/// at its next write, and never overwrites the new owner's record.
pub struct PartitionLease {
    store: Arc<dyn CheckpointStore>,
    topic: String,
    partition: i32,
    epoch: i64,
    owner: String,
    version: Version,
    /// The run every write records (definition, resultsFrom, reset): the stored record's until
    /// [`PartitionLease::set_run`].
    run: Run,
    /// Records the bound on open state refused in the run: the stored record's (of the same
    /// run) plus those noted since ([`PartitionLease::note_state_full`]).
    state_full: Option<StateFull>,
}

/// How long a new owner waits for the previous owner to release a partition
/// ([`PartitionLease::acquire_after_release`]), and when to give up waiting.
pub struct HandoffWait<'a> {
    /// The longest wait; after it the partition is claimed anyway (the previous owner is gone
    /// or has not seen the new assignment: it is fenced out at its next write, and the new
    /// owner resumes from its last checkpoint, as after a crash).
    pub timeout: std::time::Duration,
    /// Stop waiting (and do not claim) when this turns true: the partition was taken away
    /// again, or the worker is stopping.
    pub cancelled: &'a (dyn Fn() -> bool + Sync),
}

/// How a handoff went for the new owner.
#[derive(Debug)]
pub enum Handoff {
    /// Taken: the lease, the progress to resume from, and how long the previous owner took to
    /// release it (zero when nothing had to be waited for); `timed_out` when it never did.
    Taken {
        /// The lease.
        lease: Box<PartitionLease>,
        /// The progress to resume from.
        progress: Option<Progress>,
        /// Time spent waiting for the release.
        waited: std::time::Duration,
        /// The previous owner did not release it within the timeout.
        timed_out: bool,
    },
    /// Cancelled while waiting; nothing was written.
    Cancelled,
}

impl std::fmt::Debug for PartitionLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLease")
            .field("store", &self.store.describe())
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("epoch", &self.epoch)
            .field("owner", &self.owner)
            .field("version", &self.version)
            .finish()
    }
}

/// What a writer at (`epoch`, `owner`) may do with a stored record.
fn check_owner(
    stored: &PartitionCheckpoint,
    topic: &str,
    epoch: i64,
    owner: &str,
) -> Result<(), CheckpointError> {
    if stored.topic != topic {
        return Err(CheckpointError::WrongTopic {
            partition: stored.partition,
            stored: stored.topic.clone(),
            ours: topic.to_owned(),
        });
    }
    // Same epoch, other owner: the operator gives a partition to one ordinal per epoch, so
    // this is a second worker that believes it owns it; the first writer keeps it.
    if stored.epoch > epoch || (stored.epoch == epoch && stored.owner != owner) {
        return Err(CheckpointError::Fenced {
            partition: stored.partition,
            epoch,
            newer_epoch: stored.epoch,
            newer_owner: stored.owner.clone(),
        });
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl PartitionLease {
    /// Load; if the stored epoch is newer than ours, [`CheckpointError::Fenced`]. Otherwise
    /// write a claim (same progress, our epoch and owner) conditionally; on a conflict reload
    /// and decide again (bounded retries). Returns the progress to resume from (`None`:
    /// nothing yet).
    pub async fn acquire(
        store: Arc<dyn CheckpointStore>,
        topic: &str,
        partition: i32,
        epoch: i64,
        owner: &str,
    ) -> Result<(PartitionLease, Option<Progress>), CheckpointError> {
        for _ in 0..MAX_ATTEMPTS {
            let current = store.get(partition).await?;
            if let Some(current) = &current {
                check_owner(&current.checkpoint, topic, epoch, owner)?;
            }
            let progress = current.as_ref().and_then(|c| c.checkpoint.progress.clone());
            let run = current
                .as_ref()
                .map(|c| c.checkpoint.run())
                .unwrap_or_default();
            let state_full = current.as_ref().and_then(|c| c.checkpoint.state_full);
            // The claim changes only the owner: the run stays the stored one.
            let claim = PartitionCheckpoint {
                format: FORMAT,
                topic: topic.to_owned(),
                partition,
                epoch,
                owner: owner.to_owned(),
                written_at_ms: now_ms(),
                progress: progress.clone(),
                definition: run.definition.clone(),
                results_from: run.results_from,
                reset: run.reset.clone(),
                released: false,
                state_full,
            };
            match store
                .put(&claim, current.as_ref().map(|c| &c.version))
                .await
            {
                Ok(version) => {
                    let lease = PartitionLease {
                        store,
                        topic: topic.to_owned(),
                        partition,
                        epoch,
                        owner: owner.to_owned(),
                        version,
                        run,
                        state_full,
                    };
                    return Ok((lease, progress));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CheckpointError::Contended {
            partition,
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Conditional write of our progress (`written_at_ms` = now). On a conflict: reload; if
    /// the stored epoch is newer, or the same with another owner, [`CheckpointError::Fenced`];
    /// if it is older (or our own write whose answer was lost), retry over it. Returns the
    /// number of bytes written.
    pub async fn commit(&mut self, progress: Progress) -> Result<usize, CheckpointError> {
        self.write(progress, false).await
    }

    /// The last write of a graceful stop: `progress`, marked released, so that a new owner
    /// takes the partition without waiting (docs/checkpoints.md, "Handoff"). Fenced like
    /// [`PartitionLease::commit`].
    pub async fn release(&mut self, progress: Progress) -> Result<usize, CheckpointError> {
        self.write(progress, true).await
    }

    /// [`PartitionLease::acquire`], after waiting for the previous owner's release: when the
    /// stored record is another owner's, of an older epoch, and not released, that owner may
    /// still be running the partition (it has not seen the new assignment yet, or is writing
    /// its final checkpoint). Waiting for it means resuming exactly where it stopped, with
    /// nothing replayed twice and no result written twice. The record is read every 200 ms.
    pub async fn acquire_after_release(
        store: Arc<dyn CheckpointStore>,
        topic: &str,
        partition: i32,
        epoch: i64,
        owner: &str,
        wait: &HandoffWait<'_>,
    ) -> Result<Handoff, CheckpointError> {
        let started = std::time::Instant::now();
        let (mut timed_out, mut held_by_other) = (false, false);
        loop {
            if (wait.cancelled)() {
                return Ok(Handoff::Cancelled);
            }
            let held = match store.get(partition).await? {
                Some(v) => {
                    let cp = &v.checkpoint;
                    check_owner(cp, topic, epoch, owner)?;
                    cp.epoch < epoch && cp.owner != owner && !cp.released
                }
                None => false,
            };
            if !held {
                break;
            }
            held_by_other = true;
            if started.elapsed() >= wait.timeout {
                timed_out = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let waited = if held_by_other {
            started.elapsed()
        } else {
            std::time::Duration::ZERO
        };
        let (lease, progress) =
            PartitionLease::acquire(store, topic, partition, epoch, owner).await?;
        Ok(Handoff::Taken {
            lease: Box::new(lease),
            progress,
            waited,
            timed_out,
        })
    }

    async fn write(
        &mut self,
        progress: Progress,
        released: bool,
    ) -> Result<usize, CheckpointError> {
        let mut cp = PartitionCheckpoint {
            format: FORMAT,
            topic: self.topic.clone(),
            partition: self.partition,
            epoch: self.epoch,
            owner: self.owner.clone(),
            written_at_ms: now_ms(),
            progress: Some(progress),
            definition: self.run.definition.clone(),
            results_from: self.run.results_from,
            reset: self.run.reset.clone(),
            released,
            state_full: self.state_full,
        };
        for _ in 0..MAX_ATTEMPTS {
            let bytes = encode(&cp)?.len();
            match self.store.put(&cp, Some(&self.version)).await {
                Ok(version) => {
                    self.version = version;
                    return Ok(bytes);
                }
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            let Some(current) = self.store.get(self.partition).await? else {
                return Err(CheckpointError::Lost {
                    partition: self.partition,
                    epoch: self.epoch,
                });
            };
            check_owner(&current.checkpoint, &self.topic, self.epoch, &self.owner)?;
            self.version = current.version;
            cp.written_at_ms = now_ms();
        }
        Err(CheckpointError::Contended {
            partition: self.partition,
            attempts: MAX_ATTEMPTS,
        })
    }

    /// The run the stored record named when the lease was taken (until
    /// [`PartitionLease::set_run`]).
    pub fn run(&self) -> &Run {
        &self.run
    }

    /// The run every later write records. Another run than the current one (an edit of the
    /// definition, a reset) starts its report of refused records over.
    pub fn set_run(&mut self, run: Run) {
        if run != self.run {
            self.state_full = None;
        }
        self.run = run;
    }

    /// One record (merge stage: partial) refused as `state_full` at `at_ms` (wall clock, ms):
    /// the next write reports it ([`PartitionCheckpoint::state_full`]).
    pub fn note_state_full(&mut self, at_ms: i64) {
        self.state_full = Some(StateFull::add(self.state_full, at_ms));
    }

    /// What the next write reports of records refused as `state_full` in the run.
    pub fn state_full(&self) -> Option<StateFull> {
        self.state_full
    }

    /// The partition this lease is for.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Write at `epoch` from now on, if it is newer: a newer assignment kept the partition with
    /// this owner.
    pub fn raise_epoch(&mut self, epoch: i64) {
        self.epoch = self.epoch.max(epoch);
    }

    /// The assignment epoch this lease writes with.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The store, for logs.
    pub fn store(&self) -> &Arc<dyn CheckpointStore> {
        &self.store
    }
}
