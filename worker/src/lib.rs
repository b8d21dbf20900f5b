//! The worker's library: what the `weir` binary and the integration tests share.
//!
//! Observability only, for now: the metrics registry, the HTTP endpoints that expose it with
//! the health probes, and the log setup.

pub mod http;
pub mod logging;
pub mod metrics;
