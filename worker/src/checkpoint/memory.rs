//! An in-process store for tests: a map shared by every clone, versions are counters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{decode, encode, CheckpointStore, PartitionCheckpoint, StoreError, Version, Versioned};

/// Per partition: the version counter and the encoded record.
type Partitions = HashMap<i32, (u64, Vec<u8>)>;

/// Checkpoints in memory. Clones share the same map, so several leases (or "workers") in one
/// test see each other's writes. It stores the encoded bytes, like the real stores do, so a
/// record that does not survive encoding fails here too.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    partitions: Arc<Mutex<Partitions>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts raw bytes under `partition` with a new version, bypassing every check (to test
    /// readers against corrupt or future-format records).
    pub fn put_raw(&self, partition: i32, bytes: Vec<u8>) {
        let mut map = self
            .partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let counter = map.get(&partition).map_or(0, |(v, _)| *v) + 1;
        map.insert(partition, (counter, bytes));
    }
}

#[async_trait::async_trait]
impl CheckpointStore for MemoryStore {
    async fn get(&self, partition: i32) -> Result<Option<Versioned>, StoreError> {
        let stored = {
            let map = self
                .partitions
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            map.get(&partition).cloned()
        };
        match stored {
            None => Ok(None),
            Some((counter, bytes)) => Ok(Some(Versioned {
                checkpoint: decode(partition, &bytes)?,
                version: Version(counter.to_string()),
            })),
        }
    }

    async fn put(
        &self,
        cp: &PartitionCheckpoint,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError> {
        let bytes = encode(cp)?;
        let mut map = self
            .partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = map.get(&cp.partition).map(|(v, _)| *v);
        let matches = match (current, expected) {
            (None, None) => true,
            (Some(current), Some(expected)) => expected.0 == current.to_string(),
            _ => false,
        };
        if !matches {
            return Err(StoreError::Conflict {
                partition: cp.partition,
            });
        }
        let next = current.unwrap_or(0) + 1;
        map.insert(cp.partition, (next, bytes));
        Ok(Version(next.to_string()))
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }
}
