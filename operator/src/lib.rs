//! The weir operator: a kube-runtime controller for StreamJobs.
//!
//! One reconcile ([`controller`]) is a straight line of steps, each with one job:
//! 1. [`observe`] — reads only: the job's children and Secrets ([`observe::children`]), Kafka
//!    ([`observe::topics`]), the checkpoints ([`observe::checkpoints`]); gives an
//!    [`observation::Observation`];
//! 2. [`validate`] — pure: may the operator act on this job at all ([`validate::InvalidSpec`]);
//! 3. [`desired`] — pure: build every resource that should exist, the repartition topic and the
//!    checkpoint ConfigMaps included, in apply order ([`desired::Desired::resources`]);
//! 4. [`apply`] — makes them exist, external resources first, unless a child's name is held by
//!    an object that is not the job's own (then nothing: `NameConflict`); says what it did
//!    ([`outcome::Applied`]);
//! 5. [`status`] — pure, once: the status from the observation and the [`outcome::Outcome`].
//!
//! [`observation`], [`validate`], [`desired`], [`outcome`], [`status`] and [`state_full`] are
//! pure (no client, no clock, no I/O); [`observe`], [`apply`], [`controller`], [`kafka`], [`secrets`],
//! [`object_checkpoints`] and [`leader`] talk to the API server, Kafka and object storage;
//! [`memory`] is what the controller remembers between reconciles (children applied and their
//! controllers, lag written), so that it writes only what changed and reads a child's owner only
//! before its first apply. The
//! names, labels, environment and planning shared with the workers are in [`weir_crds`]
//! ([`weir_crds::names`], [`weir_crds::pod`], [`weir_crds::plan`]). [`rbac::API_CALLS`] lists
//! every API call the operator makes.

pub mod apply;
pub mod autoscale;
pub mod config;
pub mod controller;
pub mod desired;
pub mod error;
pub mod kafka;
pub mod leader;
pub mod memory;
pub mod metrics;
pub mod object_checkpoints;
pub mod observation;
pub mod observe;
pub mod outcome;
pub mod rbac;
pub mod secrets;
pub mod state_full;
pub mod status;
pub mod validate;
