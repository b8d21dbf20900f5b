//! Checkpoints: where each partition's owner records how far it got, and how the owner of a
//! newer assignment epoch fences out an older one.
//!
//! A checkpoint is small on purpose (DESIGN.md invariant 3): the Kafka log is the changelog of
//! the window state, so a checkpoint only says where to replay from and what was already
//! emitted. Stores only do conditional writes; the fencing rule (a newer epoch wins, an older
//! owner stops) lives once, in [`PartitionLease`], for every store.

use serde::{Deserialize, Serialize};

/// What a partition's owner records about its progress. One per (stream, partition).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionCheckpoint {
    /// Format of this record; readers refuse versions they do not know.
    pub format: u32,
    /// The topic the offsets are in.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// Assignment epoch of the owner that wrote it.
    pub epoch: i64,
    /// Who wrote it (pod name or local task), for people reading it.
    pub owner: String,
    /// Wall-clock time of the write, ms since the epoch, for status and people.
    pub written_at_ms: i64,
    /// `None`: claimed but nothing processed yet; start per `startFrom`.
    pub progress: Option<Progress>,
}

/// The current checkpoint format.
pub const FORMAT: u32 = 1;

/// How far a partition got. Everything here is a pure function of the records up to
/// `next_offset`, so a replay from `replay_from` rebuilds exactly the open windows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Next offset to read.
    pub next_offset: i64,
    /// Earliest offset still needed by an open window (`<= next_offset`): replay starts here.
    pub replay_from: i64,
    /// Largest event time among records before `replay_from` (the partition's watermark state
    /// at the replay point); `None` if there was none.
    pub replay_max_event_time: Option<i64>,
    /// The partition's watermark at `next_offset` (ms), for lag and status.
    pub watermark: Option<i64>,
    /// Every window ending at or before this (ms) was emitted and acknowledged by the sink;
    /// a replay does not emit them again.
    pub emitted_through: Option<i64>,
}

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
