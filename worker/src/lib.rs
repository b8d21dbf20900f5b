//! The worker's library: what the `weir` binary and the integration tests share.
//!
//! Observability only, for now: the metrics registry.

pub mod metrics;
