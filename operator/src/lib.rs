//! The weir operator's reconcile core, shared by the controller binary and its tests.
//!
//! One reconcile is observe → [`desired::desired`] → server-side apply → [`status::compute`].
//! This crate holds the pure steps (no client, no clock, no I/O): [`observed`] is what observe
//! reads, [`desired`] the objects that should exist, [`status`] the StreamJob's status.

pub mod desired;
pub mod names;
pub mod observed;
pub mod status;
