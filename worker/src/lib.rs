//! The worker runtime as a library, so that integration tests under `tests/` reach the same
//! code the `weir` binary runs.

pub mod checkpoint;
