//! What a reconcile did, as data: the input the status step takes besides the observation.
//! Pure: the apply step fills [`Applied`], the status step reads it, and status tests build it.

use k8s_openapi::api::apps::v1::StatefulSet;

use crate::desired::{Desired, InvalidSpec};
use crate::kafka::KafkaFailure;
use crate::observation::NameConflict;

/// The outcome of validate → build → apply for one reconcile.
#[derive(Clone, Debug)]
pub enum Outcome<'a> {
    /// The spec is invalid: nothing was applied.
    InvalidSpec(&'a InvalidSpec),
    /// `desired` was built, and apply did what [`Applied`] says.
    Built {
        /// What should exist.
        desired: &'a Desired,
        /// What apply did.
        applied: Applied,
    },
}

impl<'a> From<Result<&'a Desired, &'a InvalidSpec>> for Outcome<'a> {
    /// The outcome of a build, before (or without) apply: the status of a job whose children
    /// are as observed.
    fn from(built: Result<&'a Desired, &'a InvalidSpec>) -> Self {
        match built {
            Ok(desired) => Outcome::Built {
                desired,
                applied: Applied::default(),
            },
            Err(invalid) => Outcome::InvalidSpec(invalid),
        }
    }
}

impl Outcome<'_> {
    /// The desired objects, unless the spec is invalid.
    pub fn desired(&self) -> Option<&Desired> {
        match self {
            Outcome::Built { desired, .. } => Some(desired),
            Outcome::InvalidSpec(_) => None,
        }
    }

    /// What apply did (nothing, for an invalid spec).
    pub fn applied(&self) -> Option<&Applied> {
        match self {
            Outcome::Built { applied, .. } => Some(applied),
            Outcome::InvalidSpec(_) => None,
        }
    }
}

/// What the apply step did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    /// The StatefulSet as the API server returned it from the apply, when applied: newer than
    /// the observed one. Boxed: an outcome is passed around by value, and a StatefulSet is large.
    pub stateful_set: Option<Box<StatefulSet>>,
    /// The repartition topic could not be created: why. Apply stopped there, before any
    /// Kubernetes object.
    pub repartition_topic_refused: Option<KafkaFailure>,
    /// Objects named like the job's children that are not the job's own: apply wrote nothing.
    pub name_conflicts: Vec<NameConflict>,
}
