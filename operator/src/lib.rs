//! The weir operator: a kube-runtime controller for StreamJobs.
//!
//! One reconcile is [`observe`] (reads only) → [`desired::desired`] (pure) → server-side apply
//! ([`controller`]) → [`status::compute`] (pure). [`observed`], [`desired`] and [`status`] are
//! pure (no client, no clock, no I/O); [`observe`], [`object_checkpoints`], [`controller`] and [`leader`]
//! talk to the API server, Kafka and object storage. [`rbac::API_CALLS`] lists every API call the operator makes.

pub mod controller;
pub mod desired;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod object_checkpoints;
pub mod observe;
pub mod observed;
pub mod rbac;
pub mod status;
