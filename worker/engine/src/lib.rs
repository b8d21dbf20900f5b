//! weir's streaming engine: pure functions from records to windowed results.
//!
//! No Kafka, no I/O, no clocks: the runtime around it feeds records (with their partition and
//! offset) and wall-clock ticks, and takes results and rejected records back. That is what makes
//! the engine deterministic and testable against a naive reference.
#![deny(missing_docs)]

pub mod agg;
pub mod decode;
pub mod engine;
pub mod plan;
pub mod protocol;
pub mod start;
pub mod time;

#[cfg(test)]
mod testkit;

pub use engine::{
    Engine, Record, RejectReason, Rejection, ResultText, Stats, WindowResult, MAX_DETAIL_BYTES,
    MAX_KEPT_BYTES, RESULTS_CHUNK,
};
pub use plan::JobPlan;
