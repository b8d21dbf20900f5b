//! Resuming from where the previous version of weir kept a stream's records
//! (docs/checkpoints.md, "Migration"): object storage at `<url>/<job>` (now
//! `<url>/<namespace>/<job>`), and the merge stage's ConfigMaps `<job>-merge-checkpoint-<p>`
//! (now `<job>-checkpoint-merge-<p>`).
//!
//! [`MigratingStore`] is a [`CheckpointStore`] over two: the current location, which it reads
//! first and is the only one it fills, and the legacy one, read for a partition only while the
//! current location has no record of it. A legacy record is taken only if it is of this
//! stream's topic: the legacy location may be shared (one job name in two namespaces; the merge
//! stage of `x` and stage 1 of `x-merge`), and a record of another topic is someone else's.
//!
//! The fencing rule stays the lease's ([`super::PartitionLease`]); this store only keeps its
//! two guarantees across the move. A legacy record is handed out with a version marked legacy;
//! the write naming it is the migration: (with [`LegacyAccess::Claim`]) a conditional write of
//! the same record over the legacy one, so that a worker of the previous version still writing
//! there fails its next conditional write, reads our newer epoch and stops; then a create at the
//! current location, which only one migrating writer can win. Once this process has seen a
//! record of a partition at the current location it never reads the legacy one for it again,
//! so a record deleted under a lease is still `Lost`, not resurrected from the legacy copy.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::{CheckpointStore, PartitionCheckpoint, StoreError, Version, Versioned};

/// What workers may do at the legacy location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegacyAccess {
    /// Read and write (object storage: one bucket, one set of credentials). A migration
    /// claims the legacy record first, which fences a worker of the previous version.
    Claim,
    /// Read only (ConfigMaps: the workers' Role grants `get`, not `update`, on the legacy
    /// names), so a worker of the previous version can no longer write there at all.
    Read,
}

const CURRENT: &str = "current:";
const LEGACY: &str = "legacy:";

/// A store that moves one stream's records from a legacy location to the current one; see the
/// module doc.
pub struct MigratingStore {
    current: Arc<dyn CheckpointStore>,
    legacy: Arc<dyn CheckpointStore>,
    topic: String,
    access: LegacyAccess,
    /// Partitions with a record at the current location, as this process has seen.
    moved: Mutex<HashSet<i32>>,
}

impl MigratingStore {
    /// Records of `topic` at `current`, resumed from `legacy` while `current` has none.
    pub fn new(
        current: Arc<dyn CheckpointStore>,
        legacy: Arc<dyn CheckpointStore>,
        topic: &str,
        access: LegacyAccess,
    ) -> Self {
        MigratingStore {
            current,
            legacy,
            topic: topic.to_owned(),
            access,
            moved: Mutex::new(HashSet::new()),
        }
    }

    fn mark_moved(&self, partition: i32) {
        let mut moved = self.moved.lock().unwrap_or_else(|p| p.into_inner());
        moved.insert(partition);
    }

    fn has_moved(&self, partition: i32) -> bool {
        let moved = self.moved.lock().unwrap_or_else(|p| p.into_inner());
        moved.contains(&partition)
    }

    fn written(&self, partition: i32, version: Version) -> Version {
        self.mark_moved(partition);
        tag(CURRENT, version)
    }
}

fn tag(which: &str, version: Version) -> Version {
    Version(format!("{which}{}", version.0))
}

fn tagged(versioned: Versioned, which: &str) -> Versioned {
    Versioned {
        version: tag(which, versioned.version),
        checkpoint: versioned.checkpoint,
    }
}

#[async_trait::async_trait]
impl CheckpointStore for MigratingStore {
    async fn get(&self, partition: i32) -> Result<Option<Versioned>, StoreError> {
        if let Some(found) = self.current.get(partition).await? {
            self.mark_moved(partition);
            return Ok(Some(tagged(found, CURRENT)));
        }
        if self.has_moved(partition) {
            return Ok(None);
        }
        Ok(self
            .legacy
            .get(partition)
            .await?
            .filter(|found| found.checkpoint.topic == self.topic)
            .map(|found| tagged(found, LEGACY)))
    }

    async fn put(
        &self,
        cp: &PartitionCheckpoint,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError> {
        let partition = cp.partition;
        let Some(expected) = expected else {
            let version = self.current.put(cp, None).await?;
            return Ok(self.written(partition, version));
        };
        if let Some(current) = expected.0.strip_prefix(CURRENT) {
            let version = self
                .current
                .put(cp, Some(&Version(current.to_owned())))
                .await?;
            return Ok(self.written(partition, version));
        }
        let Some(legacy) = expected.0.strip_prefix(LEGACY) else {
            // Not a version this store handed out, so it cannot be the stored one.
            return Err(StoreError::Conflict { partition });
        };
        if self.access == LegacyAccess::Claim {
            // Claim first: from here on, a writer at the legacy location with an older epoch
            // fails its conditional write and finds ours. A crash before the create below
            // leaves the claim, with the same progress, for the next owner to migrate.
            self.legacy
                .put(cp, Some(&Version(legacy.to_owned())))
                .await?;
        }
        let version = self.current.put(cp, None).await?;
        Ok(self.written(partition, version))
    }

    fn describe(&self) -> String {
        format!(
            "{} (resuming from {})",
            self.current.describe(),
            self.legacy.describe()
        )
    }
}
