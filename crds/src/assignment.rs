//! The partition assignment: the contract between the operator, which writes it into the job
//! ConfigMap as `assignment.json`, and the workers, which read it (DESIGN.md invariant 1).

use serde::{Deserialize, Serialize};

/// Which partitions each worker ordinal owns, under which epoch. Written by the operator into
/// the job ConfigMap as `assignment.json` (and computed in-process in local mode).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Changes whenever the assignment changes; checkpoint writes carry it (fencing).
    pub epoch: i64,
    /// `workers[ordinal]` = the partitions of that worker.
    pub workers: Vec<Vec<i32>>,
    /// Two-stage jobs: the second stage's partitions, assigned to the same workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<MergeAssignment>,
}

/// The second stage of a two-stage job (DESIGN.md invariant 5): which partitions of the
/// repartition topic each worker merges, and how many source partitions report to them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MergeAssignment {
    /// The repartition topic.
    pub topic: String,
    /// Partitions of the source topic: every one of them must report its watermark before the
    /// second stage closes a window.
    pub sources: i32,
    /// `workers[ordinal]` = the repartition partitions of that worker.
    pub workers: Vec<Vec<i32>>,
}

/// What an assignment is over, apart from who owns what: the source partitions and, for a
/// two-stage job, the repartition topic with its partition count and sources. Workers take a
/// new assignment of the same shape while running (partitions move between them, DESIGN.md
/// invariant 9); a new shape restarts them (the operator's pod template changes with it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Shape {
    /// Source partitions assigned, over every worker.
    pub partitions: usize,
    /// Two-stage jobs: (repartition topic, its partitions assigned, source partitions reporting).
    pub merge: Option<(String, usize, i32)>,
}

impl Assignment {
    /// The shape: what stays when only the owners of partitions change.
    pub fn shape(&self) -> Shape {
        Shape {
            partitions: self.workers.iter().map(Vec::len).sum(),
            merge: self.merge.as_ref().map(|m| {
                (
                    m.topic.clone(),
                    m.workers.iter().map(Vec::len).sum(),
                    m.sources,
                )
            }),
        }
    }

    /// The source partitions of worker `ordinal` (none for an ordinal past the last).
    pub fn partitions_of(&self, ordinal: usize) -> &[i32] {
        self.workers.get(ordinal).map_or(&[], Vec::as_slice)
    }

    /// The repartition partitions worker `ordinal` merges (none for a one-stage job).
    pub fn merge_partitions_of(&self, ordinal: usize) -> &[i32] {
        self.merge
            .as_ref()
            .and_then(|m| m.workers.get(ordinal))
            .map_or(&[], Vec::as_slice)
    }

    /// Partitions spread over `workers` round-robin: balanced (sizes differ by at most one) and
    /// deterministic.
    pub fn round_robin(partitions: i32, workers: usize, epoch: i64) -> Assignment {
        let workers = workers.max(1);
        let mut out = vec![Vec::new(); workers];
        for p in 0..partitions.max(0) {
            out[p as usize % workers].push(p);
        }
        Assignment {
            epoch,
            workers: out,
            merge: None,
        }
    }

    /// Adds a second stage: `partitions` of `topic` spread over the same workers round-robin,
    /// merging partials from `sources` source partitions.
    pub fn with_merge(mut self, topic: &str, partitions: i32, sources: i32) -> Assignment {
        let spread = Assignment::round_robin(partitions, self.workers.len(), self.epoch);
        self.merge = Some(MergeAssignment {
            topic: topic.to_string(),
            sources,
            workers: spread.workers,
        });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_ignores_owners_and_epoch_but_not_what_is_assigned() {
        let two = Assignment::round_robin(6, 2, 3).with_merge("t", 4, 6);
        let three = Assignment::round_robin(6, 3, 4).with_merge("t", 4, 6);
        assert_eq!(two.shape(), three.shape());
        assert_eq!(three.partitions_of(2), &[2, 5]);
        assert_eq!(three.partitions_of(3), &[] as &[i32]);
        assert_eq!(three.merge_partitions_of(0), &[0, 3]);
        assert_ne!(
            two.shape(),
            Assignment::round_robin(8, 2, 3)
                .with_merge("t", 4, 8)
                .shape()
        );
        assert_ne!(
            two.shape(),
            Assignment::round_robin(6, 2, 3)
                .with_merge("u", 4, 6)
                .shape()
        );
        assert_ne!(two.shape(), Assignment::round_robin(6, 2, 3).shape());
    }

    #[test]
    fn round_robin_gives_every_partition_to_one_worker_balanced() {
        for partitions in [1, 3, 4, 12] {
            for workers in 1..=14 {
                let a = Assignment::round_robin(partitions, workers, 7);
                let mut all: Vec<i32> = a.workers.iter().flatten().copied().collect();
                all.sort_unstable();
                assert_eq!(all, (0..partitions).collect::<Vec<_>>());
                let sizes: Vec<usize> = a.workers.iter().map(Vec::len).collect();
                let (min, max) = (sizes.iter().min(), sizes.iter().max());
                assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{sizes:?}");
            }
        }
    }
}
