//! The merge stage of a two-stage job (DESIGN.md invariant 5), as this process runs it: one
//! settings struct, from the assignment (or local mode's planning) to the partition threads.
//!
//! Source partitions send partials (partial aggregates and watermark markers) to the
//! repartition topic; each of its partitions is read by one merge-stage thread, which merges
//! them and writes a window's final result when every source partition's watermark has passed
//! its end. What it emits, suppresses and checkpoints is the partition protocol
//! (`weir_engine::protocol`, role `Merge`); the thread is the same I/O loop as a source
//! partition's (`crate::partition`). It checkpoints in its own store: the next offset in the
//! repartition partition, the replay point, how far results were emitted, and each source
//! partition's last marker, restored on restart.

use std::sync::Arc;

use crate::checkpoint::CheckpointStore;
use crate::kafka::ClientSettings;
use crate::producer::PartialsSlot;

/// Everything the merge stage of a two-stage job needs.
pub struct MergeSettings {
    /// The repartition topic.
    pub topic: String,
    /// Its partition count.
    pub partitions: i32,
    /// Partitions of the source topic, each of which reports to every repartition partition.
    pub sources: i32,
    /// The repartition partitions this process merges.
    pub mine: Vec<i32>,
    /// Producer settings for the repartition topic (source partitions write it).
    pub producer: ClientSettings,
    /// The one producer of the repartition topic this process's source partitions share,
    /// created by the first that needs it.
    pub partials: PartialsSlot,
    /// Where the merge stage's checkpoints go (one per repartition partition).
    pub store: Arc<dyn CheckpointStore>,
}
