//! The worker's library: what the `weir` binary and the integration tests share.
//!
//! Observability only, for now: the metrics registry, and the HTTP endpoints that expose it
//! with the health probes.

pub mod http;
pub mod metrics;
