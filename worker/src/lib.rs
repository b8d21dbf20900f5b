//! The worker's library: what the `weir` binary and the integration tests share.
//!
//! The pure engine lives in `weir-engine`; around it: Kafka settings, checkpoint stores with
//! fencing, the one I/O loop that drives the partition protocol (`weir_engine::protocol`) for
//! both stages, metrics, HTTP probes and log setup.

pub mod budget;
pub mod checkpoint;
pub mod contiguous;
pub mod group;
pub mod http;
pub mod job;
pub mod kafka;
pub mod logging;
pub mod merge;
pub mod metrics;
pub mod outbox;
pub mod partition;
pub mod producer;
pub mod runtime;
pub mod supervise;
pub mod tools;
pub mod topics;

/// The most glibc malloc arenas a worker runs with: the image sets `MALLOC_ARENA_MAX` to this
/// (Dockerfile), and the pipeline benchmark runs its children with it. glibc's default, 8 per
/// core of the node whatever the pod's CPU limit, let a two-stage worker's memory grow by tens
/// of MB: its Kafka clients free memory on other threads than those that allocated it, and
/// every arena keeps what was freed in it (docs/running.md, "Memory").
pub const MALLOC_ARENA_MAX: &str = "4";

#[cfg(test)]
mod tests {
    /// The image limits the arenas as the benchmark measures it.
    #[test]
    fn the_image_sets_malloc_arena_max() {
        let dockerfile = include_str!("../../Dockerfile");
        let line = format!("ENV MALLOC_ARENA_MAX={}", super::MALLOC_ARENA_MAX);
        assert!(
            dockerfile.lines().any(|l| l.trim() == line),
            "the Dockerfile has no line {line:?}"
        );
    }
}
