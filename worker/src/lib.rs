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
